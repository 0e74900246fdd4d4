//! The policy lifecycle: bundles from a real HTTP server, a watched directory with a
//! ConfigMap-style symlink swap, signed bundles from `onbehalf policy build`, swaps under
//! load, and evaluation limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use onbehalf::policy::Bundle;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::common::*;

/// A policy allowing GET /flights for everyone verified, tagged with its revision.
fn allow_rego(rev: &str) -> String {
    format!(
        "package envoy.authz\nimport rego.v1\ndefault allow := {{\"allowed\": false, \"body\": \"denied by {rev}\"}}\n\
         allow := {{\"allowed\": true, \"headers\": {{\"x-rev\": \"{rev}\"}}}} if input.parsed_path == [\"flights\"]\n"
    )
}

/// A policy denying everything, its denial tagged with its revision.
fn deny_rego(rev: &str) -> String {
    format!(
        "package envoy.authz\nimport rego.v1\nallow := {{\"allowed\": false, \"body\": \"denied by {rev}\"}}\n"
    )
}

fn bundle(rev: &str, rego: &str) -> Bundle {
    let mut files = BTreeMap::new();
    files.insert(
        ".manifest".to_string(),
        format!("{{\"revision\": \"{rev}\"}}").into_bytes(),
    );
    files.insert("authz.rego".to_string(), rego.as_bytes().to_vec());
    Bundle::from_files(files).expect("bundle")
}

/// Which revision answered: `allow:<rev>` or `deny:<rev>`.
fn answered_by(r: &Reply) -> String {
    match r.status {
        200 => format!("allow:{}", r.header("x-rev").unwrap_or("?")),
        403 => format!("deny:{}", r.body.trim_start_matches("denied by ")),
        other => format!("status {other}: {}", r.body),
    }
}

async fn status(s: &Sidecar) -> Value {
    reqwest::get(format!("http://{}/v1/status", s.running.admin_addr))
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Waits (bounded) until `/v1/status` satisfies `done`, and returns it.
async fn wait_status(s: &Sidecar, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut st = Value::Null;
    for _ in 0..200 {
        st = status(s).await;
        if done(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: {st}");
}

/// Waits until `/v1/status` reports a policy error containing `needle`.
async fn wait_for_error(s: &Sidecar, needle: &str) -> Value {
    wait_status(s, &format!("no policy error containing {needle:?}"), |st| {
        st["policy"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains(needle)
    })
    .await
}

/// Polls `check` until it says `want` (bounded), returning the last answer.
async fn eventually(s: &Sidecar, token: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        last = answered_by(&s.check_token("GET", "/flights", token).await);
        if last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

/// A real HTTP bundle server with ETags, whose bundle and availability tests control.
struct BundleServer {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<Served>>,
    not_modified: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

struct Served {
    body: Vec<u8>,
    etag: String,
    up: bool,
}

impl BundleServer {
    async fn start(body: Vec<u8>) -> BundleServer {
        let (listener, addr) = bind().await;
        let state = Arc::new(Mutex::new(Served {
            body,
            etag: "\"v1\"".into(),
            up: true,
        }));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/bundles/authz.tar.gz", get(serve_bundle))
            .with_state((state.clone(), not_modified.clone()));
        let stop = serve(listener, app);
        BundleServer {
            addr,
            state,
            not_modified,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/bundles/authz.tar.gz", self.addr)
    }

    fn serve(&self, body: Vec<u8>, etag: &str) {
        let mut s = self.state.lock().expect("lock");
        s.body = body;
        s.etag = format!("\"{etag}\"");
    }

    fn set_up(&self, up: bool) {
        self.state.lock().expect("lock").up = up;
    }
}

type ServerState = (Arc<Mutex<Served>>, Arc<AtomicUsize>);

async fn serve_bundle(
    State((state, not_modified)): State<ServerState>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some("Bearer bundle-secret")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let s = state.lock().expect("lock");
    if !s.up {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(s.etag.as_str())
    {
        not_modified.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    ([(header::ETAG, s.etag.clone())], s.body.clone()).into_response()
}

fn config_with_policy(idp: &IdpServer, policy: &str) -> String {
    config_yaml(&remote_issuer(idp)).replace(
        &format!("policy:\n  dir: {}\n", repo().join("policies").display()),
        &format!("policy:\n{policy}"),
    )
}

fn token(idp: &IdpServer) -> String {
    sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "read_bookings"),
    )
}

#[tokio::test]
async fn http_bundle_server_lifecycle() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let server =
        BundleServer::start(bundle("r1", &allow_rego("r1")).to_tar_gz().expect("tar")).await;
    let yaml = config_with_policy(
        &idp,
        &format!(
            "  bundle_url: {}\n  poll_interval: 100ms\n  max_backoff: 200ms\n  bearer_token: bundle-secret\n",
            server.url()
        ),
    );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let t = token(&idp);
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "allow:r1"
    );

    // Unchanged: the server answers 304 to the ETag, nothing is re-activated.
    for _ in 0..100 {
        if server.not_modified.load(Ordering::Relaxed) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        server.not_modified.load(Ordering::Relaxed) >= 2,
        "polls send If-None-Match"
    );
    assert_eq!(status(&s).await["policy"]["activations"], 1);

    // A new revision is activated.
    server.serve(
        bundle("r2", &deny_rego("r2")).to_tar_gz().expect("tar"),
        "v2",
    );
    assert_eq!(eventually(&s, &t, "deny:r2").await, "deny:r2");
    let st = status(&s).await;
    assert_eq!(st["policy"]["revision"], "r2");
    assert_eq!(st["policy"]["source"], server.url());
    assert!(st["policy"]["last_activation"].is_string());

    // Server down: failures are recorded, r2 keeps serving.
    server.set_up(false);
    let failures_before = st["policy"]["failures"].as_u64().expect("count");
    let st = wait_status(&s, "the failed poll is reported", |st| {
        st["policy"]["failures"].as_u64().unwrap_or(0) > failures_before
    })
    .await;
    assert!(
        st["policy"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("503"),
        "{st}"
    );
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "deny:r2"
    );
    server.set_up(true);

    // A corrupt bundle is refused; r2 keeps serving; the metric says the last load failed.
    server.serve(b"\x1f\x8b garbage".to_vec(), "v3");
    wait_for_error(&s, "not a valid .tar.gz").await;
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "deny:r2"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("onbehalf_policy_last_load_ok 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("onbehalf_policy_revision_info{revision=\"r2\""),
        "{metrics}"
    );

    // A bundle that compiles badly is refused too, naming the file.
    server.serve(
        bundle("r4", "package envoy.authz\nallow if {")
            .to_tar_gz()
            .expect("tar"),
        "v4",
    );
    wait_for_error(&s, "authz.rego").await;
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "deny:r2"
    );
    s.stop().await;
}

#[tokio::test]
async fn signed_bundles_from_policy_build_are_verified() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("bundle.tar.gz");
    let build = |revision: &str, key: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_onbehalf"))
            .args(["policy", "build"])
            .arg(repo().join("policies"))
            .arg("-o")
            .arg(&archive)
            .args(["--revision", revision, "--key-id", "release"])
            .arg("--signing-key")
            .arg(fixture(key))
            .output()
            .expect("run policy build");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    build("release-1", "rsa-1.pem");
    let yaml = config_with_policy(
        &idp,
        &format!(
            "  bundle_file: {}\n  signing:\n    required: true\n    keys:\n      - id: release\n        algorithm: RS256\n        public_key_file: {}\n",
            archive.display(),
            fixture("rsa-1.pub.pem").display()
        ),
    );
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let t = sign(
        "rsa-1",
        &delegation(&idp.issuer(), &["travel-agent"], "book_flight"),
    );
    assert_eq!(
        s.check_token("POST", "/flights/bookings", &t).await.status,
        200,
        "the shipped policy, from the bundle"
    );
    assert_eq!(status(&s).await["policy"]["revision"], "release-1");

    // The watched file is rebuilt, signed by a key that is not trusted: refused.
    build("release-2", "rsa-2.pem");
    wait_for_error(&s, "signature").await;
    assert_eq!(status(&s).await["policy"]["revision"], "release-1");

    // Signed again with the trusted key: activated.
    build("release-3", "rsa-1.pem");
    wait_status(&s, "release-3 is activated", |st| {
        st["policy"]["revision"] == "release-3"
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn unsigned_bundle_is_refused_when_signing_is_required() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("bundle.tar.gz");
    std::fs::write(
        &archive,
        bundle("u1", &allow_rego("u1")).to_tar_gz().expect("tar"),
    )
    .expect("write");
    let yaml = config_with_policy(
        &idp,
        &format!(
            "  bundle_file: {}\n  signing:\n    required: true\n    keys:\n      - id: release\n        public_key_file: {}\n",
            archive.display(),
            fixture("rsa-1.pub.pem").display()
        ),
    );
    let s = Sidecar::start(&yaml).await;
    let readyz = format!("http://{}/readyz", s.running.admin_addr);
    let mut text = String::new();
    for _ in 0..100 {
        let resp = reqwest::get(&readyz).await.expect("readyz");
        assert_eq!(resp.status(), 503, "never ready with an unsigned bundle");
        text = resp.text().await.expect("text");
        if text.contains("not signed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(text.contains("not signed"), "{text}");
    assert_eq!(
        s.check_token("GET", "/flights", &token(&idp)).await.status,
        503
    );
    s.stop().await;
}

/// Lays out `rego` the way the kubelet mounts a ConfigMap: files are symlinks into `..data`,
/// itself a symlink to a timestamped folder, swapped with one rename.
fn configmap_publish(mount: &Path, version: &str, rego: &str) {
    let folder = mount.join(format!("..{version}"));
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("authz.rego"), rego).expect("write");
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, mount.join("..data")).expect("swap ..data");
    let file = mount.join("authz.rego");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/authz.rego", &file).expect("symlink file");
    }
}

#[tokio::test]
async fn directory_reload_with_a_configmap_symlink_swap() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let mount = tempfile::tempdir().expect("tmp");
    configmap_publish(mount.path(), "2026_01", &allow_rego("cm1"));
    let yaml = config_with_policy(&idp, &format!("  dir: {}\n", mount.path().display()));
    let s = Sidecar::start(&yaml).await;
    s.wait_ready().await;
    let t = token(&idp);
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "allow:cm1"
    );

    configmap_publish(mount.path(), "2026_02", &deny_rego("cm2"));
    std::fs::remove_dir_all(mount.path().join("..2026_01")).expect("old folder removed");
    assert_eq!(eventually(&s, &t, "deny:cm2").await, "deny:cm2");

    // A broken update keeps the last good policy.
    configmap_publish(mount.path(), "2026_03", "package envoy.authz\nallow if {\n");
    wait_for_error(&s, "authz.rego").await;
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &t).await),
        "deny:cm2"
    );
    s.stop().await;
}

#[tokio::test]
async fn first_load_failing_keeps_not_ready_until_fixed() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nallow if {\n",
    )
    .expect("write");
    let yaml = config_with_policy(&idp, &format!("  dir: {}\n", dir.path().display()));
    let s = Sidecar::start(&yaml).await;
    let readyz = format!("http://{}/readyz", s.running.admin_addr);
    let mut text = String::new();
    for _ in 0..100 {
        let resp = reqwest::get(&readyz).await.expect("readyz");
        assert_eq!(resp.status(), 503);
        text = resp.text().await.expect("text");
        if text.contains("authz.rego") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        text.contains("authz.rego"),
        "/readyz names the broken file: {text}"
    );
    std::fs::write(dir.path().join("authz.rego"), allow_rego("fixed")).expect("write");
    s.wait_ready().await;
    assert_eq!(
        answered_by(&s.check_token("GET", "/flights", &token(&idp)).await),
        "allow:fixed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_never_mix_revisions() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let s = Arc::new(Sidecar::start(&config_yaml(&remote_issuer(&idp))).await);
    s.wait_ready().await;
    let store = s.running.authorizer.policies().clone();
    // Odd generations will be revision A (allows), even ones B (denies).
    let a = bundle("A", &allow_rego("A"));
    let b = bundle("B", &deny_rego("B"));
    store.activate(a.clone()).await.expect("A");
    let base = store.load().expect("active").generation;
    let expect = move |generation: u64| match (generation - base) % 2 {
        0 => "allow:A",
        _ => "deny:B",
    };

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (s, store, done, t) = (s.clone(), store.clone(), done.clone(), token(&idp));
        clients.push(tokio::spawn(async move {
            let mut answers = 0usize;
            while !done.load(Ordering::Relaxed) {
                let before = store.load().expect("active").generation;
                let reply = s.check_token("GET", "/flights", &t).await;
                let after = store.load().expect("active").generation;
                let got = answered_by(&reply);
                let possible: Vec<&str> = (before..=after).map(expect).collect();
                assert!(
                    possible.contains(&got.as_str()),
                    "answer {got} while generations {before}..={after} were active"
                );
                answers += 1;
            }
            answers
        }));
    }
    for i in 0..100 {
        let next = if i % 2 == 0 { b.clone() } else { a.clone() };
        assert!(store.activate(next).await.expect("activates"), "swap {i}");
        // The switch is seen at once: a request started after the swap gets the new revision.
        let now = store.load().expect("active").generation;
        let reply = s.check_token("GET", "/flights", &token(&idp)).await;
        if store.load().expect("active").generation == now {
            assert_eq!(answered_by(&reply), expect(now), "right after swap {i}");
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task");
    }
    assert!(total > 0);
    assert_eq!(
        store.status().activations,
        102,
        "the default policy, A, and 100 swaps"
    );
}

/// A policy that answers `/flights` at once and runs 25 million steps for `/slow`.
const SLOW_POLICY: &str = "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
     allow if input.parsed_path == [\"flights\"]\n\
     allow if {\n  input.parsed_path == [\"slow\"]\n  count(products) < 0\n}\n\
     products contains x * y if {\n  some x in numbers.range(1, 5000)\n  some y in numbers.range(1, 5000)\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_evaluation_is_cut_off_and_denied() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("authz.rego"), SLOW_POLICY).expect("write");
    let yaml = config_with_policy(
        &idp,
        &format!("  dir: {}\n  eval_timeout: 50ms\n", dir.path().display()),
    );
    let s = Arc::new(Sidecar::start(&yaml).await);
    s.wait_ready().await;
    let t = token(&idp);
    let slow = {
        let (s, t) = (s.clone(), t.clone());
        tokio::spawn(async move { s.check_token("GET", "/slow", &t).await })
    };
    // Other requests are answered meanwhile.
    let fast = s.check_token("GET", "/flights", &t).await;
    assert_eq!(fast.status, 200);
    let slow = slow.await.expect("slow request");
    assert_eq!(slow.status, 403, "{}", slow.body);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("onbehalf_decisions_total{decision=\"deny\",reason=\"eval_timeout\"} 1"),
        "{metrics}"
    );
}

/// p99 of `samples` (the 198th of 200, sorted).
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() * 99 / 100 - 1]
}

/// Latencies of 200 ordinary Checks on the sidecar's one connection, one started every 2 ms
/// (so they span a slow evaluation's 400 ms), each awaited on its own.
async fn ordinary_latencies(s: &Arc<Sidecar>, t: &str) -> Vec<Duration> {
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    let mut requests = Vec::with_capacity(200);
    for _ in 0..200 {
        pace.tick().await;
        let (s, t) = (s.clone(), t.to_string());
        requests.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            let reply = s.check_token("GET", "/flights", &t).await;
            assert_eq!(reply.status, 200);
            start.elapsed()
        }));
    }
    let mut samples = Vec::with_capacity(200);
    for r in requests {
        samples.push(r.await.expect("ordinary request"));
    }
    samples
}

/// One serving thread, one connection: while one request evaluates up to its deadline, the
/// requests sharing its connection and thread are answered at their usual latency — the slow
/// evaluation moves off the serving thread after `policy.inline_budget`. It compares
/// latencies, so `scripts/test.sh` runs it alone; beside other tests the machine's noise
/// would be measured too. With the evaluation kept on the serving thread, the p99 measured
/// here was 529 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_evaluation_does_not_stall_its_neighbours() {
    let idp = IdpServer::start(&["rsa-1"]).await;
    let dir = tempfile::tempdir().expect("tmp");
    // Slow by computation alone (25 million comparisons, nothing kept): a policy that also
    // fills memory makes every thread wait on the process's page tables, which is another
    // matter (bounded by eval_timeout like this one).
    std::fs::write(
        dir.path().join("authz.rego"),
        "package envoy.authz\nimport rego.v1\ndefault allow := false\n\
         allow if input.parsed_path == [\"flights\"]\n\
         allow if {\n  input.parsed_path == [\"slow\"]\n  some x in numbers.range(1, 5000)\n  \
         some y in numbers.range(1, 5000)\n  x * y == -1\n}\n",
    )
    .expect("write");
    let yaml = config_with_policy(
        &idp,
        &format!("  dir: {}\n  eval_timeout: 400ms\n", dir.path().display()),
    )
    .replace(
        "  shutdown_grace: 2s\n",
        "  shutdown_grace: 2s\n  worker_threads: 1\n",
    ) + "cache:\n  decisions:\n    enabled: false\n";
    let s = Arc::new(Sidecar::start(&yaml).await);
    s.wait_ready().await;
    let t = token(&idp);
    // Warm up (first evaluation sets up the thread's VM), then the baseline.
    ordinary_latencies(&s, &t).await;
    let base = p99(&mut ordinary_latencies(&s, &t).await);

    let slow = {
        let (s, t) = (s.clone(), t.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let reply = s.check_token("GET", "/slow", &t).await;
            (reply, start.elapsed())
        })
    };
    let started = std::time::Instant::now();
    let mut during = ordinary_latencies(&s, &t).await;
    let ordinary_took = started.elapsed();
    let (reply, slow_took) = slow.await.expect("slow request");
    assert_eq!(reply.status, 403, "{}", reply.body);
    // The slow request ran to its deadline while the others were answered: they overlapped.
    assert!(
        slow_took >= Duration::from_millis(350),
        "the slow evaluation stopped early ({slow_took:?}): nothing to measure"
    );
    let with_slow = p99(&mut during);
    // Kept on the serving thread, the neighbours wait out the whole evaluation (p99 529 ms
    // measured); moved off after its slice, they wait for a scheduler tick or two. A tenth of
    // the evaluation tells the two apart on a loaded 2-core machine (12.7 ms seen in CI),
    // where a fixed few milliseconds over the baseline did not.
    assert!(
        with_slow <= base + slow_took / 10,
        "p99 of 200 ordinary requests on the slow one's connection: {with_slow:?} with it, \
         {base:?} without (the 200 took {ordinary_took:?}; the slow one {slow_took:?})"
    );
    eprintln!(
        "head-of-line: ordinary p99 {with_slow:?} beside a {slow_took:?} evaluation, {base:?} alone"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("onbehalf_policy_evaluations_moved_total 1"),
        "{metrics}"
    );
}

/// The builtins regorus lacks, probed on the shipped build: a policy calling every builtin
/// OPA offers (`tests/fixtures/opa-builtins.txt`) is loaded, and the functions onbehalf refuses
/// as unknown must be exactly the list in docs/migrating-from-opa-envoy.md.
#[test]
fn the_migration_guide_lists_exactly_the_builtins_regorus_lacks() {
    let names: Vec<String> = std::fs::read_to_string(fixture("opa-builtins.txt"))
        .expect("builtins")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    assert!(names.len() > 150, "{}", names.len());
    let mut rego = String::from("package probe\nimport rego.v1\n");
    for (i, name) in names.iter().enumerate() {
        rego.push_str(&format!("r{i} if {name}(input.x)\n"));
    }
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("probe.rego"), rego).expect("write");
    let lacking: Vec<String> =
        match onbehalf::policy::PolicySet::load_dir(dir.path(), "data.probe.r0") {
            Err(onbehalf::policy::PolicyError::UnknownFunctions(calls)) => {
                calls.into_iter().map(|c| c.name).collect()
            }
            Err(e) => panic!("the probe policy failed otherwise: {e}"),
            Ok(_) => Vec::new(),
        };
    let guide =
        std::fs::read_to_string(repo().join("docs/migrating-from-opa-envoy.md")).expect("guide");
    let documented: Vec<String> = guide
        .lines()
        .skip_while(|l| !l.contains("builtins-probe:start"))
        .take_while(|l| !l.contains("builtins-probe:end"))
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect();
    assert_eq!(
        documented,
        lacking,
        "docs/migrating-from-opa-envoy.md's list differs from the probe; the probe found:\n{}",
        lacking
            .iter()
            .map(|n| format!("- `{n}`"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
