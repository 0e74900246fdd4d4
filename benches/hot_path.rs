//! Micro-benchmarks of the request path, each part alone and whole:
//!
//!     cargo bench --bench hot_path
//!
//! Figures and how they compare live in docs/benchmarks.md. Heap allocations per Check are
//! counted by a wrapper around the system allocator and printed before the Check benchmarks
//! (the count costs every allocation an atomic increment, in every benchmark here).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use onbehalf::config::{Config, Source};
use onbehalf::input::CheckInput;
use onbehalf::pipeline::Authorizer;
use serde_json::json;

const ISS: &str = "https://idp.bench";

/// The system allocator, counting allocations and the bytes asked for.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Mean allocations and bytes allocated per call of `f` over `n` calls.
fn allocations(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    let (count, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        f();
    }
    let count = ALLOCATIONS.load(Ordering::Relaxed) - count;
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes;
    (count as f64 / n as f64, bytes as f64 / n as f64)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn token(kid: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({"iss": ISS, "aud": "service-b", "sub": "alice", "employee": true,
                        "exp": exp, "scope": "book_flight",
                        "act": {"sub": "travel-agent", "act": {"sub": "orchestrator"}}});
    onbehalf::testing::sign_fixture(kid, &claims).expect("sign")
}

fn request(token: &str) -> CheckRequest {
    let headers = [
        ("content-type", "application/json"),
        ("user-agent", "agent-sdk/1.0"),
        ("x-request-id", "3f1c0a8e-8a6e-4c38-9b0e-6d1f2f7a9c11"),
    ];
    onbehalf::cli::check::RequestSpec {
        method: "POST".into(),
        path: "/flights/bookings?seat=12A".into(),
        host: Some("service-b".into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        token: Some(token.into()),
        body: None,
    }
    .to_check_request("authorization")
}

fn authorizer(rt: &tokio::runtime::Runtime, dir: &tempfile::TempDir, caches: bool) -> Authorizer {
    let jwks = dir.path().join("jwks.json");
    let keys: Vec<serde_json::Value> = ["rsa-1", "ec-1", "ed-1"]
        .iter()
        .map(|k| {
            let text = std::fs::read_to_string(repo().join(format!("tests/fixtures/{k}.jwk.json")))
                .expect("jwk");
            serde_json::from_str(&text).expect("json")
        })
        .collect();
    std::fs::write(&jwks, json!({ "keys": keys }).to_string()).expect("write jwks");
    let yaml = format!(
        "policy:\n  dir: {}\ncache:\n  tokens:\n    enabled: {caches}\n    ttl: 5m\n  decisions:\n    enabled: {caches}\n    ttl: 1m\n\
         authn:\n  issuers:\n    - issuer: {ISS}\n      audiences: [service-b]\n      jwks_file: {}\n",
        repo().join("policies").display(),
        jwks.display()
    );
    let config = Config::from_yaml(
        &Source::Embedded,
        &yaml,
        std::iter::empty::<(String, String)>(),
    )
    .expect("config");
    let (authorizer, source) = onbehalf::app::build_authorizer(&config).expect("build");
    rt.block_on(onbehalf::app::load_once(&authorizer, &source, &config))
        .expect("load");
    authorizer
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let dir = tempfile::tempdir().expect("tmp");
    let uncached = authorizer(&rt, &dir, false);
    let cached = authorizer(&rt, &dir, true);

    let mut verify = c.benchmark_group("verify");
    for (name, kid) in [("rs256", "rsa-1"), ("es256", "ec-1"), ("eddsa", "ed-1")] {
        let t = token(kid);
        verify.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(uncached.verifier().verify(black_box(&t)))
                    .expect("valid")
            })
        });
    }
    let t = token("rsa-1");
    rt.block_on(cached.verifier().verify(&t)).expect("valid");
    verify.bench_function("token_cache_hit", |b| {
        b.iter(|| {
            rt.block_on(cached.verifier().verify(black_box(&t)))
                .expect("valid")
        })
    });
    verify.finish();

    let req = request(&t);
    let auth = rt
        .block_on(uncached.verifier().verify(&t))
        .expect("valid")
        .auth;
    c.bench_function("input/build", |b| {
        b.iter(|| {
            let input = CheckInput::try_from(black_box(&req)).expect("input");
            input.document(auth.parts().expect("parts"))
        })
    });

    let snapshot = uncached.policies().load().expect("policy");
    let document = CheckInput::try_from(&req)
        .expect("input")
        .document(auth.parts().expect("parts"));
    c.bench_function("policy/evaluate_default", |b| {
        b.iter(|| {
            snapshot
                .policies
                .evaluate(
                    black_box(document.clone()),
                    // The whole limit: a 1 ms slice can be lost to preemption on a busy machine.
                    onbehalf::policy::Budget::Full(std::time::Duration::from_millis(100)),
                )
                .expect("eval")
        })
    });
    // What the time limit costs (the clock read every few dozen VM steps, the timer set per
    // evaluation): the same evaluation with no limit at all.
    c.bench_function("policy/evaluate_untimed", |b| {
        b.iter(|| {
            snapshot
                .policies
                .evaluate_untimed(black_box(document.clone()))
                .expect("eval")
        })
    });
    let paths = &snapshot.policies.reads().input_paths;
    let input = CheckInput::try_from(&req).expect("input");
    c.bench_function("decision_cache/key", |b| {
        b.iter(|| onbehalf::key::decision_key(1, paths, black_box(&input), Some(&auth), &mut None))
    });

    rt.block_on(onbehalf::grpc::respond(&cached, &req));
    for (name, authorizer) in [("no_caches", &uncached), ("caches_warm", &cached)] {
        let (count, bytes) = allocations(1000, || {
            black_box(rt.block_on(onbehalf::grpc::respond(authorizer, &req)));
        });
        eprintln!(
            "check_in_process/{name}: {count:.1} heap allocations, {bytes:.0} bytes per Check"
        );
    }
    let mut check = c.benchmark_group("check_in_process");
    check.bench_function("no_caches", |b| {
        b.iter(|| rt.block_on(onbehalf::grpc::respond(&uncached, black_box(&req))))
    });
    rt.block_on(onbehalf::grpc::respond(&cached, &req));
    check.bench_function("caches_warm", |b| {
        b.iter(|| rt.block_on(onbehalf::grpc::respond(&cached, black_box(&req))))
    });
    check.finish();

    // Minting: one fresh ES256 token (claims copied from the verified token, signed), and a
    // reuse of the token minted for the same decision.
    let mint = |reuse: bool| {
        let config = onbehalf::config::MintConfig {
            enabled: true,
            issuer: "https://sidecar.bench".into(),
            reuse,
            ..Default::default()
        };
        onbehalf::mint::Minter::new(&config).expect("minter")
    };
    let grant = onbehalf::policy::Grant {
        scopes: vec!["book_flight".into()],
        audience: vec!["service-b".into()],
        ttl: None,
    };
    let digest = onbehalf::cache::token_digest(&t);
    let mint_request = onbehalf::mint::MintRequest {
        auth: &auth,
        grant: &grant,
        generation: 1,
        token_digest: Some(&digest),
        request_id: Some("3f1c0a8e-8a6e-4c38-9b0e-6d1f2f7a9c11"),
        method: "POST",
        path: "/flights/bookings",
        source: None,
        route_audience: None,
    };
    let (fresh, reusing) = (mint(false), mint(true));
    let mut group = c.benchmark_group("mint");
    group.bench_function("es256_fresh", |b| {
        b.iter(|| fresh.mint(black_box(&mint_request)).expect("mint"))
    });
    reusing.mint(&mint_request).expect("mint");
    group.bench_function("reused", |b| {
        b.iter(|| reusing.mint(black_box(&mint_request)).expect("mint"))
    });
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
