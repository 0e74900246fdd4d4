//! JOSE building blocks shared by token verification, bundle signatures and minting:
//! algorithm names parsed once from configuration, and private signing keys (PKCS#8 PEM or
//! made at start) with their public JWK.
//!
//! Signing uses aws-lc-rs key pairs parsed once, not jsonwebtoken's `EncodingKey`, which
//! parses the key again on every signature.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Value as Json, json};

/// Algorithm names accepted for verification; HMAC and `none` never are: keys come from
/// documents of public keys only.
pub const VERIFY_ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA";

/// Algorithm names a signing key may use.
pub const SIGN_ALGORITHMS: &str = "ES256, ES384, EdDSA, RS256 or PS256";

/// Parses an algorithm name from configuration for verification.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// An algorithm onbehalf signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlgorithm {
    ES256,
    ES384,
    EdDSA,
    RS256,
    PS256,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM document (expected -----BEGIN PRIVATE KEY-----)")]
    Pem,
    #[error("expected a PKCS#8 private key (-----BEGIN PRIVATE KEY-----), found {0}")]
    PemLabel(String),
    #[error("not a {0} private key in PKCS#8 form: {1}")]
    Rejected(&'static str, String),
    #[error("cannot generate a {0} key")]
    Generate(&'static str),
    #[error("`{0}` cannot sign; use {SIGN_ALGORITHMS}")]
    Algorithm(String),
    #[error("signing failed")]
    Sign,
}

/// A private key that signs JWS: parsed once, shared by every request.
pub struct PrivateKey {
    alg: SignAlgorithm,
    pair: Pair,
    rng: SystemRandom,
}

enum Pair {
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
    Rsa(sig::RsaKeyPair),
}

// === impl SignAlgorithm ===

impl SignAlgorithm {
    pub fn parse(name: &str) -> Option<SignAlgorithm> {
        Some(match name {
            "ES256" => SignAlgorithm::ES256,
            "ES384" => SignAlgorithm::ES384,
            "EdDSA" => SignAlgorithm::EdDSA,
            "RS256" => SignAlgorithm::RS256,
            "PS256" => SignAlgorithm::PS256,
            _ => return None,
        })
    }

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            SignAlgorithm::ES256 => "ES256",
            SignAlgorithm::ES384 => "ES384",
            SignAlgorithm::EdDSA => "EdDSA",
            SignAlgorithm::RS256 => "RS256",
            SignAlgorithm::PS256 => "PS256",
        }
    }
}

impl fmt::Display for SignAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl PrivateKey ===

impl PrivateKey {
    /// Parses a PKCS#8 PEM private key for `alg`.
    pub fn from_pem(alg: SignAlgorithm, pem_text: &[u8]) -> Result<PrivateKey, KeyError> {
        let doc = pem::parse(pem_text).map_err(|_| KeyError::Pem)?;
        if doc.tag() != "PRIVATE KEY" {
            return Err(KeyError::PemLabel(doc.tag().to_string()));
        }
        PrivateKey::from_pkcs8(alg, doc.contents())
    }

    pub fn from_pkcs8(alg: SignAlgorithm, der: &[u8]) -> Result<PrivateKey, KeyError> {
        let rejected =
            |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected(alg.name(), e.to_string());
        let pair = match alg {
            SignAlgorithm::ES256 => Pair::Ecdsa(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            SignAlgorithm::ES384 => Pair::Ecdsa(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            SignAlgorithm::EdDSA => {
                Pair::Ed25519(sig::Ed25519KeyPair::from_pkcs8(der).map_err(rejected)?)
            }
            SignAlgorithm::RS256 | SignAlgorithm::PS256 => {
                let pair = sig::RsaKeyPair::from_pkcs8(der).map_err(rejected)?;
                if pair.public_modulus_len() < 256 {
                    return Err(KeyError::Rejected(
                        alg.name(),
                        "RSA keys must have at least 2048 bits".into(),
                    ));
                }
                Pair::Rsa(pair)
            }
        };
        Ok(PrivateKey {
            alg,
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// A new random key, never written anywhere.
    pub fn generate(alg: SignAlgorithm) -> Result<PrivateKey, KeyError> {
        let failed = |_| KeyError::Generate(alg.name());
        let pair = match alg {
            SignAlgorithm::ES256 => Pair::Ecdsa(
                sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(failed)?,
            ),
            SignAlgorithm::ES384 => Pair::Ecdsa(
                sig::EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING)
                    .map_err(failed)?,
            ),
            SignAlgorithm::EdDSA => Pair::Ed25519(sig::Ed25519KeyPair::generate().map_err(failed)?),
            SignAlgorithm::RS256 | SignAlgorithm::PS256 => Pair::Rsa(
                sig::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?,
            ),
        };
        Ok(PrivateKey {
            alg,
            pair,
            rng: SystemRandom::new(),
        })
    }

    pub fn algorithm(&self) -> SignAlgorithm {
        self.alg
    }

    /// The JWS signature of `message` (the signing input `header.payload`).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ecdsa(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rsa(pair) => {
                let padding: &'static dyn sig::RsaEncoding = match self.alg {
                    SignAlgorithm::PS256 => &sig::RSA_PSS_SHA256,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &self.rng, message, &mut out)
                    .map_err(|_| KeyError::Sign)?;
                Ok(out)
            }
        }
    }

    /// The public members of the key as a JWK (no `kid`, `alg` or `use`), in RFC 7638 order
    /// of the required members, so that its thumbprint is the SHA-256 of its JSON.
    fn public_members(&self) -> Json {
        match &self.pair {
            Pair::Ecdsa(pair) => {
                // Uncompressed point: 0x04 || X || Y.
                let point = pair.public_key().as_ref();
                let coords = point.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                let crv = match self.alg {
                    SignAlgorithm::ES384 => "P-384",
                    _ => "P-256",
                };
                json!({"crv": crv, "kty": "EC", "x": b64(x), "y": b64(y)})
            }
            Pair::Ed25519(pair) => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": b64(pair.public_key().as_ref())})
            }
            Pair::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                })
            }
        }
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): a stable key id derived from the key.
    pub fn thumbprint(&self) -> String {
        // serde_json writes object members sorted and without whitespace: RFC 7638's form.
        let canonical = self.public_members().to_string();
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// The public key as a JWK for a JWKS document: public members only, with `kid`, `alg`
    /// and `use: sig`.
    pub fn public_jwk(&self, kid: &str) -> Json {
        let mut jwk = self.public_members();
        if let Some(m) = jwk.as_object_mut() {
            m.insert("kid".into(), kid.into());
            m.insert("alg".into(), self.alg.name().into());
            m.insert("use".into(), "sig".into());
        }
        jwk
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

/// base64url without padding, as JOSE writes every binary value.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests;
