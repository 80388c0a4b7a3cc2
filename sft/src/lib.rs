//! alignkit-sft: see ../shared/ARCHITECTURE.md (not implemented yet).
