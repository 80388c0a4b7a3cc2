//! alignkit-reward: see ../shared/ARCHITECTURE.md (not implemented yet).
