use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value as Json, json};

use super::*;
use crate::config::Interval;

const ISS: &str = "https://onbehalf.test";

fn config() -> MintConfig {
    MintConfig {
        enabled: true,
        issuer: ISS.into(),
        audience: vec!["default-aud".into()],
        ..MintConfig::default()
    }
}

fn now() -> i64 {
    unix_now()
}

/// A verified delegation token's decoded form: alice via three actors with extra claims.
fn auth(exp: i64) -> Authenticated {
    auth_from(json!({
        "iss": "https://idp.test", "aud": "service-b", "sub": "alice", "exp": exp,
        "employee": true, "scope": "book_flight read_bookings",
        "act": {"sub": "travel-agent", "capabilities": ["book_flight"],
                "act": {"sub": "orchestrator", "tier": 2,
                        "act": {"sub": "planner", "nested": {"a": [1, 2]}}}}
    }))
}

fn auth_from(claims: Json) -> Authenticated {
    let Json::Object(map) = claims else {
        panic!("object")
    };
    Authenticated::from_claims(&map, Some("JWT".into()), 8).expect("valid claims")
}

fn grant(scopes: &[&str], audience: &[&str], ttl: Option<u64>) -> Grant {
    Grant {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audience: audience.iter().map(|s| s.to_string()).collect(),
        ttl: ttl.map(Duration::from_secs),
    }
}

fn request<'a>(auth: &'a Authenticated, grant: &'a Grant) -> MintRequest<'a> {
    MintRequest {
        auth,
        grant,
        generation: 1,
        token_digest: None,
        request_id: Some("req-1"),
        method: "POST",
        path: "/flights/bookings",
        source: Some("10.0.0.7"),
        route_audience: None,
    }
}

/// Verifies `token` against the minter's JWKS with jsonwebtoken; returns header and claims.
fn verify(minter: &Minter, token: &str, aud: &str) -> (jsonwebtoken::Header, Json) {
    let jwks: JwkSet = serde_json::from_value(minter.keys().jwks()).expect("jwks");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("published key");
    let key = DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[ISS]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Json>(token, &key, &validation).expect("verifies");
    (data.header, data.claims)
}

#[test]
fn claims_copy_the_chain_exactly_and_carry_the_grant() {
    let minter = Minter::new(&config()).expect("minter");
    let auth = auth(now() + 3600);
    let grant = grant(&["book_flight"], &["service-b"], Some(30));
    let minted = minter.mint(&request(&auth, &grant)).expect("mint").minted;
    let (header, claims) = verify(&minter, &minted.token, "service-b");
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(minter.keys().current().kid()));
    assert_eq!(claims["iss"], ISS);
    assert_eq!(claims["sub"], "alice");
    let original: Json = serde_json::from_str(auth.claims_json()).expect("claims");
    assert_eq!(
        claims["act"], original["act"],
        "the act chain is copied exactly"
    );
    assert_eq!(claims["aud"], "service-b");
    assert_eq!(claims["scope"], "book_flight");
    assert_eq!(claims["txn"], "req-1");
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 30);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(22));
    // Nothing of the delegation token beyond sub and act.
    for absent in ["employee", "tctx", "rctx"] {
        assert!(claims.get(absent).is_none(), "{absent}");
    }
}

#[test]
fn a_direct_user_gets_no_act_claim() {
    let minter = Minter::new(&config()).expect("minter");
    let auth = auth_from(json!({"iss": "i", "aud": "a", "sub": "alice", "exp": now() + 600}));
    let grant = grant(&["read"], &[], None);
    let minted = minter.mint(&request(&auth, &grant)).expect("mint").minted;
    let (_, claims) = verify(&minter, &minted.token, "default-aud");
    assert!(claims.get("act").is_none());
}

#[test]
fn lifetime_is_capped_by_max_ttl_and_by_the_delegation_token() {
    let cfg = MintConfig {
        ttl: Interval(Duration::from_secs(60)),
        max_ttl: Interval(Duration::from_secs(120)),
        ..config()
    };
    let minter = Minter::new(&cfg).expect("minter");
    let long = auth(now() + 3600);
    let cases = [
        // (grant ttl, expected lifetime)
        (None, 60),
        (Some(90), 90),
        (Some(86_400), 120),
    ];
    for (ttl, expected) in cases {
        let grant = grant(&["s"], &[], ttl);
        let m = minter.mint(&request(&long, &grant)).expect("mint").minted;
        assert_eq!(m.expires_at - m.issued_at, expected, "grant ttl {ttl:?}");
    }
    // The delegation token expires in 10s: so does the minted token.
    let short = auth(now() + 10);
    let grant = grant(&["s"], &[], Some(60));
    let m = minter.mint(&request(&short, &grant)).expect("mint").minted;
    assert_eq!(m.expires_at, short.expires_at.expect("exp"));
    let (_, claims) = verify(&minter, &m.token, "default-aud");
    assert_eq!(claims["exp"], json!(short.expires_at));
    // Within the verifier's leeway, already expired: nothing is minted.
    let expired = auth(now() - 5);
    assert!(matches!(
        minter.mint(&request(&expired, &grant)),
        Err(MintError::Expiring)
    ));
}

#[test]
fn audience_comes_from_the_grant_else_the_route_else_the_default() {
    let minter = Minter::new(&MintConfig {
        audience: vec!["d1".into(), "d2".into()],
        ..config()
    })
    .expect("minter");
    let auth = auth(now() + 600);
    let from_grant = grant(&["a", "b"], &["x", "y"], None);
    let m = minter
        .mint(&request(&auth, &from_grant))
        .expect("mint")
        .minted;
    let (_, claims) = verify(&minter, &m.token, "y");
    assert_eq!(claims["aud"], json!(["x", "y"]));
    assert_eq!(claims["scope"], "a b");
    let default = grant(&[], &[], None);
    let m = minter.mint(&request(&auth, &default)).expect("mint").minted;
    let (_, claims) = verify(&minter, &m.token, "d2");
    assert_eq!(claims["aud"], json!(["d1", "d2"]));
    assert_eq!(claims["scope"], "");
    // A route's onbehalf.mint_audience comes before mint.audience, after the grant's.
    let routed = |grant| MintRequest {
        route_audience: Some("route-aud"),
        ..request(&auth, grant)
    };
    let m = minter.mint(&routed(&default)).expect("mint").minted;
    let (_, claims) = verify(&minter, &m.token, "route-aud");
    assert_eq!(claims["aud"], "route-aud");
    let m = minter.mint(&routed(&from_grant)).expect("mint").minted;
    let (_, claims) = verify(&minter, &m.token, "x");
    assert_eq!(claims["aud"], json!(["x", "y"]));

    let none = Minter::new(&MintConfig {
        audience: vec![],
        ..config()
    })
    .expect("minter");
    assert!(matches!(
        none.mint(&request(&auth, &default)),
        Err(MintError::NoAudience)
    ));
}

#[test]
fn without_a_request_id_txn_is_a_fresh_uuid() {
    let minter = Minter::new(&config()).expect("minter");
    let auth = auth(now() + 600);
    let grant = grant(&["s"], &[], None);
    let mut req = request(&auth, &grant);
    req.request_id = None;
    let a = minter.mint(&req).expect("mint").minted;
    let b = minter.mint(&req).expect("mint").minted;
    let txn = |t: &str| verify(&minter, t, "default-aud").1["txn"].clone();
    let (ta, tb) = (txn(&a.token), txn(&b.token));
    assert_ne!(ta, tb);
    let s = ta.as_str().expect("string");
    assert_eq!(s.len(), 36);
    assert_eq!(s.as_bytes()[14], b'4', "version 4: {s}");
}

#[test]
fn reuse_is_byte_identical_for_one_decision_only() {
    let minter = Minter::new(&config()).expect("minter");
    let alice = auth(now() + 600);
    let g = grant(&["s"], &["svc"], None);
    let digest = [1u8; 32];
    let mut req = request(&alice, &g);
    req.token_digest = Some(&digest);
    let first = minter.mint(&req).expect("mint");
    assert!(!first.reused);
    let again = minter.mint(&req).expect("mint");
    assert!(again.reused);
    assert_eq!(first.minted.token, again.minted.token);
    assert!(Arc::ptr_eq(&first.minted, &again.minted));

    // Another token (another subject), another grant, another policy generation: new tokens.
    let other_digest = [2u8; 32];
    let bob = auth_from(json!({"iss": "i", "aud": "a", "sub": "bob", "exp": now() + 600}));
    let mut other_subject = request(&bob, &g);
    other_subject.token_digest = Some(&other_digest);
    let t = minter.mint(&other_subject).expect("mint");
    assert!(!t.reused);
    assert_eq!(verify(&minter, &t.minted.token, "svc").1["sub"], "bob");

    let g2 = grant(&["s", "t"], &["svc"], None);
    let mut other_grant = request(&alice, &g2);
    other_grant.token_digest = Some(&digest);
    assert!(!minter.mint(&other_grant).expect("mint").reused);

    let mut other_generation = req;
    other_generation.generation = 2;
    assert!(!minter.mint(&other_generation).expect("mint").reused);

    // Without the token's digest nothing is reused.
    let mut no_digest = req;
    no_digest.token_digest = None;
    assert!(!minter.mint(&no_digest).expect("mint").reused);
}

#[test]
fn reuse_stops_at_half_of_the_lifetime() {
    let minter = Minter::new(&config()).expect("minter");
    // The delegation token expires in 2s: the minted one lives 2s, and may be reused for 1s.
    let auth = auth(now() + 2);
    let g = grant(&["s"], &[], None);
    let digest = [3u8; 32];
    let mut req = request(&auth, &g);
    req.token_digest = Some(&digest);
    let first = minter.mint(&req).expect("mint").minted;
    let lifetime = first.expires_at - first.issued_at;
    assert!(lifetime <= 2);
    // Wait until less than half remains (seconds resolution, so just past the midpoint).
    let midpoint = first.expires_at - lifetime / 2;
    while now() <= midpoint {
        std::thread::sleep(Duration::from_millis(50));
    }
    match minter.mint(&req) {
        Ok(m) => assert!(!m.reused, "reused past half of its life"),
        Err(e) => assert!(matches!(e, MintError::Expiring)),
    }
}

#[test]
fn txn_tokens_carry_the_request_context_and_are_never_reused() {
    let minter = Minter::new(&MintConfig {
        format: MintFormat::TxnToken,
        ..config()
    })
    .expect("minter");
    assert_eq!(minter.header(), "txn-token");
    let auth = auth(now() + 600);
    let g = grant(&["s"], &[], None);
    let digest = [4u8; 32];
    let mut req = request(&auth, &g);
    req.token_digest = Some(&digest);
    let a = minter.mint(&req).expect("mint").minted;
    let b = minter.mint(&req).expect("mint");
    assert!(!b.reused);
    assert_ne!(a.token, b.minted.token);
    let (header, claims) = verify(&minter, &a.token, "default-aud");
    assert_eq!(header.typ.as_deref(), Some("txntoken+jwt"));
    assert_eq!(
        claims["tctx"],
        json!({"method": "POST", "path": "/flights/bookings"})
    );
    assert_eq!(claims["rctx"], json!({"req_ip": "10.0.0.7"}));
    assert_eq!(claims["txn"], "req-1");
    assert_eq!(minter.header_value("t"), "t");
}

#[test]
fn header_value_is_bearer_only_in_authorization() {
    let minter = Minter::new(&config()).expect("minter");
    assert_eq!(minter.header_value("abc"), "Bearer abc");
    let other = Minter::new(&MintConfig {
        header: Some("x-upstream-token".into()),
        ..config()
    })
    .expect("minter");
    assert_eq!(other.header_value("abc"), "abc");
}

fn write_key(dir: &std::path::Path, fixture: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let path = dir.join("mint.pem");
    std::fs::copy(src, &path).expect("copy key");
    path
}

#[test]
fn rotation_keeps_the_previous_key_published_for_max_ttl() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = MintConfig {
        key_file: Some(write_key(dir.path(), "rsa-1.pem")),
        key_id: Some("first".into()),
        algorithm: "RS256".into(),
        ..config()
    };
    let minter = Minter::new(&cfg).expect("minter");
    let auth = auth(now() + 600);
    let g = grant(&["s"], &[], None);
    let digest = [5u8; 32];
    let mut req = request(&auth, &g);
    req.token_digest = Some(&digest);
    let old = minter.mint(&req).expect("mint").minted;
    assert_eq!(minter.keys().kids(), ["first"]);
    // The same content again changes nothing.
    assert_eq!(minter.keys().reload(), Ok(false));

    write_key(dir.path(), "rsa-2.pem");
    assert_eq!(minter.keys().reload(), Ok(true));
    let kids = minter.keys().kids();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], "first");
    assert_ne!(
        kids[0], "first",
        "a rotated key never reuses a published kid"
    );
    // The new key signs at once (a reused token signed by the old key is not handed out).
    let new = minter.mint(&req).expect("mint");
    assert!(!new.reused);
    let new = new.minted;
    assert_eq!(
        jsonwebtoken::decode_header(&*new.token)
            .expect("h")
            .kid
            .as_deref(),
        Some(kids[0].as_str())
    );
    // Both verify against the published JWKS.
    verify(&minter, &old.token, "default-aud");
    verify(&minter, &new.token, "default-aud");

    // A broken file keeps the current key.
    std::fs::write(dir.path().join("mint.pem"), "garbage").expect("write");
    assert!(minter.keys().reload().is_err());
    assert_eq!(minter.keys().kids(), kids);
}

#[test]
fn retired_keys_leave_the_jwks_after_max_ttl() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = MintConfig {
        key_file: Some(write_key(dir.path(), "ec-1.pem")),
        // Retired keys are published for max_ttl: zero makes them leave at once.
        max_ttl: Interval(Duration::ZERO),
        ..config()
    };
    let minter = Minter::new(&cfg).expect("minter");
    let before = minter.keys().kids();
    assert!(
        minter
            .keys()
            .rotate(PrivateKey::generate(SignAlgorithm::ES256).expect("key"))
    );
    let after = minter.keys().kids();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    assert_eq!(
        minter.keys().jwks()["keys"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn jwks_and_debug_hold_no_private_key() {
    let minter = Minter::new(&config()).expect("minter");
    let jwks = minter.keys().jwks();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none());
    let shown = format!("{:?}", minter.keys().current());
    assert!(!shown.contains("\"d\""));
}
