use serde_json::json;

use super::*;
use crate::input::Segment::{Index, Key};
use envoy_types::ext_authz::v3::pb::CheckRequest;

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    crate::cli::check::RequestSpec {
        method: method.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
    .to_check_request("authorization")
}

fn auth(sub: &str, scopes: &[&str]) -> Authenticated {
    let claims = json!({"sub": sub, "iss": "i", "aud": "a", "scope": scopes.join(" ")});
    let claims = claims.as_object().expect("object");
    Authenticated::from_claims(claims, None, 4).expect("valid")
}

#[test]
fn decision_keys_cover_exactly_the_paths_read() {
    let paths = vec![
        vec![
            Key("attributes".into()),
            Key("request".into()),
            Key("http".into()),
            Key("method".into()),
        ],
        vec![Key("parsed_path".into()), Index(0)],
        vec![Key("token".into()), Key("scopes".into())],
    ];
    let key = |req: &CheckRequest, a: &Authenticated, generation: u64| {
        let input = CheckInput::try_from(req).expect("input");
        decision_key(generation, &paths, &input, Some(a), &mut None).expect("key")
    };
    let alice = auth("alice", &["read"]);
    let bob_same_scopes = auth("bob", &["read"]);
    let carol_other_scopes = auth("carol", &["write"]);
    let base = request("GET", "/x/y", &[("x-noise", "1")]);
    let k = key(&base, &alice, 1);
    assert_eq!(
        k,
        key(&request("GET", "/x/z", &[("x-noise", "2")]), &alice, 1),
        "unread parts do not matter"
    );
    assert_eq!(
        k,
        key(&base, &bob_same_scopes, 1),
        "the subject is not read"
    );
    assert_ne!(k, key(&base, &carol_other_scopes, 1), "scopes are read");
    assert_ne!(k, key(&request("POST", "/x/y", &[]), &alice, 1), "method");
    assert_ne!(
        k,
        key(&request("GET", "/w", &[]), &alice, 1),
        "parsed_path[0]"
    );
    assert_ne!(k, key(&base, &alice, 2), "generation");

    // The whole input: every part counts.
    let whole = vec![vec![]];
    let input = CheckInput::try_from(&base).expect("input");
    let other = request("GET", "/x/y", &[("x-noise", "2")]);
    let other_input = CheckInput::try_from(&other).expect("input");
    assert_ne!(
        decision_key(1, &whole, &input, Some(&alice), &mut None).expect("key"),
        decision_key(1, &whole, &other_input, Some(&alice), &mut None).expect("key")
    );
    assert_ne!(
        decision_key(1, &whole, &input, Some(&alice), &mut None).expect("key"),
        decision_key(1, &whole, &input, Some(&bob_same_scopes), &mut None).expect("key")
    );
}
