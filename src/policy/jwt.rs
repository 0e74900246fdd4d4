//! OPA's `io.jwt.*` builtins, as regorus extensions: `io.jwt.decode`, `io.jwt.decode_verify`
//! and the `io.jwt.verify_*` family, with OPA's semantics (its `v1/topdown/tokens.go`).
//!
//! - Keys: `cert` and the second argument of `verify_*` are a PEM certificate or public key, or
//!   a JWK or JWK set as a JSON string; `secret` is an HMAC secret. A JWK's `kid` matching the
//!   token's is tried alone; otherwise every key whose `alg` (when it has one) is the token's.
//! - Results: a signature that does not verify, an unmet constraint (`alg`, `iss`, `aud`,
//!   `exp`, `nbf`) or an invalid JOSE header are `false` / `[false, {}, {}]`, as in OPA.
//!   Anything OPA raises an error for (a token that is not three base64url parts of JSON, a
//!   key that does not parse, an unknown constraint) makes the expression undefined, as OPA's
//!   non-strict builtin errors do.
//! - Signatures are checked by jsonwebtoken, the same code as onbehalf's own verification;
//!   ES512, which jsonwebtoken lacks, by aws-lc-rs beneath it.
//! - `decode_verify` without a `time` constraint reads the clock: the policy analysis counts it
//!   among the builtins whose answer varies between calls, so the decision cache stays off.
//!
//! regorus' register VM cannot call extensions: a policy using these runs on the interpreter.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use regorus::{Engine, Value};

/// The `io.jwt.verify_*` builtins and the algorithm each verifies with.
const VERIFY: &[(&str, &str)] = &[
    ("io.jwt.verify_rs256", "RS256"),
    ("io.jwt.verify_rs384", "RS384"),
    ("io.jwt.verify_rs512", "RS512"),
    ("io.jwt.verify_ps256", "PS256"),
    ("io.jwt.verify_ps384", "PS384"),
    ("io.jwt.verify_ps512", "PS512"),
    ("io.jwt.verify_es256", "ES256"),
    ("io.jwt.verify_es384", "ES384"),
    ("io.jwt.verify_es512", "ES512"),
    ("io.jwt.verify_eddsa", "EdDSA"),
    ("io.jwt.verify_hs256", "HS256"),
    ("io.jwt.verify_hs384", "HS384"),
    ("io.jwt.verify_hs512", "HS512"),
];

/// Whether `name` is one of the builtins this module provides.
pub fn provides(name: &str) -> bool {
    matches!(name, "io.jwt.decode" | "io.jwt.decode_verify")
        || VERIFY.iter().any(|(n, _)| *n == name)
}

/// Adds every builtin of this module to `engine`.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension(
        "io.jwt.decode".into(),
        1,
        Box::new(|args: Vec<Value>| Ok(decode(&args).unwrap_or(Value::Undefined))),
    )?;
    engine.add_extension(
        "io.jwt.decode_verify".into(),
        2,
        Box::new(|args: Vec<Value>| Ok(decode_verify(&args).unwrap_or(Value::Undefined))),
    )?;
    for (name, alg_name) in VERIFY {
        let Some(alg) = known_algorithm(alg_name) else {
            anyhow::bail!("no algorithm {alg_name} for {name}");
        };
        engine.add_extension(
            (*name).into(),
            2,
            Box::new(move |args: Vec<Value>| {
                Ok(verify_with(alg, &args).map_or(Value::Undefined, Value::from))
            }),
        )?;
    }
    Ok(())
}

/// A JOSE algorithm OPA knows (its `tokenAlgorithms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Jwt(Algorithm),
    /// ECDSA on P-521 with SHA-512, which jsonwebtoken lacks.
    Es512,
}

fn known_algorithm(name: &str) -> Option<Alg> {
    Some(match name {
        "ES512" => Alg::Es512,
        "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
        | "ES256" | "ES384" | "EdDSA" => Alg::Jwt(name.parse::<Algorithm>().ok()?),
        _ => return None,
    })
}

impl Alg {
    fn is_hmac(self) -> bool {
        matches!(
            self,
            Alg::Jwt(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        )
    }

    /// Whether `signature` (base64url) over `message` verifies with `key`; a key of another
    /// family never does.
    fn verify(self, key: &DecodingKey, message: &[u8], signature: &str) -> bool {
        match self {
            Alg::Jwt(alg) => {
                jsonwebtoken::crypto::verify(signature, message, key, alg).unwrap_or(false)
            }
            Alg::Es512 => {
                // Only an EC public key: never an HMAC secret's bytes taken as a point.
                if key.family() != jsonwebtoken::AlgorithmFamily::Ec {
                    return false;
                }
                let (Ok(point), Ok(signature)) = (key.try_get_as_bytes(), B64URL.decode(signature))
                else {
                    return false;
                };
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED,
                    point,
                )
                .verify(message, &signature)
                .is_ok()
            }
        }
    }
}

/// Why a builtin has no value: OPA raises an error there, which its non-strict mode (and
/// onbehalf's) turns into an undefined expression.
#[derive(Debug)]
struct Undefined;

type Outcome<T> = Result<T, Undefined>;

/// base64url, padded or not, as OPA's `base64url.decode` reads it.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A compact JWS split into its three encoded parts.
struct Compact<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Compact<'a> {
    fn split(token: &'a str) -> Outcome<Compact<'a>> {
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(payload), Some(signature), None) => Ok(Compact {
                header,
                payload,
                signature,
            }),
            _ => Err(Undefined),
        }
    }

    fn signing_input(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }

    fn header(&self) -> Outcome<serde_json::Map<String, serde_json::Value>> {
        json_object(&B64URL.decode(self.header).map_err(|_| Undefined)?)
    }

    fn payload_bytes(&self) -> Outcome<Vec<u8>> {
        B64URL.decode(self.payload).map_err(|_| Undefined)
    }

    fn signature_bytes(&self) -> Outcome<Vec<u8>> {
        B64URL.decode(self.signature).map_err(|_| Undefined)
    }
}

fn json_object(bytes: &[u8]) -> Outcome<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(Undefined),
    }
}

fn string_arg(args: &[Value], index: usize) -> Outcome<&str> {
    match args.get(index) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(Undefined),
    }
}

/// `io.jwt.decode(token)`: `[header, payload, signature as hex]`, unverified. A header whose
/// `cty` is `JWT` holds a nested token, decoded in its place.
fn decode(args: &[Value]) -> Outcome<Value> {
    let mut token = string_arg(args, 0)?.to_string();
    loop {
        let compact = Compact::split(&token)?;
        let header = compact.header()?;
        let payload = compact.payload_bytes()?;
        if header.get("cty").and_then(|c| c.as_str()) == Some("JWT") {
            let inner = String::from_utf8(payload).map_err(|_| Undefined)?;
            token = inner.trim_matches(|c| c == '"' || c == '\'').to_string();
            continue;
        }
        let payload = json_object(&payload)?;
        let signature = compact.signature_bytes()?;
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        return Ok(Value::from(vec![
            Value::from(serde_json::Value::Object(header)),
            Value::from(serde_json::Value::Object(payload)),
            Value::from(hex),
        ]));
    }
}

/// A key to verify with, and what its JWK said of it.
struct VerifyKey {
    key: DecodingKey,
    /// The JWK's `alg`; none for a PEM key.
    alg: Option<String>,
    kid: Option<String>,
}

/// Keys from a PEM certificate or public key, or a JWK or JWK set in JSON.
fn keys(text: &str) -> Outcome<Vec<VerifyKey>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("-----BEGIN") {
        let block = pem::parse(text).map_err(|_| Undefined)?;
        if !matches!(block.tag(), "CERTIFICATE" | "PUBLIC KEY") {
            return Err(Undefined);
        }
        // OPA refuses anything after the one PEM block.
        if pem::parse_many(text).map_err(|_| Undefined)?.len() != 1 {
            return Err(Undefined);
        }
        let bytes = text.as_bytes();
        let key = DecodingKey::from_rsa_pem(bytes)
            .or_else(|_| DecodingKey::from_ec_pem(bytes))
            .or_else(|_| DecodingKey::from_ed_pem(bytes))
            .map_err(|_| Undefined)?;
        return Ok(vec![VerifyKey {
            key,
            alg: None,
            kid: None,
        }]);
    }
    let json: serde_json::Value = serde_json::from_str(text).map_err(|_| Undefined)?;
    let jwks = match json {
        serde_json::Value::Object(mut set) if set.contains_key("keys") => {
            match set.remove("keys") {
                Some(serde_json::Value::Array(keys)) => keys,
                _ => return Err(Undefined),
            }
        }
        key => vec![key],
    };
    let mut keys = Vec::with_capacity(jwks.len());
    for mut jwk in jwks {
        let object = jwk.as_object_mut().ok_or(Undefined)?;
        let alg = match object.remove("alg") {
            None => None,
            Some(serde_json::Value::String(a)) if a.is_empty() => None,
            Some(serde_json::Value::String(a)) => Some(a),
            Some(_) => return Err(Undefined),
        };
        // Keys of algorithms OPA does not know are skipped, as OPA skips them.
        if alg.as_deref().is_some_and(|a| known_algorithm(a).is_none()) {
            continue;
        }
        // The algorithm is kept here, not given to jsonwebtoken, which knows no ES512.
        let parsed: Jwk = serde_json::from_value(jwk).map_err(|_| Undefined)?;
        keys.push(VerifyKey {
            key: DecodingKey::from_jwk(&parsed).map_err(|_| Undefined)?,
            alg,
            kid: parsed.common.key_id.clone(),
        });
    }
    Ok(keys)
}

/// Whether `signature` over `message` verifies with one of `keys` under `alg`: the key whose
/// `kid` is the token's alone when there is one, else every key whose `alg` is the token's or
/// unset.
fn verify_keys(
    keys: &[VerifyKey],
    alg: Alg,
    header_alg: &str,
    kid: Option<&str>,
    message: &[u8],
    signature: &str,
) -> bool {
    let check = |key: &VerifyKey| alg.verify(&key.key, message, signature);
    if let Some(kid) = kid.filter(|k| !k.is_empty())
        && let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    {
        return check(key);
    }
    keys.iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == header_alg))
        .any(check)
}

/// `io.jwt.verify_<alg>(token, key)`: whether the signature verifies, with `alg` whatever the
/// token's header says (as OPA).
fn verify_with(alg: Alg, args: &[Value]) -> Outcome<bool> {
    let token = string_arg(args, 0)?;
    let secret_or_key = string_arg(args, 1)?;
    let compact = Compact::split(token)?;
    let keys = match alg.is_hmac() {
        true => vec![VerifyKey {
            key: DecodingKey::from_secret(secret_or_key.as_bytes()).map_err(|_| Undefined)?,
            alg: None,
            kid: None,
        }],
        false => keys(secret_or_key)?,
    };
    compact.signature_bytes()?;
    let header = compact.header()?;
    let header = Header::parse(&header)?;
    Ok(verify_keys(
        &keys,
        alg,
        &header.alg,
        header.kid.as_deref(),
        compact.signing_input().as_bytes(),
        compact.signature,
    ))
}

/// The JOSE header fields OPA reads.
struct Header {
    alg: String,
    kid: Option<String>,
    cty: Option<String>,
    /// Whether every `crit` parameter is one OPA understands (`alg`, `kid`, `typ`, `cty`,
    /// `crit`) and `alg` is present: otherwise the token is invalid, not an error.
    valid: bool,
}

impl Header {
    fn parse(header: &serde_json::Map<String, serde_json::Value>) -> Outcome<Header> {
        const UNDERSTOOD: &[&str] = &["alg", "kid", "typ", "cty", "crit"];
        let string = |name: &str| match header.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Undefined),
        };
        let alg = string("alg")?.unwrap_or_default();
        let kid = string("kid")?;
        string("typ")?;
        let cty = string("cty")?;
        let mut valid = !alg.is_empty();
        if let Some(crit) = header.get("crit") {
            let list = crit.as_array().filter(|l| !l.is_empty()).ok_or(Undefined)?;
            for name in list {
                let name = name.as_str().ok_or(Undefined)?;
                if !UNDERSTOOD.contains(&name) && header.contains_key(name) {
                    valid = false;
                }
            }
        }
        Ok(Header {
            alg,
            kid,
            cty,
            valid,
        })
    }
}

/// What `io.jwt.decode_verify` checks, from its constraints object.
struct Constraints {
    keys: Option<Vec<VerifyKey>>,
    secret: Option<String>,
    alg: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    /// Nanoseconds since the epoch.
    time: f64,
}

impl Constraints {
    fn parse(value: &Value) -> Outcome<Constraints> {
        let Value::Object(object) = value else {
            return Err(Undefined);
        };
        let mut c = Constraints {
            keys: None,
            secret: None,
            alg: None,
            iss: None,
            aud: None,
            time: -1.0,
        };
        for (name, value) in object.iter() {
            let Value::String(name) = name else {
                return Err(Undefined);
            };
            let text = || match value {
                Value::String(s) => Ok(s.to_string()),
                _ => Err(Undefined),
            };
            match name.as_ref() {
                "cert" => c.keys = Some(keys(&text()?)?),
                "secret" => c.secret = Some(text()?).filter(|s| !s.is_empty()),
                "alg" => c.alg = Some(text()?).filter(|s| !s.is_empty()),
                "iss" => c.iss = Some(text()?).filter(|s| !s.is_empty()),
                "aud" => c.aud = Some(text()?).filter(|s| !s.is_empty()),
                "time" => {
                    let Value::Number(n) = value else {
                        return Err(Undefined);
                    };
                    // Nanoseconds are past f64's exact integers, which `as_f64` refuses.
                    let t = n
                        .as_f64()
                        .or_else(|| n.as_i128().map(|i| i as f64))
                        .ok_or(Undefined)?;
                    if t < 0.0 {
                        return Err(Undefined);
                    }
                    c.time = t;
                }
                _ => return Err(Undefined),
            }
        }
        if c.time < 0.0 {
            c.time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| Undefined)?
                .as_nanos() as f64;
        }
        // Exactly one of a key and a secret.
        if c.keys.is_some() == c.secret.is_some() {
            return Err(Undefined);
        }
        Ok(c)
    }

    fn verify(&self, header: &Header, compact: &Compact) -> bool {
        let Some(alg) = known_algorithm(&header.alg) else {
            return false;
        };
        let message = compact.signing_input();
        match (&self.keys, &self.secret) {
            (Some(keys), _) => verify_keys(
                keys,
                alg,
                &header.alg,
                header.kid.as_deref(),
                message.as_bytes(),
                compact.signature,
            ),
            (None, Some(secret)) => DecodingKey::from_secret(secret.as_bytes())
                .is_ok_and(|key| alg.verify(&key, message.as_bytes(), compact.signature)),
            (None, None) => false,
        }
    }

    fn audience_matches(&self, aud: &serde_json::Value) -> bool {
        let wanted = self.aud.as_deref().unwrap_or_default();
        match aud {
            serde_json::Value::String(s) => s == wanted,
            serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(wanted)),
            _ => false,
        }
    }
}

/// `io.jwt.decode_verify(token, constraints)`: `[true, header, payload]` when the signature
/// verifies and every constraint holds, `[false, {}, {}]` otherwise.
fn decode_verify(args: &[Value]) -> Outcome<Value> {
    let constraints = Constraints::parse(args.get(1).ok_or(Undefined)?)?;
    let unverified = || {
        Value::from(vec![
            Value::from(false),
            Value::new_object(),
            Value::new_object(),
        ])
    };
    let mut token = string_arg(args, 0)?.to_string();
    let (header, payload) = loop {
        let compact = Compact::split(&token)?;
        let header_json = compact.header()?;
        let header = Header::parse(&header_json)?;
        if !header.valid {
            return Ok(unverified());
        }
        if constraints.alg.as_ref().is_some_and(|a| *a != header.alg) {
            return Ok(unverified());
        }
        compact.signature_bytes()?;
        if !constraints.verify(&header, &compact) {
            return Ok(unverified());
        }
        let payload = compact.payload_bytes()?;
        if header
            .cty
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("JWT"))
        {
            token = String::from_utf8(payload).map_err(|_| Undefined)?;
            continue;
        }
        break (header_json, json_object(&payload)?);
    };
    if let Some(iss) = &constraints.iss
        && payload.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str())
    {
        return Ok(unverified());
    }
    match payload.get("aud") {
        Some(aud) if !constraints.audience_matches(aud) => return Ok(unverified()),
        None if constraints.aud.is_some() => return Ok(unverified()),
        _ => {}
    }
    let now = constraints.time / 1e9;
    if let Some(exp) = payload.get("exp") {
        let exp = exp.as_f64().ok_or(Undefined)?;
        if now >= exp {
            return Ok(unverified());
        }
    }
    if let Some(nbf) = payload.get("nbf") {
        let nbf = nbf.as_f64().ok_or(Undefined)?;
        if now < nbf {
            return Ok(unverified());
        }
    }
    Ok(Value::from(vec![
        Value::from(true),
        Value::from(serde_json::Value::Object(header)),
        Value::from(serde_json::Value::Object(payload)),
    ]))
}
