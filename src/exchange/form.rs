//! The token request of RFC 8693 §2.1: an `application/x-www-form-urlencoded` body, read
//! once into [`TokenRequest`]. Nothing here verifies a token; it only refuses what is not a
//! well-formed request, with the error RFC 6749 §5.2 names for it.

use super::ExchangeError;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Token types accepted as `subject_token_type` and `actor_token_type`: each is a JWT here.
const INPUT_TYPES: [&str; 3] = [ACCESS_TOKEN, JWT, ID_TOKEN];

/// A well-formed token-exchange request.
#[derive(Clone, PartialEq)]
pub struct TokenRequest {
    pub subject_token: String,
    pub subject_token_type: String,
    pub actor_token: String,
    pub actor_token_type: String,
    /// What the client asked for; `access_token` when it did not say.
    pub requested_token_type: &'static str,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Vec<String>,
}

/// Reads a token request from its `Content-Type` and body.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<TokenRequest, ExchangeError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ExchangeError::invalid_request(
            "the request body must be application/x-www-form-urlencoded (RFC 8693 §2.1)",
        ));
    }
    let mut single: Vec<(&'static str, Option<String>)> = [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "scope",
    ]
    .into_iter()
    .map(|name| (name, None))
    .collect();
    let (mut audience, mut resource) = (Vec::new(), Vec::new());
    for (name, value) in form_urlencoded::parse(body) {
        // RFC 6749 §3.1: a parameter without a value is as if it were not sent.
        if value.is_empty() {
            continue;
        }
        match &*name {
            "audience" => audience.push(value.into_owned()),
            "resource" => resource.push(value.into_owned()),
            _ => {
                // Unknown parameters are ignored (RFC 6749 §3.2).
                let Some((name, slot)) = single.iter_mut().find(|(n, _)| **n == *name) else {
                    continue;
                };
                if slot.is_some() {
                    return Err(ExchangeError::invalid_request(format!(
                        "the parameter {name} is repeated"
                    )));
                }
                *slot = Some(value.into_owned());
            }
        }
    }
    let mut take = |name: &str| {
        single
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.take())
    };
    let grant_type = take("grant_type")
        .ok_or_else(|| ExchangeError::invalid_request("the parameter grant_type is missing"))?;
    if grant_type != GRANT_TYPE {
        return Err(ExchangeError::new(
            crate::telemetry::ExchangeResult::UnsupportedGrantType,
            format!("only {GRANT_TYPE} is supported"),
        ));
    }
    let mut required = |name: &str| {
        take(name).ok_or_else(|| {
            ExchangeError::invalid_request(format!("the parameter {name} is missing"))
        })
    };
    let subject_token = required("subject_token")?;
    let subject_token_type = required("subject_token_type")?;
    // onbehalf issues delegation tokens: an exchange without an actor has nobody to name.
    let actor_token = required("actor_token")?;
    let actor_token_type = required("actor_token_type")?;
    for (name, kind) in [
        ("subject_token_type", &subject_token_type),
        ("actor_token_type", &actor_token_type),
    ] {
        if !INPUT_TYPES.contains(&kind.as_str()) {
            return Err(ExchangeError::invalid_request(format!(
                "{name} must be one of {}",
                INPUT_TYPES.join(", ")
            )));
        }
    }
    let requested_token_type = match take("requested_token_type").as_deref() {
        None | Some(ACCESS_TOKEN) => ACCESS_TOKEN,
        Some(JWT) => JWT,
        Some(_) => {
            return Err(ExchangeError::invalid_request(format!(
                "requested_token_type must be {ACCESS_TOKEN} or {JWT}"
            )));
        }
    };
    let scope: Vec<String> = take("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    if scope.iter().any(|s| {
        s.bytes()
            .any(|b| !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'\\')
    }) {
        return Err(ExchangeError::new(
            crate::telemetry::ExchangeResult::InvalidScope,
            "a scope holds a character RFC 6749 §3.3 does not allow",
        ));
    }
    // RFC 8707 §2: a resource is an absolute URI without a fragment.
    if let Some(bad) = resource.iter().find(|r| !absolute_uri(r)) {
        return Err(ExchangeError::new(
            crate::telemetry::ExchangeResult::InvalidTarget,
            format!("the resource {bad:?} is not an absolute URI without a fragment"),
        ));
    }
    Ok(TokenRequest {
        subject_token,
        subject_token_type,
        actor_token,
        actor_token_type,
        requested_token_type,
        audience,
        resource,
        scope,
    })
}

/// `scheme ":" rest` (RFC 3986 §3.1, §4.3), with no fragment, no whitespace or controls.
fn absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.contains('#')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl std::fmt::Debug for TokenRequest {
    /// Never the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token_type", &self.actor_token_type)
            .field("requested_token_type", &self.requested_token_type)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}
