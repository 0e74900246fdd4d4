//! Load tool: sends Envoy `Check` requests over real gRPC and reports throughput, latency and
//! decision correctness; also runs the no-op ext_authz server that sets the ceiling.
//!
//!     onbehalf-load noop --listen 127.0.0.1:9292
//!     onbehalf-load run --target 127.0.0.1:9191 --corpus hot --duration 10s
//!     onbehalf-load tokens --count 100000 > tokens.txt   # the cold corpus' tokens, for wrk
//!
//! Every run is bounded in time and count, and ends with one JSON line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::rpc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(
    name = "onbehalf-load",
    about = "Load generator and no-op ext_authz server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An ext_authz server that answers OK without any work: the ceiling for comparisons.
    Noop {
        #[arg(long, default_value = "127.0.0.1:9292")]
        listen: SocketAddr,
        /// Serving threads (0: one per core), as `server.worker_threads` of onbehalf.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Send Check requests from a corpus and report.
    Run(RunArgs),
    /// Print the cold corpus' first `count` tokens, one per line (for a load through Envoy).
    Tokens {
        #[arg(long)]
        count: usize,
        #[command(flatten)]
        signer: SignerArgs,
    },
}

/// Who signs the corpus' tokens.
#[derive(clap::Args)]
struct SignerArgs {
    /// Issuer the tokens name.
    #[arg(long, default_value = "https://idp.bench")]
    issuer: String,
    /// RS256 signing key (PEM) and its kid.
    #[arg(long, default_value = "tests/fixtures/rsa-1.pem")]
    key: PathBuf,
    #[arg(long, default_value = "rsa-1")]
    kid: String,
}

#[derive(Parser)]
struct RunArgs {
    /// The ext_authz server.
    #[arg(long, default_value = "127.0.0.1:9191")]
    target: SocketAddr,
    /// hot: 100 distinct tokens repeated; cold: every request a token never seen before.
    #[arg(long, value_enum, default_value = "hot")]
    corpus: Corpus,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over (Envoy uses a few).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Stop after this long...
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// ...or after this many requests (the cold corpus pre-signs this many tokens).
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Untimed requests sent first.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Distinct tokens of the cold corpus, cycled (default: one per request, none repeated).
    #[arg(long)]
    corpus_size: Option<usize>,
    /// Break the signature of every Nth token (0: none): those are answered 401.
    #[arg(long, default_value_t = 0)]
    forged_every: usize,
    /// Also print, on stderr, the latency of every second of the run (p50, p99, max):
    /// when in a soak the slow requests happen.
    #[arg(long)]
    timeline: bool,
    #[command(flatten)]
    signer: SignerArgs,
    /// Stamp every request with a fresh `x-request-id` (and request id), as Envoy does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    request_ids: bool,
    /// Check every answer against the decision the corpus expects (off for the no-op server).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    expect: bool,
    /// Requests per second in all, spread evenly over the workers (0: as fast as they go).
    /// A fixed rate is for soaks: the server is loaded, not saturated, and its latency and
    /// memory are watched over time.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label for the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Corpus {
    Hot,
    Cold,
}

/// One request of the corpus and the status it should get.
struct Case {
    request: CheckRequest,
    expect: i32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<onbehalf::config::Interval>().map(|d| d.0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The no-op server serves on threads of its own, as `onbehalf serve` does.
    let threads = match &cli.command {
        Command::Run(args) => args.threads.max(1),
        Command::Noop { .. } | Command::Tokens { .. } => 1,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onbehalf-load: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Noop { listen, threads } => rt.block_on(noop(listen, threads)),
        Command::Run(args) => rt.block_on(run(args)),
        Command::Tokens { count, signer } => print_tokens(count, &signer),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onbehalf-load: {e:#}");
            ExitCode::from(1)
        }
    }
}

// === the no-op server ===

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        }))
    }
}

async fn noop(listen: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("no-op ext_authz server on {}", listener.local_addr()?);
    // Accepted and served as onbehalf serves them (TCP_NODELAY, the same serving threads),
    // so the ceiling compares.
    let incoming = onbehalf::app::tcp_incoming(listener);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let workers = onbehalf::serving::count(threads);
    onbehalf::serving::serve(
        workers,
        incoming,
        || tonic::transport::Server::builder().add_service(AuthorizationServer::new(Noop)),
        stopped,
    )
    .await
}

// === the load generator ===

/// The CheckRequest Envoy would send for an agent's call, built as `onbehalf check` builds it.
fn request(token: &str, method: &str, path: &str) -> CheckRequest {
    onbehalf::cli::check::RequestSpec {
        method: method.into(),
        path: path.into(),
        host: Some("service-b".into()),
        headers: [("user-agent".to_string(), "agent-sdk/1.0".to_string())].into(),
        token: Some(token.into()),
        body: None,
    }
    .to_check_request("authorization")
}

/// Case `i`: four in five allowed (a travel agent booking for an employee), one in five
/// denied by policy (an agent without the capability). `i` is in the subject and in a scope,
/// which the shipped policy reads: every token is new to the token cache, and every request
/// new to the decision cache (verify and evaluate each time).
fn case(i: usize, token: &str) -> Case {
    let allowed = !i.is_multiple_of(5);
    Case {
        request: request(token, "POST", "/flights/bookings"),
        expect: if allowed { 200 } else { 403 },
    }
}

/// Case `i` with its token's signature broken: a 401.
fn forged(token: &str) -> Case {
    let mut forged = token.to_string();
    // The last signature character changes; the header and claims stay readable.
    let last = if forged.ends_with('A') { "B" } else { "A" };
    forged.pop();
    forged.push_str(last);
    Case {
        request: request(&forged, "POST", "/flights/bookings"),
        expect: 401,
    }
}

/// The token of case `i`.
fn token(i: usize, issuer: &str, key: &EncodingKey, kid: &str) -> anyhow::Result<String> {
    let allowed = !i.is_multiple_of(5);
    let actor = if allowed { "travel-agent" } else { "ops-agent" };
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = json!({"iss": issuer, "aud": "service-b", "sub": format!("user-{i}"),
                        "employee": true, "exp": exp, "scope": format!("book_flight trip-{i}"),
                        "act": {"sub": actor}});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

fn print_tokens(count: usize, signer: &SignerArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tokens = sign_all(count, signer, token)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for t in tokens {
        writeln!(out, "{t}")?;
    }
    out.flush()?;
    Ok(())
}

/// Signs `n` cases on every core.
fn corpus(n: usize, args: &RunArgs) -> anyhow::Result<Vec<Case>> {
    let tokens = sign_all(n, &args.signer, token)?;
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match args.forged_every {
            k if k > 0 && i.is_multiple_of(k) => forged(t),
            _ => case(i, t),
        })
        .collect())
}

/// `make(i, ..)` for `i` in `0..n`, on every core.
fn sign_all<T: Send>(
    n: usize,
    signer: &SignerArgs,
    make: fn(usize, &str, &EncodingKey, &str) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let pem = std::fs::read(&signer.key)
        .with_context(|| format!("cannot read {}", signer.key.display()))?;
    let key = EncodingKey::from_rsa_pem(&pem)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(workers).max(1);
    let parts: Vec<anyhow::Result<Vec<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let key = &key;
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| make(i, &signer.issuer, key, &signer.kid))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
            })
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// A fresh request id, in the UUID form Envoy uses, as header and as the request's id.
fn stamp_request_id(request: &mut CheckRequest, i: usize) {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = *RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        run as u32,
        (run >> 32) as u16,
        (i >> 48) & 0xfff,
        (i >> 36) & 0xfff,
        i & 0xffff_ffff_ffff
    );
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.insert("x-request-id".into(), id.clone());
        http.id = id;
    }
}

fn status_of(resp: &CheckResponse) -> i32 {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(403, |s| s.code),
        _ => 0,
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    /// The second of the run each latency was measured in (only with `--timeline`).
    seconds: Vec<u32>,
    allowed: u64,
    denied: u64,
    mismatches: u64,
    errors: u64,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let size = match args.corpus {
        Corpus::Hot => 100,
        Corpus::Cold => args.corpus_size.unwrap_or(args.requests + args.warmup),
    };
    let started = Instant::now();
    let cases = Arc::new(corpus(size, &args)?);
    eprintln!(
        "corpus: {} distinct tokens signed in {:.1}s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel: Channel = Endpoint::try_from(format!("http://{}", args.target))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.target))?;
        channels.push(channel);
    }

    // Warm-up: untimed; the cold corpus uses its first `warmup` tokens here, never again.
    let next = Arc::new(AtomicUsize::new(0));
    let limit = args.warmup;
    drive(&args, &channels, &cases, &next, limit, None).await;

    let deadline = Instant::now() + args.duration;
    let start = Instant::now();
    let limit = args.warmup + args.requests;
    let tally = drive(&args, &channels, &cases, &next, limit, Some(deadline)).await;
    let elapsed = start.elapsed().as_secs_f64();

    if args.timeline {
        print_timeline(&tally);
    }
    let mut lat = tally.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or(0)
    };
    let count = lat.len();
    let report = json!({
        "label": args.label,
        "corpus": match args.corpus { Corpus::Hot => "hot", Corpus::Cold => "cold" },
        "concurrency": args.concurrency,
        "connections": args.connections,
        "requests": count,
        "duration_s": elapsed,
        "throughput_rps": count as f64 / elapsed,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": lat.last().copied().unwrap_or(0),
        "allowed": tally.allowed,
        "denied": tally.denied,
        "mismatches": tally.mismatches,
        "errors": tally.errors,
    });
    eprintln!(
        "{count} requests in {elapsed:.2}s: {:.0} req/s; p50 {}us p90 {}us p99 {}us max {}us; \
         {} allowed, {} denied, {} unexpected, {} errors",
        count as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat.last().copied().unwrap_or(0),
        tally.allowed,
        tally.denied,
        tally.mismatches,
        tally.errors
    );
    println!("{report}");
    if tally.errors > 0 || tally.mismatches > 0 {
        anyhow::bail!(
            "{} errors, {} unexpected decisions",
            tally.errors,
            tally.mismatches
        );
    }
    Ok(())
}

/// One line per second of the run on stderr: requests, p50, p99 and max latency.
fn print_timeline(tally: &Tally) {
    let mut by_second: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for (second, us) in tally.seconds.iter().zip(&tally.latencies_us) {
        by_second.entry(*second).or_default().push(*us);
    }
    for (second, mut lat) in by_second {
        lat.sort_unstable();
        let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        eprintln!(
            "timeline second={second} requests={} p50_us={} p99_us={} max_us={}",
            lat.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

/// Runs `concurrency` workers taking cases from `next` until `limit` or `deadline`.
async fn drive(
    args: &RunArgs,
    channels: &[Channel],
    cases: &Arc<Vec<Case>>,
    next: &Arc<AtomicUsize>,
    limit: usize,
    deadline: Option<Instant>,
) -> Tally {
    let mut workers = Vec::new();
    let started = Instant::now();
    for w in 0..args.concurrency.max(1) {
        let channel = channels[w % channels.len()].clone();
        let (cases, next, expect) = (cases.clone(), next.clone(), args.expect);
        let (request_ids, timeline) = (args.request_ids, args.timeline);
        let mut pace = (args.rate > 0.0).then(|| {
            let workers = args.concurrency.max(1);
            let every = Duration::from_secs_f64(workers as f64 / args.rate);
            // Staggered, so that the workers' requests spread over the interval instead of
            // leaving together in bursts.
            let offset = every.mul_f64(w as f64 / workers as f64);
            let mut pace = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pace
        });
        workers.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::new(channel);
            let mut tally = Tally::default();
            loop {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let case = &cases[i % cases.len()];
                let mut request = case.request.clone();
                if request_ids {
                    stamp_request_id(&mut request, i);
                }
                let t = Instant::now();
                let result = client.check(request).await;
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                match result {
                    Ok(resp) => {
                        let status = status_of(resp.get_ref());
                        match status {
                            200 => tally.allowed += 1,
                            _ => tally.denied += 1,
                        }
                        if expect && status != case.expect {
                            tally.mismatches += 1;
                        }
                    }
                    Err(_) => tally.errors += 1,
                }
                tally.latencies_us.push(us);
                if timeline {
                    let second = t.saturating_duration_since(started).as_secs();
                    tally
                        .seconds
                        .push(u32::try_from(second).unwrap_or(u32::MAX));
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.latencies_us.extend(t.latencies_us);
            total.seconds.extend(t.seconds);
            total.allowed += t.allowed;
            total.denied += t.denied;
            total.mismatches += t.mismatches;
            total.errors += t.errors;
        }
    }
    total
}
