//! Functions registered per type, for code generic over `B: Backend` that
//! needs what only a caller knowing `B: AutodiffBackend` can instantiate
//! (activation checkpointing's forward pass, [`crate::fused::given`]'s node).

use std::any::TypeId;
use std::sync::Mutex;

/// A type-erased function `F` per type, registered once and looked up by
/// the type; usable as a `static`.
pub(crate) struct ByType<F: Copy>(Mutex<Vec<(TypeId, F)>>);

impl<F: Copy> ByType<F> {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// Register `f` for `T`, unless `T` already has one.
    pub(crate) fn insert<T: 'static>(&self, f: F) {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !entries.iter().any(|(id, _)| *id == TypeId::of::<T>()) {
            entries.push((TypeId::of::<T>(), f));
        }
    }

    /// The function registered for `T`.
    pub(crate) fn get<T: 'static>(&self) -> Option<F> {
        let entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .map(|(_, f)| *f)
    }
}
