//! alignkit-ppo: see ../shared/ARCHITECTURE.md (not implemented yet).
