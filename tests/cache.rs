//! The caches are invisible: decisions with caches on equal decisions with caches off, keys
//! removed from a JWKS stop cached tokens, and a new policy revision is never answered from
//! an older one's cache.

use onbehalf::pipeline::Authorizer;
use onbehalf::policy::Bundle;
use serde_json::json;
use std::collections::BTreeMap;

use crate::common::*;

const ISS: &str = "https://idp.cache.test";

/// A small deterministic PRNG (xorshift64*), so every run replays the same streams.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.next() % items.len() as u64).expect("index");
        &items[i]
    }
}

async fn authorizer(
    policy_dir: &std::path::Path,
    jwks: &std::path::Path,
    caches: bool,
) -> Authorizer {
    let yaml = format!(
        "policy:\n  dir: {}\ncache:\n  tokens:\n    enabled: {caches}\n    ttl: 5m\n  decisions:\n    enabled: {caches}\n    ttl: 1m\n\
         authn:\n  issuers:\n    - issuer: {ISS}\n      audiences: [{AUD}]\n      jwks_file: {}\n",
        policy_dir.display(),
        jwks.display()
    );
    let config = parse_config(&yaml);
    let (authorizer, source) = onbehalf::app::build_authorizer(&config).expect("builds");
    onbehalf::app::load_once(&authorizer, &source, &config)
        .await
        .expect("loads");
    authorizer
}

fn tokens() -> Vec<String> {
    let mut director = delegation(ISS, &["ops-agent"], "admin read_bookings");
    director["department"] = json!("Operations");
    director["title"] = json!("Director");
    let mut outsider = delegation(ISS, &["travel-agent"], "book_flight");
    outsider["employee"] = json!(false);
    let claims = [
        delegation(ISS, &["travel-agent"], "book_flight"),
        delegation(ISS, &["travel-agent"], "read_bookings"),
        delegation(
            ISS,
            &["travel-agent", "orchestrator"],
            "book_flight read_bookings",
        ),
        delegation(
            ISS,
            &["travel-agent", "orchestrator", "orchestrator"],
            "read_bookings",
        ),
        delegation(ISS, &["ops-agent"], "book_flight"),
        delegation(ISS, &["shady-agent"], "read_bookings"),
        delegation(ISS, &[], "book_flight read_bookings"),
        director,
        outsider,
    ];
    let mut out: Vec<String> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| sign(if i % 2 == 0 { "rsa-1" } else { "ec-1" }, c))
        .collect();
    let mut expired = delegation(ISS, &["travel-agent"], "book_flight");
    expired["exp"] = json!(now() - 600);
    out.push(sign("rsa-1", &expired));
    out.push("not-a-token".into());
    out
}

/// Runs `n` random requests through both authorizers and compares every response.
async fn compare(policy_dir: &std::path::Path, seed: u64, n: usize) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [jwk("rsa-1"), jwk("ec-1")]}).to_string(),
    )
    .expect("jwks");
    let cached = authorizer(policy_dir, &jwks, true).await;
    let fresh = authorizer(policy_dir, &jwks, false).await;
    let tokens = tokens();
    let methods = ["GET", "POST", "DELETE"];
    let paths = [
        "/flights",
        "/flights/bookings",
        "/flights/42?x=1",
        "/admin/users",
        "/payroll",
        "/",
    ];
    let tiers = ["gold", "silver", ""];
    let mut rng = Rng(seed);
    for i in 0..n {
        let token = rng.pick(&tokens);
        let bearer = format!("Bearer {token}");
        let noise = (rng.next() % 1000).to_string();
        // A fresh id on every request, as Envoy stamps them.
        let request_id = format!("{seed:x}-{i}");
        let mut headers = vec![
            ("authorization", bearer.as_str()),
            ("x-noise", noise.as_str()),
            ("x-request-id", request_id.as_str()),
        ];
        let tier = *rng.pick(&tiers);
        if !tier.is_empty() {
            headers.push(("x-tier", tier));
        }
        let (method, path) = (*rng.pick(&methods), *rng.pick(&paths));
        let request = check_request(method, path, &headers);
        let (a, _) = onbehalf::grpc::respond(&cached, &request).await;
        let (b, _) = onbehalf::grpc::respond(&fresh, &request).await;
        // Every decision has its own id; the rest must be equal.
        let (a, b) = (without_decision_id(a), without_decision_id(b));
        assert_eq!(a, b, "request {i} (seed {seed}): {request:?}");
    }
    cached.metrics().decision_cache()
}

fn without_decision_id(
    mut r: envoy_types::ext_authz::v3::pb::CheckResponse,
) -> envoy_types::ext_authz::v3::pb::CheckResponse {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    if let Some(md) = r.dynamic_metadata.as_mut() {
        assert!(md.fields.remove("decision_id").is_some(), "a decision id");
    }
    let is_id = |h: &envoy_types::ext_authz::v3::pb::HeaderValueOption| {
        h.header
            .as_ref()
            .is_some_and(|h| h.key == onbehalf::grpc::DECISION_ID_HEADER)
    };
    match r.http_response.as_mut() {
        Some(HttpResponse::OkResponse(ok)) => ok.headers.retain(|h| !is_id(h)),
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.headers.retain(|h| !is_id(h));
            if let Ok(serde_json::Value::Object(mut body)) = serde_json::from_str(&denied.body) {
                body.remove("decision_id");
                denied.body = serde_json::Value::Object(body).to_string();
            }
        }
        _ => {}
    }
    r
}

#[tokio::test]
async fn caches_never_change_a_decision() {
    // The shipped policy: reads the path, method, scopes, subject claims and the chain.
    let (hits, _, uncacheable) =
        compare(&repo().join("policies"), 0x9E37_79B9_7F4A_7C15, 600).await;
    assert!(
        hits > 0,
        "the stream repeats requests, so some are cache hits"
    );
    assert_eq!(uncacheable, 0);

    // A policy that reads one header: x-noise varies, x-tier decides.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
         allow := {\"allowed\": true, \"headers\": {\"x-seen-tier\": tier}} if {\n\
           tier := input.attributes.request.http.headers[\"x-tier\"]\n  tier != \"silver\"\n}\n",
    )
    .expect("write");
    for seed in [1u64, 2, 3] {
        let (hits, _, _) = compare(dir.path(), seed, 300).await;
        assert!(hits > 0, "seed {seed}");
    }

    // OPA-Envoy's style: the request under a name, read through it, a helper function and
    // object.get. Only x-tier, the method and the path count, not the fresh x-request-id.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\n\
         http_request := input.attributes.request.http\nheaders := http_request.headers\n\
         default allow := false\n\
         allow if {\n  http_request.method == \"GET\"\n  gold(headers)\n}\n\
         allow if {\n  object.get(headers, \"x-tier\", \"none\") == \"silver\"\n  input.parsed_path[0] == \"flights\"\n}\n\
         gold(h) if h[\"x-tier\"] == \"gold\"\n",
    )
    .expect("write");
    for seed in [4u64, 5] {
        let (hits, misses, _) = compare(dir.path(), seed, 300).await;
        assert!(hits > misses, "seed {seed}: {hits} hits, {misses} misses");
    }

    // A policy that reads the clock: never cached, still the same answers.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\nallow if {\n  time.now_ns() > 0\n  input.parsed_path[0] == \"flights\"\n}\n",
    )
    .expect("write");
    let (hits, misses, uncacheable) = compare(dir.path(), 7, 200).await;
    assert_eq!(
        (hits, misses),
        (0, 0),
        "a policy reading time is never cached"
    );
    assert!(uncacheable > 0);
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_its_cached_tokens() {
    let idp = IdpServer::start(&["rsa-1", "rsa-2"]).await;
    let s = Sidecar::start(&config_yaml(&remote_issuer(&idp))).await;
    s.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read_bookings"),
    );
    let other = sign(
        "rsa-2",
        &delegation(&idp.issuer(), &["travel-agent"], "read_bookings"),
    );
    assert_eq!(s.check_token("GET", "/flights", &token).await.status, 200);
    assert_eq!(
        s.check_token("GET", "/flights", &token).await.status,
        200,
        "from the cache"
    );
    assert_eq!(s.check_token("GET", "/flights", &other).await.status, 200);
    let verifier = s.running.authorizer.verifier();
    let cache = verifier.token_cache().expect("token cache on by default");
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 2);

    idp.set_keys(&["rsa-2"]);
    for issuer in verifier.issuers() {
        assert!(issuer.refresh(true).await);
    }
    cache.run_pending_tasks();
    assert_eq!(
        cache.entry_count(),
        1,
        "rsa-1's token was dropped, rsa-2's kept"
    );
    let r = s.check_token("GET", "/flights", &token).await;
    assert_eq!(
        r.status, 401,
        "the same token string, no longer accepted: {}",
        r.body
    );
    assert_eq!(s.check_token("GET", "/flights", &other).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_new_revision_is_never_answered_from_the_old_cache() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = Sidecar::start(&config_yaml(&remote_issuer(&idp))).await;
    s.wait_ready().await;
    let token = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read_bookings"),
    );
    assert_eq!(s.check_token("GET", "/flights", &token).await.status, 200);
    assert_eq!(s.check_token("GET", "/flights", &token).await.status, 200);
    let (hits, _, _) = s.running.authorizer.metrics().decision_cache();
    assert_eq!(hits, 1, "the second answer came from the cache");

    let mut files = BTreeMap::new();
    files.insert(
        "authz.rego".to_string(),
        b"package envoy.authz\nimport rego.v1\nallow := false\n".to_vec(),
    );
    let store = s.running.authorizer.policies();
    store
        .activate(Bundle::from_files(files).expect("bundle"))
        .await
        .expect("activates");
    assert_eq!(s.check_token("GET", "/flights", &token).await.status, 403);
    let (hits, _, _) = s.running.authorizer.metrics().decision_cache();
    assert_eq!(hits, 1, "no hit across revisions");
    s.stop().await;
}
