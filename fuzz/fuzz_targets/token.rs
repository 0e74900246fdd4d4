//! The token decoder: any bytes as a bearer token through the whole Check, and as a claims
//! object through the delegation-chain decoder. Nothing panics; the only token ever allowed
//! is the seed signed with the fixture key (no mutation of it passes); a chain that decodes
//! keeps its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// The one validly signed token (fuzz/seeds/token), for the fixture issuer.
const SIGNED: &str = include_str!("../seeds/token/delegation.jwt");

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let signed = token.trim() == SIGNED.trim();
    let request = onbehalf::cli::check::RequestSpec {
        method: "POST".into(),
        path: "/flights/bookings".into(),
        host: Some("service-b".into()),
        headers: Default::default(),
        token: Some(token.to_string()),
        body: None,
    }
    .to_check_request("authorization");
    let response = common::respond(&request);
    assert!(
        signed || !common::allowed(&response),
        "a token not signed by the issuer was allowed: {token:?}"
    );

    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(data)
        && let Ok(auth) = onbehalf::authn::Authenticated::from_claims(&claims, None, 8)
    {
        assert!(auth.chain.len() <= 8);
        for id in std::iter::once(&auth.subject).chain(auth.chain.iter()) {
            assert!(!id.is_empty() && !id.chars().any(char::is_control));
        }
        let _ = auth.parts();
    }
});
