//! alignkit-labeler: see ../shared/ARCHITECTURE.md (not implemented yet).
