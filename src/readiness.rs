//! Readiness as a latch over named dependencies: not ready until every dependency (the
//! policy, each issuer's keys) has loaded once; ready from then on, whatever happens to them
//! later (a failed reload keeps the last good policy and keys serving), so it never flaps —
//! until shutdown begins: then not ready for good, while checks are still answered.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The latch and what it waits for.
pub struct Readiness {
    ready: AtomicBool,
    /// Shutdown has begun: not ready, whatever the dependencies say.
    draining: AtomicBool,
    dependencies: Vec<Dependency>,
}

/// One dependency: a name for `/readyz`, and whether it has loaded.
pub struct Dependency {
    name: String,
    loaded: Box<dyn Fn() -> bool + Send + Sync>,
    /// Why it has not loaded yet, when that is known.
    why: Box<dyn Fn() -> Option<String> + Send + Sync>,
}

// === impl Readiness ===

impl Readiness {
    pub fn new(dependencies: Vec<Dependency>) -> Readiness {
        Readiness {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            dependencies,
        }
    }

    /// Shutdown has begun: not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// True once every dependency has loaded; then true for good, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        if self.is_draining() {
            return false;
        }
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let ready = self.dependencies.iter().all(|d| (d.loaded)());
        if ready {
            self.ready.store(true, Ordering::Release);
        }
        ready
    }

    /// What readiness still waits for, each with the reason when known.
    pub fn waiting(&self) -> Vec<String> {
        if self.ready.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.dependencies
            .iter()
            .filter(|d| !(d.loaded)())
            .map(|d| match (d.why)() {
                Some(why) => format!("{} ({why})", d.name),
                None => d.name.clone(),
            })
            .collect()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field(
                "dependencies",
                &self
                    .dependencies
                    .iter()
                    .map(|d| &d.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

// === impl Dependency ===

impl Dependency {
    pub fn new(
        name: impl Into<String>,
        loaded: impl Fn() -> bool + Send + Sync + 'static,
        why: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Dependency {
        Dependency {
            name: name.into(),
            loaded: Box::new(loaded),
            why: Box::new(why),
        }
    }
}

#[cfg(test)]
mod tests;
