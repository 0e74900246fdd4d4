//! Property tests (proptest) of every parser and builder an attacker or an operator can feed:
//! token claims -> delegation chain and identity headers, CheckRequest -> input document,
//! policy result -> Envoy response, bundle archive, configuration. None may panic, and each
//! keeps its invariant.

use std::collections::HashMap;

use onbehalf::authn::Authenticated;
use onbehalf::decision::Decision;
use onbehalf::input::CheckInput;
use onbehalf::policy::Verdict;
use onbehalf::policy::bundle::{Bundle, Limits};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, a few levels deep, with strings that include separators and controls.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z ,\"%\r\n\u{0}é-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("(sub|act|iss|aud|x|[a-z]{1,4})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims with a subject and an `act` chain whose ids may hold anything.
fn delegation_claims() -> impl Strategy<Value = Value> {
    let id = "[a-zA-Z0-9 ,\"%;:\r\n\u{0}\t/é-]{0,16}";
    (id, prop::collection::vec(id, 0..12), any_json()).prop_map(|(sub, actors, extra)| {
        let mut claims =
            json!({"iss": "https://idp", "aud": "svc", "sub": sub, "exp": 4_000_000_000_u64});
        let mut act: Option<Value> = None;
        for a in actors.iter().rev() {
            act = Some(match act {
                Some(inner) => json!({"sub": a, "act": inner}),
                None => json!({"sub": a}),
            });
        }
        if let Some(act) = act {
            claims["act"] = act;
        }
        claims["extra"] = extra;
        claims
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Decoding never panics; what decodes has at most the depth limit of actors, ids that are
    /// non-empty text without control characters, and identity headers with one chain element
    /// per actor, none of which can carry a separator or a control character.
    #[test]
    fn claims_decode_to_a_chain_whose_headers_cannot_be_forged(claims in delegation_claims()) {
        let map: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        if let Ok(auth) = Authenticated::from_claims(&map, None, 8) {
            prop_assert!(auth.chain.len() <= 8);
            for id in std::iter::once(&auth.subject).chain(auth.chain.iter()) {
                prop_assert!(!id.is_empty() && !id.chars().any(char::is_control));
            }
            let [subject, actor, chain] = auth.identity();
            for value in [&subject, &actor, &chain].into_iter().flatten() {
                prop_assert!(value.chars().all(|c| c.is_ascii_graphic()), "{value:?}");
            }
            prop_assert!(subject.is_some_and(|s| !s.contains(',')));
            match chain {
                Some(chain) => prop_assert_eq!(chain.split(',').count(), auth.chain.len()),
                None => prop_assert!(auth.chain.is_empty()),
            }
            prop_assert_eq!(auth.parts().is_ok(), true);
        }
    }

    /// Any claims object at all: decoding answers, never panics.
    #[test]
    fn arbitrary_claims_never_panic(claims in any_json()) {
        if let Some(map) = claims.as_object() {
            let _ = Authenticated::from_claims(map, None, 8);
        }
    }

    /// Any method, path, headers and body: the input document is built or refused, never a
    /// panic; a built document splits the path into as many segments as it has.
    #[test]
    fn check_requests_become_documents_or_errors(
        method in "[A-Z]{0,8}",
        path in "/[a-zA-Z0-9%/?&=.\u{e9}~ -]{0,40}",
        headers in prop::collection::hash_map("[a-z-]{1,12}", "[ -~]{0,20}", 0..6),
        body in "[ -~]{0,40}",
    ) {
        let spec = onbehalf::cli::check::RequestSpec {
            method,
            path: path.clone(),
            host: None,
            headers: headers.into_iter().collect::<HashMap<_, _>>(),
            body: Some(body),
            token: None,
        };
        let request = spec.to_check_request("authorization");
        if let Ok(input) = CheckInput::try_from(&request) {
            let parts = Authenticated::from_claims(
                json!({"iss": "i", "aud": "a", "sub": "alice"}).as_object().unwrap(),
                None,
                8,
            )
            .expect("claims")
            .parts()
            .expect("parts");
            let doc = serde_json::to_value(input.document(parts)).expect("json");
            let segments = path.split('?').next().unwrap_or("").split('/').count() - 1;
            prop_assert_eq!(doc["parsed_path"].as_array().map(Vec::len), Some(segments.max(1)));
        }
    }

    /// Any policy result: a verdict or an error, never a panic; on an allow the identity
    /// headers onbehalf sets are in the response exactly once, with onbehalf's values, whatever
    /// the result tried to set or remove in whatever letter case.
    #[test]
    fn results_never_forge_identity_headers(
        result in any_json(),
        extra in prop::collection::btree_map("[a-z_]{1,10}", any_json(), 0..4),
        forged in "[a-zA-Z]{0,6}",
    ) {
        // Any value at all first: a verdict or an error.
        let _ = Verdict::try_from(&regorus::Value::from(result));
        // Then an allow that tries to forge and strip the identity headers, among other keys.
        let mut obj: Map<String, Value> = extra.into_iter().collect();
        obj.insert("allowed".into(), Value::Bool(true));
        obj.insert("headers".into(), json!({"X-OnBehalf-Subject": forged, "x-onbehalf-actor": "root"}));
        obj.insert("request_headers_to_remove".into(), json!(["X-ONBEHALF-SUBJECT"]));
        let value = regorus::Value::from(Value::Object(obj));
        if let Ok(verdict) = Verdict::try_from(&value) {
            let identity = vec![
                ("x-onbehalf-subject".to_string(), Some("alice".to_string())),
                ("x-onbehalf-actor".to_string(), None),
            ];
            let response = Decision::from_verdict(verdict).to_check_response(&identity);
            if let Some(envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(ok)) = response.http_response {
                let set: Vec<_> = ok.headers.iter().filter_map(|h| h.header.as_ref()).filter(|h| h.key.eq_ignore_ascii_case("x-onbehalf-subject") || h.key.eq_ignore_ascii_case("x-onbehalf-actor")).collect();
                prop_assert_eq!(set.len(), 1);
                prop_assert_eq!(&set[0].value, "alice");
                prop_assert!(!ok.headers_to_remove.iter().any(|h| h.eq_ignore_ascii_case("x-onbehalf-subject")));
                prop_assert!(ok.headers_to_remove.iter().any(|h| h == "x-onbehalf-actor"));
            }
        }
    }

    /// Any bytes as a bundle archive: refused or read within the limits, never a panic.
    #[test]
    fn bundle_archives_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits { max_archive_bytes: 4096, max_content_bytes: 65536 };
        let _ = Bundle::from_tar_gz(&bytes, limits);
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        gz.extend_from_slice(&bytes);
        let _ = Bundle::from_tar_gz(&gz, limits);
    }

    /// Any configuration text: a config or an error that names where, never a panic.
    #[test]
    fn configuration_text_never_panics(text in "[a-z_:\n {}\\[\\],0-9.-]{0,200}") {
        let _ = onbehalf::config::Config::from_yaml(
            &onbehalf::config::Source::Embedded,
            &text,
            std::iter::empty::<(String, String)>(),
        );
    }
}
