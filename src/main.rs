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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            onbehalf::telemetry::init_logging(&config.log);
            onbehalf::app::run(config).await?;
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
                Some(path) => onbehalf::check::RequestSpec::from_file(&path)?,
                None => onbehalf::check::RequestSpec {
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
            let authorizer = onbehalf::app::build_authorizer(&config)?;
            onbehalf::app::load_keys_once(&authorizer).await?;
            let (report, allowed) =
                onbehalf::check::run(&authorizer, &spec, &config.authn.header).await;
            let text = serde_json::to_string_pretty(&report).context("printing the report")?;
            println!("{text}");
            Ok(match allowed {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(1),
            })
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}
