//! The active policy, swapped whole. A new bundle is verified and compiled aside, off the
//! request path; only a bundle that passed every check replaces the current one, in one
//! atomic store. A request loads the snapshot once and uses it to the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::bundle::SigningKey;
use super::{Bundle, PolicyError, PolicySet};

/// One activated policy.
#[derive(Debug)]
pub struct PolicySnapshot {
    /// The policy compiled for `policy.query`.
    pub policies: PolicySet,
    /// The same bundle compiled for each of `policy.queries`, by name: routes select one
    /// (`onbehalf.policy` in Envoy's `context_extensions`).
    pub named: std::collections::HashMap<String, PolicySet>,
    /// Increases by one per activation; part of every cache key that depends on the policy.
    pub generation: u64,
    /// Content digest of the bundle, to skip re-activating identical content.
    pub digest: String,
}

// === impl PolicySnapshot ===

impl PolicySnapshot {
    /// The policy a route selects by name (`policy.queries`), or `policy.query`'s without
    /// one; `None` for a name not configured.
    pub fn select(&self, name: Option<&str>) -> Option<&PolicySet> {
        match name {
            None => Some(&self.policies),
            Some(name) => self.named.get(name),
        }
    }
}

/// What `/v1/status` reports about the policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyStatus {
    pub source: String,
    pub name: String,
    pub revision: Option<String>,
    pub generation: u64,
    pub last_activation: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub activations: u64,
    pub failures: u64,
}

/// Signature requirements for bundles.
#[derive(Default)]
pub struct Signing {
    pub keys: Vec<SigningKey>,
    pub required: bool,
}

/// Called with each policy activated, as it is activated.
pub type ActivationHook = Box<dyn Fn(Arc<PolicySnapshot>) + Send + Sync>;

/// Holds the active policy and the record of loads.
pub struct PolicyStore {
    query: String,
    /// `policy.queries`: name and rule.
    named: Vec<(String, String)>,
    /// Other queries a bundle must define to be activated (the exchange's).
    required: Vec<String>,
    signing: Signing,
    current: ArcSwapOption<PolicySnapshot>,
    on_activate: std::sync::OnceLock<ActivationHook>,
    status: Mutex<PolicyStatus>,
    activations: AtomicU64,
    failures: AtomicU64,
}

// === impl PolicyStore ===

impl PolicyStore {
    pub fn new(query: &str, source: String, name: String, signing: Signing) -> PolicyStore {
        PolicyStore {
            query: query.to_string(),
            named: Vec::new(),
            required: Vec::new(),
            signing,
            current: ArcSwapOption::empty(),
            on_activate: std::sync::OnceLock::new(),
            status: Mutex::new(PolicyStatus {
                source,
                name,
                ..Default::default()
            }),
            activations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Compiles every bundle for each named query too (`policy.queries`); a bundle that
    /// does not compile for one is refused.
    pub fn with_queries(mut self, named: Vec<(String, String)>) -> PolicyStore {
        self.named = named;
        self
    }

    /// Refuses bundles that define no package for `query`, as it refuses one that does not
    /// compile: the last good policy keeps answering it.
    pub fn require(mut self, query: &str) -> PolicyStore {
        self.required.push(query.to_string());
        self
    }

    /// Sets the one hook told of every activation from now on (`state::StateCell`); a second
    /// call changes nothing.
    pub fn on_activate(&self, hook: ActivationHook) {
        let _ = self.on_activate.set(hook);
    }

    /// The active policy, or `None` before the first successful load.
    pub fn load(&self) -> Option<Arc<PolicySnapshot>> {
        self.current.load_full()
    }

    /// Verifies, compiles and activates `bundle`. Returns `Ok(false)` when its content equals
    /// the active bundle's. On error nothing changes but the status and the failure count.
    pub async fn activate(&self, bundle: Bundle) -> Result<bool, PolicyError> {
        let result = self.prepare(bundle).await;
        match result {
            Ok(None) => Ok(false),
            Ok(Some(snapshot)) => {
                let revision = snapshot.policies.revision().to_string();
                let generation = snapshot.generation;
                let snapshot = Arc::new(snapshot);
                self.current.store(Some(snapshot.clone()));
                if let Some(hook) = self.on_activate.get() {
                    hook(snapshot);
                }
                self.activations.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut s) = self.status.lock() {
                    s.revision = Some(revision.clone());
                    s.generation = generation;
                    s.last_activation = Some(now());
                    s.last_error = None;
                }
                tracing::info!(
                    policy.revision = %revision,
                    policy.generation = generation,
                    "Activated policy"
                );
                Ok(true)
            }
            Err(e) => {
                self.record_failure(&e);
                Err(e)
            }
        }
    }

    /// Records a load that failed before a bundle could be read (fetch, archive).
    pub fn record_failure(&self, e: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(e.to_string());
            s.last_error_at = Some(now());
        }
        tracing::error!(
            error = %e,
            policy.kept = self.current.load().as_ref().map(|c| c.policies.revision().to_string()).unwrap_or_default(),
            "Policy bundle rejected; the last good policy keeps serving"
        );
    }

    async fn prepare(&self, bundle: Bundle) -> Result<Option<PolicySnapshot>, PolicyError> {
        let digest = bundle.digest();
        let current = self.current.load_full();
        if current.as_ref().is_some_and(|c| c.digest == digest) {
            return Ok(None);
        }
        bundle.verify(&self.signing.keys, self.signing.required)?;
        let query = self.query.clone();
        let named = self.named.clone();
        let origin = self.status().name;
        // Compiling takes milliseconds to seconds: keep it off the async workers.
        let (policies, named) = tokio::task::spawn_blocking(move || {
            let main = PolicySet::from_bundle(&bundle, &query, &origin)?;
            let mut sets = std::collections::HashMap::new();
            for (name, query) in named {
                sets.insert(name, PolicySet::from_bundle(&bundle, &query, &origin)?);
            }
            Ok::<_, PolicyError>((main, sets))
        })
        .await
        .map_err(|e| PolicyError::Compile {
            query: self.query.clone(),
            message: format!("the compile task failed: {e}"),
        })??;
        if let Some(missing) = self.required.iter().find(|q| !policies.defines(q)) {
            return Err(PolicyError::Undefined(missing.clone()));
        }
        Ok(Some(PolicySnapshot {
            policies,
            named,
            generation: current.map_or(1, |c| c.generation + 1),
            digest,
        }))
    }

    pub fn status(&self) -> PolicyStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.activations = self.activations.load(Ordering::Relaxed);
        s.failures = self.failures.load(Ordering::Relaxed);
        s
    }
}

fn now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    crate::input::rfc3339_utc(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}
