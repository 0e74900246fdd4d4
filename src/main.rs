//! The `onbehalf` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use onbehalf::config::{Config, LogFormat};

/// Policy-governed delegation for AI agents, enforced at the proxy.
///
/// onbehalf answers Envoy's external-authorization checks: it verifies the delegation token
/// (RFC 8693: `sub` is the user, `act` the agent acting for them), and Rego policy decides.
#[derive(Parser)]
#[command(name = "onbehalf", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz gRPC API (default 127.0.0.1:9191) and the admin HTTP port
    /// (default 127.0.0.1:8181: /healthz, /readyz, /metrics).
    ///
    /// Without --config the embedded quickstart defaults are used: policies from ./policies
    /// and the demo issuer's keys from ./deploy/demo/jwks.json. ONBEHALF_* environment
    /// variables override keys (ONBEHALF_SERVER__GRPC_ADDR=unix:/run/onbehalf.sock).
    Serve {
        /// YAML configuration file (see docs/configuration.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decide one request offline, through the same code as `serve`, and print the decision,
    /// the Rego input document and the policy's result as JSON. Exits 0 on allow, 1 on deny.
    Check {
        /// YAML configuration file; the embedded defaults without it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A JSON request description: {"method", "path", "headers", "body", "token"}.
        /// Flags below override its fields.
        #[arg(long, short)]
        request: Option<PathBuf>,
        /// HTTP method (default GET).
        #[arg(long, short)]
        method: Option<String>,
        /// Request path with query string (default /).
        #[arg(long, short)]
        path: Option<String>,
        /// A request header, `name: value`; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Bearer token, sent as `authorization: Bearer <token>`.
        #[arg(long, short, env = "ONBEHALF_CHECK_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Request body.
        #[arg(long)]
        body: Option<String>,
    },
    /// Exchange a user's token and an agent's token for a delegation token (RFC 8693) at a
    /// running exchange (exchange.enabled), and print the issued token with its decoded
    /// header and claims. Exits 0 when a token was issued, 1 when refused.
    Exchange {
        #[command(flatten)]
        args: onbehalf::cli::exchange::ExchangeArgs,
        /// Print only the issued token (for `T=$(onbehalf exchange ... --token-only)`).
        #[arg(long)]
        token_only: bool,
    },
    /// Policy authoring: run Rego tests, build OPA bundles.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule under DIR (OPA's convention), with the directory's data.
    /// Prints PASS/FAIL per test with its file; exits 1 if any test fails.
    Test {
        /// Directory of .rego files (tests included) and data.json files.
        dir: PathBuf,
    },
    /// Build an OPA bundle (.tar.gz) from DIR: policies (tests excluded), data files and a
    /// .manifest, optionally signed. `serve` loads it with policy.bundle_file or bundle_url.
    Build {
        /// Directory of .rego and data.json files.
        dir: PathBuf,
        /// Output file.
        #[arg(long, short)]
        output: PathBuf,
        /// Revision written to .manifest (default: the directory's .manifest, else a content digest).
        #[arg(long)]
        revision: Option<String>,
        /// PEM private key to sign the bundle with (.signatures.json, OPA's format).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Signing algorithm: RS256, PS256, ES256, EdDSA, ...
        #[arg(long, default_value = "RS256")]
        signing_alg: String,
        /// Key id named in the signature; `serve` picks the verification key by it.
        #[arg(long)]
        key_id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` answers checks on threads of its own (`server.worker_threads`); this runtime
    // runs the admin server, the reload tasks and the accept loop.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onbehalf: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("onbehalf: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config.as_deref())?;
            let telemetry = onbehalf::telemetry::init(&config)?;
            let served = onbehalf::app::run(config).await;
            telemetry.shutdown().await;
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            request,
            method,
            path,
            headers,
            token,
            body,
        } => {
            let mut config = load_config(config.as_deref())?;
            // Logs go to stderr in text; the report on stdout stays machine-readable.
            config.log.format = LogFormat::Text;
            if std::env::var_os("RUST_LOG").is_none() {
                config.log.level = "warn".into();
            }
            onbehalf::telemetry::init_logging(&config.log);
            let mut spec = match request {
                Some(path) => onbehalf::cli::check::RequestSpec::from_file(&path)?,
                None => onbehalf::cli::check::RequestSpec {
                    method: "GET".into(),
                    path: "/".into(),
                    ..Default::default()
                },
            };
            if let Some(m) = method {
                spec.method = m;
            }
            if let Some(p) = path {
                spec.path = p;
            }
            for h in &headers {
                spec.add_header(h)?;
            }
            if token.is_some() {
                spec.token = token;
            }
            if body.is_some() {
                spec.body = body;
            }
            let (authorizer, source) = onbehalf::app::build_authorizer(&config)?;
            onbehalf::app::load_once(&authorizer, &source, &config).await?;
            let (report, allowed) =
                onbehalf::cli::check::run(&authorizer, &spec, &config.authn.header).await;
            let text = serde_json::to_string_pretty(&report).context("printing the report")?;
            println!("{text}");
            Ok(match allowed {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(1),
            })
        }
        Command::Exchange { args, token_only } => {
            let (report, issued) = onbehalf::cli::exchange::run(&args).await?;
            match (
                token_only,
                report.get("access_token").and_then(|t| t.as_str()),
            ) {
                (true, Some(token)) => println!("{token}"),
                _ => {
                    let text =
                        serde_json::to_string_pretty(&report).context("printing the report")?;
                    println!("{text}");
                }
            }
            Ok(match issued {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(1),
            })
        }
        Command::Policy {
            command: PolicyCommand::Test { dir },
        } => policy_test(&dir),
        Command::Policy {
            command:
                PolicyCommand::Build {
                    dir,
                    output,
                    revision,
                    signing_key,
                    signing_alg,
                    key_id,
                },
        } => {
            let signing = match signing_key {
                Some(path) => {
                    let pem = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some((pem, signing_alg, key_id))
                }
                None => None,
            };
            let bundle = onbehalf::policy::bundle::build(&dir, revision.as_deref(), signing)?;
            let bytes = bundle.to_tar_gz()?;
            std::fs::write(&output, &bytes)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!(
                "wrote {} ({} bytes, revision {}, {} files{})",
                output.display(),
                bytes.len(),
                bundle.revision(),
                bundle.files().len(),
                if bundle.is_signed() { ", signed" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy_test(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use onbehalf::policy::testing::{self, TestOutcome};
    let results = testing::run(dir)?;
    if results.is_empty() {
        println!("no test_* rules found under {}", dir.display());
        return Ok(ExitCode::from(1));
    }
    let mut failed = 0;
    for r in &results {
        let ms = r.duration.as_secs_f64() * 1000.0;
        match &r.outcome {
            TestOutcome::Pass => println!("PASS {}: {} ({ms:.1}ms)", r.file, r.name),
            TestOutcome::Fail => {
                failed += 1;
                println!("FAIL {}: {} ({ms:.1}ms)", r.file, r.name);
            }
            TestOutcome::Error(e) => {
                failed += 1;
                println!("ERROR {}: {}: {e}", r.file, r.name);
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}
