//! alignkit-eval: see ../shared/ARCHITECTURE.md (not implemented yet).
