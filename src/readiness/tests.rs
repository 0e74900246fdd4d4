use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

#[test]
fn ready_once_every_dependency_loaded_then_latched() {
    let policy = Arc::new(AtomicBool::new(false));
    let keys = Arc::new(AtomicBool::new(false));
    let flag = |f: &Arc<AtomicBool>| {
        let f = f.clone();
        move || f.load(Ordering::Relaxed)
    };
    let r = Readiness::new(vec![
        Dependency::new("the policy", flag(&policy), || Some("a.rego: bad".into())),
        Dependency::new("the keys of https://idp", flag(&keys), || None),
    ]);
    assert!(!r.is_ready());
    assert_eq!(
        r.waiting(),
        ["the policy (a.rego: bad)", "the keys of https://idp"]
    );
    policy.store(true, Ordering::Relaxed);
    assert!(!r.is_ready());
    assert_eq!(r.waiting(), ["the keys of https://idp"]);
    keys.store(true, Ordering::Relaxed);
    assert!(r.is_ready());
    // A dependency lost later does not flap readiness.
    policy.store(false, Ordering::Relaxed);
    assert!(r.is_ready());
    assert!(r.waiting().is_empty());
}

#[test]
fn not_ready_for_good_once_draining() {
    let r = Readiness::new(vec![Dependency::new("the policy", || true, || None)]);
    assert!(r.is_ready());
    r.set_draining();
    assert!(!r.is_ready());
    assert!(r.is_draining());
    assert!(r.waiting().is_empty(), "every dependency has loaded");
}
