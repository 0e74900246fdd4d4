//! Helpers shared by the unit tests, the integration tests, the benchmarks and the load tool:
//! one way to sign a test token, one way to build a CheckRequest (`cli::check::RequestSpec`,
//! which `onbehalf check` itself uses). Not part of the product; kept in the library so that
//! every harness signs and asks alike.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// `tests/fixtures/<name>` in the source tree.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A JWT of `claims`, signed with the PEM private key `pem` for `alg`, header `kid`.
pub fn sign_pem(pem: &[u8], alg: Algorithm, kid: &str, claims: &Value) -> anyhow::Result<String> {
    let key = match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(pem)?,
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem)?,
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem)?,
        other => anyhow::bail!("{other:?} is not signed with a PEM key"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// A JWT of `claims` signed with the fixture key `kid` (`rsa-*`: RS256, `ec-*`: ES256,
/// `ed-*`: EdDSA), whose public key is `tests/fixtures/<kid>.jwk.json`.
pub fn sign_fixture(kid: &str, claims: &Value) -> anyhow::Result<String> {
    let alg = match kid {
        k if k.starts_with("rsa") => Algorithm::RS256,
        k if k.starts_with("ec") => Algorithm::ES256,
        _ => Algorithm::EdDSA,
    };
    let pem = std::fs::read(fixture(&format!("{kid}.pem")))?;
    sign_pem(&pem, alg, kid, claims)
}
