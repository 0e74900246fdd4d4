//! OPA's `crypto.sha1`, `crypto.sha256` and `crypto.hmac.*` builtins, as regorus extensions
//! (regorus has none of them): hex digests of a string, as OPA answers them, computed by
//! aws-lc-rs. A non-string argument makes the expression undefined, as OPA's builtin errors
//! do. MD5 (`crypto.md5`, `crypto.hmac.md5`) is not offered.

use aws_lc_rs::{constant_time, digest, hmac};
use regorus::{Engine, Value};

/// Digests: name and algorithm.
const DIGESTS: &[(&str, &digest::Algorithm)] = &[
    ("crypto.sha1", &digest::SHA1_FOR_LEGACY_USE_ONLY),
    ("crypto.sha256", &digest::SHA256),
];

/// HMACs: name and algorithm.
const HMACS: &[(&str, hmac::Algorithm)] = &[
    ("crypto.hmac.sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
    ("crypto.hmac.sha256", hmac::HMAC_SHA256),
    ("crypto.hmac.sha512", hmac::HMAC_SHA512),
];

/// Whether `name` is one of the builtins this module provides.
pub fn provides(name: &str) -> bool {
    name == "crypto.hmac.equal"
        || DIGESTS.iter().any(|(n, _)| *n == name)
        || HMACS.iter().any(|(n, _)| *n == name)
}

/// Adds every builtin of this module to `engine`.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    for (name, alg) in DIGESTS {
        engine.add_extension(
            (*name).into(),
            1,
            Box::new(move |args: Vec<Value>| {
                Ok(match args.first() {
                    Some(Value::String(s)) => {
                        Value::from(hex(digest::digest(alg, s.as_bytes()).as_ref()))
                    }
                    _ => Value::Undefined,
                })
            }),
        )?;
    }
    for (name, alg) in HMACS {
        let alg = *alg;
        engine.add_extension(
            (*name).into(),
            2,
            Box::new(move |args: Vec<Value>| {
                Ok(match (args.first(), args.get(1)) {
                    (Some(Value::String(message)), Some(Value::String(key))) => {
                        let key = hmac::Key::new(alg, key.as_bytes());
                        Value::from(hex(hmac::sign(&key, message.as_bytes()).as_ref()))
                    }
                    _ => Value::Undefined,
                })
            }),
        )?;
    }
    engine.add_extension(
        "crypto.hmac.equal".into(),
        2,
        Box::new(|args: Vec<Value>| {
            Ok(match (args.first(), args.get(1)) {
                (Some(Value::String(a)), Some(Value::String(b))) => Value::from(
                    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok(),
                ),
                _ => Value::Undefined,
            })
        }),
    )?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
