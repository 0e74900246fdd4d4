//! One snapshot per Check: the active policy (with its generation) and every issuer's keys,
//! published together behind one `ArcSwap` and loaded once at the top of a Check.
//!
//! The policy store and each issuer's key refresh publish here when they change; a Check
//! reads one `State` and passes it down, so the keys that verify its token and the policy that
//! decides it come from one moment, and a swap while it runs changes nothing it sees. Only a
//! key fetched for this very request (a `kid` the snapshot does not know) is newer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::authn::{IssuerKeys, KeySet, KeyView, Verifier};
use crate::policy::PolicyStore;
use crate::policy::store::PolicySnapshot;

/// What a Check reads: the policy and the keys, as of one moment.
#[derive(Default)]
pub struct State {
    /// `None` until the first policy activates.
    pub policy: Option<Arc<PolicySnapshot>>,
    keys: HashMap<Arc<str>, Arc<KeySet>>,
}

/// The current `State`, replaced whole when the policy or an issuer's keys change.
#[derive(Default)]
pub struct StateCell {
    current: ArcSwap<State>,
    /// Serialises publishers (readers never wait).
    publishing: Mutex<()>,
}

// === impl State ===

impl State {
    /// The policy generation, 0 before any policy.
    pub fn generation(&self) -> u64 {
        self.policy.as_ref().map_or(0, |p| p.generation)
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("generation", &self.generation())
            .field("issuers", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyView for State {
    fn keys(&self, issuer: &str) -> Option<&Arc<KeySet>> {
        self.keys.get(issuer)
    }
}

// === impl StateCell ===

impl StateCell {
    /// A cell holding what `policies` and the verifier's issuers hold now, kept current by
    /// their publishing into it from here on.
    pub fn watch(policies: &PolicyStore, verifier: &Verifier) -> Arc<StateCell> {
        let cell = Arc::new(StateCell::default());
        let weak = Arc::downgrade(&cell);
        policies.on_activate(Box::new(move |snapshot| {
            if let Some(cell) = weak.upgrade() {
                cell.publish_policy(snapshot);
            }
        }));
        for issuer in verifier.issuers() {
            let weak = Arc::downgrade(&cell);
            issuer.on_change(Box::new(move |name, keys| {
                if let Some(cell) = weak.upgrade() {
                    cell.publish_keys(name, keys);
                }
            }));
        }
        // What is there already (published before the hooks were set).
        cell.update(|s| {
            s.policy = policies.load();
            s.keys = verifier
                .issuers()
                .map(|i: &Arc<IssuerKeys>| (i.issuer_name().clone(), i.current()))
                .collect();
        });
        cell
    }

    /// The current snapshot: one atomic load.
    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn publish_policy(&self, snapshot: Arc<PolicySnapshot>) {
        self.update(|s| s.policy = Some(snapshot));
    }

    pub fn publish_keys(&self, issuer: &Arc<str>, keys: Arc<KeySet>) {
        self.update(|s| {
            s.keys.insert(issuer.clone(), keys);
        });
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let _guard = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        let mut next = State {
            policy: old.policy.clone(),
            keys: old.keys.clone(),
        };
        change(&mut next);
        self.current.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests;
