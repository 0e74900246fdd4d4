use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};

use super::*;

const ALL: [SignAlgorithm; 5] = [
    SignAlgorithm::ES256,
    SignAlgorithm::ES384,
    SignAlgorithm::EdDSA,
    SignAlgorithm::RS256,
    SignAlgorithm::PS256,
];

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).expect("fixture")
}

/// A compact JWS signed by `key`, verified by jsonwebtoken from the published JWK alone.
fn sign_and_verify(key: &PrivateKey) {
    let header = b64(json!({"alg": key.algorithm().name(), "typ": "JWT"})
        .to_string()
        .as_bytes());
    let payload = b64(json!({"sub": "alice", "exp": 4_000_000_000u64})
        .to_string()
        .as_bytes());
    let input = format!("{header}.{payload}");
    let signature = key.sign(input.as_bytes()).expect("sign");
    let token = format!("{input}.{}", b64(&signature));

    let jwk: Jwk = serde_json::from_value(key.public_jwk("k1")).expect("a valid JWK");
    let decoding = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let alg = parse_algorithm(key.algorithm().name()).expect("alg");
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
        .unwrap_or_else(|e| panic!("{}: {e}", key.algorithm()));
    assert_eq!(data.claims["sub"], "alice");
}

#[test]
fn generated_keys_sign_what_their_jwk_verifies() {
    for alg in ALL {
        sign_and_verify(&PrivateKey::generate(alg).expect("generate"));
    }
}

#[test]
fn pkcs8_pem_keys_load_for_their_algorithm() {
    for (file, alg) in [
        ("ec-1.pem", SignAlgorithm::ES256),
        ("ed-1.pem", SignAlgorithm::EdDSA),
        ("rsa-1.pem", SignAlgorithm::RS256),
        ("rsa-2.pem", SignAlgorithm::PS256),
    ] {
        let key = PrivateKey::from_pem(alg, &fixture(file)).expect(file);
        sign_and_verify(&key);
    }
}

#[test]
fn the_public_jwk_matches_the_fixture_and_holds_no_private_member() {
    for (kid, alg) in [
        ("ec-1", SignAlgorithm::ES256),
        ("ed-1", SignAlgorithm::EdDSA),
        ("rsa-1", SignAlgorithm::RS256),
    ] {
        let key = PrivateKey::from_pem(alg, &fixture(&format!("{kid}.pem"))).expect("key");
        let jwk = key.public_jwk(kid);
        let expected: serde_json::Value =
            serde_json::from_slice(&fixture(&format!("{kid}.jwk.json"))).expect("jwk");
        for member in ["kty", "crv", "x", "y", "n", "e"] {
            assert_eq!(jwk.get(member), expected.get(member), "{kid}.{member}");
        }
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], alg.name());
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{kid} publishes `{private}`");
        }
    }
}

#[test]
fn thumbprint_is_rfc7638() {
    // RFC 7638 §3.1: SHA-256 over the required members, sorted, no whitespace.
    let key = PrivateKey::from_pem(SignAlgorithm::ES256, &fixture("ec-1.pem")).expect("key");
    let jwk = key.public_jwk("x");
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y")
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    assert_eq!(key.thumbprint(), b64(digest.as_ref()));
    assert_eq!(key.thumbprint().len(), 43);
}

#[test]
fn bad_keys_are_refused_with_a_reason() {
    let ec = fixture("ec-1.pem");
    assert!(matches!(
        PrivateKey::from_pem(SignAlgorithm::RS256, &ec),
        Err(KeyError::Rejected("RS256", _))
    ));
    assert!(matches!(
        PrivateKey::from_pem(SignAlgorithm::ES384, &ec),
        Err(KeyError::Rejected("ES384", _))
    ));
    assert_eq!(
        PrivateKey::from_pem(SignAlgorithm::ES256, b"not a key").map(|_| ()),
        Err(KeyError::Pem)
    );
    assert!(matches!(
        PrivateKey::from_pem(SignAlgorithm::RS256, &fixture("rsa-1.pub.pem")),
        Err(KeyError::PemLabel(label)) if label == "PUBLIC KEY"
    ));
}

#[test]
fn debug_never_shows_key_material() {
    let pem = fixture("ec-1.pem");
    let key = PrivateKey::from_pem(SignAlgorithm::ES256, &pem).expect("key");
    let shown = format!("{key:?}");
    let body = String::from_utf8(pem).expect("pem");
    for line in body.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(line), "{shown}");
    }
    assert!(shown.contains(&key.thumbprint()));
}

#[test]
fn algorithm_names() {
    for alg in ALL {
        assert_eq!(SignAlgorithm::parse(alg.name()), Some(alg));
    }
    assert_eq!(SignAlgorithm::parse("HS256"), None);
    assert_eq!(SignAlgorithm::parse("none"), None);
    assert!(parse_algorithm("HS256").is_none());
}
