use std::sync::Arc;

use super::*;
use crate::policy::PolicySet;

fn snapshot(generation: u64) -> Arc<PolicySnapshot> {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("p.rego"),
        format!("package p\nimport rego.v1\nallow := {generation}\n"),
    )
    .expect("write");
    Arc::new(PolicySnapshot {
        policies: PolicySet::load_dir(dir.path(), "data.p.allow").expect("policy"),
        named: Default::default(),
        generation,
        digest: generation.to_string(),
    })
}

/// A Check holds one `State` from start to end: a policy activated and keys fetched while it
/// runs (between its authentication and its evaluation, say) are not mixed into what it sees.
#[test]
fn a_loaded_state_is_one_moment_whatever_is_published_after() {
    let cell = StateCell::default();
    let issuer: Arc<str> = Arc::from("https://idp");
    cell.publish_policy(snapshot(1));
    let first_keys = Arc::new(KeySet::default());
    cell.publish_keys(&issuer, first_keys.clone());

    let seen = cell.load();
    cell.publish_policy(snapshot(2));
    cell.publish_keys(&issuer, Arc::new(KeySet::default()));

    assert_eq!(seen.generation(), 1);
    assert!(Arc::ptr_eq(
        seen.keys("https://idp").expect("keys"),
        &first_keys
    ));
    let now = cell.load();
    assert_eq!(now.generation(), 2);
    assert!(!Arc::ptr_eq(
        now.keys("https://idp").expect("keys"),
        &first_keys
    ));
    // Publishing keys keeps the policy, and the other way round.
    cell.publish_keys(&Arc::from("https://other"), Arc::new(KeySet::default()));
    assert_eq!(cell.load().generation(), 2);
    assert!(cell.load().keys("https://idp").is_some());
}

#[test]
fn no_policy_is_generation_zero() {
    assert_eq!(StateCell::default().load().generation(), 0);
    assert!(StateCell::default().load().policy.is_none());
}
