use serde_json::json;

use super::*;
use crate::policy::analysis::Segment::{Index, Key};

fn doc(v: serde_json::Value) -> Value {
    Value::from(v)
}

#[test]
fn decision_keys_cover_exactly_the_paths_read() {
    let paths = vec![
        vec![Key("attributes".into()), Key("method".into())],
        vec![Key("parsed_path".into()), Index(0)],
    ];
    let a = doc(json!({"attributes": {"method": "GET", "noise": 1}, "parsed_path": ["x", "y"]}));
    let same = doc(json!({"attributes": {"method": "GET", "noise": 2}, "parsed_path": ["x", "z"]}));
    let other = doc(json!({"attributes": {"method": "POST"}, "parsed_path": ["x"]}));
    let missing = doc(json!({"attributes": {}, "parsed_path": ["x"]}));
    let k = |d: &Value| DecisionCache::key(1, &paths, d);
    assert_eq!(k(&a), k(&same), "unread parts do not matter");
    assert_ne!(k(&a), k(&other));
    assert_ne!(k(&a), k(&missing));
    assert_ne!(
        DecisionCache::key(1, &paths, &a),
        DecisionCache::key(2, &paths, &a),
        "generation"
    );
    // Values that print alike stay apart: "1" vs 1, and key/value boundaries.
    let p = vec![vec![Key("a".into())], vec![Key("b".into())]];
    let x = doc(json!({"a": "1", "b": 1}));
    let y = doc(json!({"a": 1, "b": "1"}));
    assert_ne!(DecisionCache::key(1, &p, &x), DecisionCache::key(1, &p, &y));
    let whole = vec![vec![]];
    assert_ne!(
        DecisionCache::key(1, &whole, &a),
        DecisionCache::key(1, &whole, &same)
    );
}

#[test]
fn entries_never_outlive_the_token() {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    )
    .expect("fits");
    let max = Duration::from_secs(60);
    assert_eq!(ttl_until(Some(now + 3600), max), Some(max));
    let short = ttl_until(Some(now + 10), max).expect("some");
    assert!(short <= Duration::from_secs(10) && short >= Duration::from_secs(9));
    assert_eq!(ttl_until(Some(now - 1), max), None);
    assert_eq!(ttl_until(None, max), None);
}
