//! `onbehalf exchange`: one RFC 8693 token exchange against a running exchange service, for
//! trying the flow by hand. It prints the issued token and its decoded header and claims —
//! decoded, not verified: verifying is the sidecar's job, with the exchange's published keys.

use base64::Engine as _;
use serde_json::{Value, json};

/// What to ask for (the `onbehalf exchange` flags). No `Debug`: it holds tokens.
#[derive(Default, clap::Args)]
pub struct ExchangeArgs {
    /// The exchange's issuer URL, whose /token is posted to (or the token endpoint itself).
    #[arg(long, default_value = "http://127.0.0.1:8282")]
    pub url: String,
    /// The user's token (subject_token).
    #[arg(long, env = "ONBEHALF_SUBJECT_TOKEN", hide_env_values = true)]
    pub subject_token: String,
    /// The agent's own token (actor_token).
    #[arg(long, env = "ONBEHALF_ACTOR_TOKEN", hide_env_values = true)]
    pub actor_token: String,
    /// A scope to ask for; repeatable. None: all the policy allows.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// An audience to ask for; repeatable.
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// A resource URI to ask for; repeatable.
    #[arg(long = "resource")]
    pub resources: Vec<String>,
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Posts the exchange; returns the report to print and whether a token was issued.
pub async fn run(args: &ExchangeArgs) -> anyhow::Result<(Value, bool)> {
    let url = match args.url.trim_end_matches('/') {
        u if u.ends_with("/token") => u.to_string(),
        u => format!("{u}/token"),
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TYPE)
        .append_pair("subject_token", &args.subject_token)
        .append_pair("subject_token_type", ACCESS_TOKEN)
        .append_pair("actor_token", &args.actor_token)
        .append_pair("actor_token_type", ACCESS_TOKEN);
    if !args.scopes.is_empty() {
        form.append_pair("scope", &args.scopes.join(" "));
    }
    for a in &args.audiences {
        form.append_pair("audience", a);
    }
    for r in &args.resources {
        form.append_pair("resource", r);
    }
    // Never follow a redirect: it would post both tokens wherever it points.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let response = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("POST {url}: the answer is not JSON: {e}"))?;
    let Some(token) = body.get("access_token").and_then(Value::as_str) else {
        return Ok((json!({"status": status, "response": body}), false));
    };
    let decode = |i: usize| -> Value {
        token
            .split('.')
            .nth(i)
            .and_then(|s| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let report = json!({
        "status": status,
        "issued_token_type": body.get("issued_token_type"),
        "expires_in": body.get("expires_in"),
        "scope": body.get("scope"),
        "header": decode(0),
        "claims": decode(1),
        "access_token": token,
    });
    Ok((report, true))
}
