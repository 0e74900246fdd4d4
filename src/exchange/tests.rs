use super::form::{self, ACCESS_TOKEN, GRANT_TYPE, JWT};
use super::*;

const FORM: &str = "application/x-www-form-urlencoded";

fn body(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

fn base() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", GRANT_TYPE),
        ("subject_token", "s.s.s"),
        ("subject_token_type", ACCESS_TOKEN),
        ("actor_token", "a.a.a"),
        ("actor_token_type", JWT),
    ]
}

fn code(r: Result<TokenRequest, ExchangeError>) -> (ExchangeResult, String) {
    let e = r.expect_err("refused");
    (e.code, e.description)
}

#[test]
fn a_full_request_is_read() {
    let mut pairs = base();
    pairs.extend([
        ("audience", "service-b"),
        ("audience", "service-c"),
        ("resource", "https://api.example/flights"),
        ("scope", "book_flight  read_bookings"),
        ("requested_token_type", JWT),
        ("unknown", "ignored"),
    ]);
    let req = form::parse(
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        &body(&pairs),
    )
    .expect("valid");
    assert_eq!(req.subject_token, "s.s.s");
    assert_eq!(req.actor_token, "a.a.a");
    assert_eq!(req.audience, ["service-b", "service-c"]);
    assert_eq!(req.resource, ["https://api.example/flights"]);
    assert_eq!(req.scope, ["book_flight", "read_bookings"]);
    assert_eq!(req.requested_token_type, JWT);
    // Debug never shows a token.
    let shown = format!("{req:?}");
    assert!(
        !shown.contains("s.s.s") && !shown.contains("a.a.a"),
        "{shown}"
    );
}

#[test]
fn malformed_requests_get_the_rfc_error() {
    let cases: Vec<(Option<&str>, Vec<u8>, ExchangeResult, &str)> = vec![
        (
            Some("application/json"),
            br#"{"grant_type":"x"}"#.to_vec(),
            ExchangeResult::InvalidRequest,
            "x-www-form-urlencoded",
        ),
        (
            None,
            body(&base()),
            ExchangeResult::InvalidRequest,
            "x-www-form-urlencoded",
        ),
        (
            Some(FORM),
            body(&[("grant_type", "client_credentials")]),
            ExchangeResult::UnsupportedGrantType,
            "token-exchange",
        ),
        (
            Some(FORM),
            body(&[]),
            ExchangeResult::InvalidRequest,
            "grant_type is missing",
        ),
        (
            Some(FORM),
            body(&base()[..3]),
            ExchangeResult::InvalidRequest,
            "actor_token is missing",
        ),
        (
            Some(FORM),
            body(&[base(), vec![("subject_token", "t.t.t")]].concat()),
            ExchangeResult::InvalidRequest,
            "subject_token is repeated",
        ),
        (
            Some(FORM),
            body(
                &[
                    base(),
                    vec![(
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:saml2",
                    )],
                ]
                .concat(),
            ),
            ExchangeResult::InvalidRequest,
            "requested_token_type",
        ),
        (
            Some(FORM),
            body(&[
                ("grant_type", GRANT_TYPE),
                ("subject_token", "s.s.s"),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:saml2",
                ),
                ("actor_token", "a.a.a"),
                ("actor_token_type", JWT),
            ]),
            ExchangeResult::InvalidRequest,
            "subject_token_type",
        ),
        (
            Some(FORM),
            body(&[base(), vec![("resource", "flights")]].concat()),
            ExchangeResult::InvalidTarget,
            "absolute URI",
        ),
        (
            Some(FORM),
            body(&[base(), vec![("scope", "ok \"quoted\"")]].concat()),
            ExchangeResult::InvalidScope,
            "§3.3",
        ),
    ];
    for (content_type, bytes, want, says) in cases {
        let (got, description) = code(form::parse(content_type, &bytes));
        assert_eq!(got, want, "{description}");
        assert!(description.contains(says), "{description}");
        assert!(!description.contains("s.s.s"), "{description}");
    }
}

#[test]
fn an_empty_parameter_is_as_if_omitted() {
    let pairs = [base(), vec![("scope", ""), ("audience", "")]].concat();
    let req = form::parse(Some(FORM), &body(&pairs)).expect("valid");
    assert!(req.scope.is_empty() && req.audience.is_empty());
    assert_eq!(req.requested_token_type, ACCESS_TOKEN);
}

#[test]
fn requested_items_must_all_be_allowed() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        granted(&s(&[]), &s(&["a", "b"])),
        Ok(s(&["a", "b"])),
        "nothing asked: all the policy allows"
    );
    assert_eq!(granted(&s(&["b", "b"]), &s(&["a", "b"])), Ok(s(&["b"])));
    assert_eq!(granted(&s(&["a", "c"]), &s(&["a", "b"])), Err("c".into()));
    assert_eq!(granted(&s(&["a"]), &s(&[])), Err("a".into()));
}

#[test]
fn copy_skips_reserved_claims() {
    let from: Map<String, Json> = serde_json::from_value(json!({
        "sub": "alice", "exp": 1, "employee": true, "act": {"sub": "x"}, "scope": "all"
    }))
    .expect("map");
    let mut to = Map::new();
    copy(
        &mut to,
        &from,
        &[
            "employee".into(),
            "exp".into(),
            "act".into(),
            "scope".into(),
            "absent".into(),
        ],
    );
    assert_eq!(Json::Object(to), json!({"employee": true}));
}
