//! alignkit-tests: see ../shared/ARCHITECTURE.md (not implemented yet).
