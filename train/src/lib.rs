//! alignkit-train: see ../shared/ARCHITECTURE.md (not implemented yet).
