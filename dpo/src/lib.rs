//! alignkit-dpo: see ../shared/ARCHITECTURE.md (not implemented yet).
