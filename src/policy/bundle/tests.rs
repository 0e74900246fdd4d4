use std::path::PathBuf;

use super::*;

const LIMITS: Limits = Limits {
    max_archive_bytes: 1 << 20,
    max_content_bytes: 1 << 20,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).expect("fixture")
}

fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn sample() -> Bundle {
    Bundle::from_files(files(&[
        (".manifest", r#"{"revision": "r7", "roots": ["envoy"]}"#),
        (
            "envoy/authz/policy.rego",
            "package envoy.authz\nallow := true\n",
        ),
        ("envoy/data.json", r#"{"b": 1, "a": [true, null, "x"]}"#),
    ]))
    .expect("bundle")
}

/// A tar.gz written entry by entry, for archives our writer would never produce.
fn raw_archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, kind, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        // Write the name into the header directly: the builder refuses unsafe paths.
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").expect("link");
        }
        header.set_cksum();
        tar.append(&header, *bytes).expect("append");
    }
    tar.into_inner().expect("tar").finish().expect("gz")
}

#[test]
fn round_trips_through_tar_gz() {
    let bundle = sample();
    let bytes = bundle.to_tar_gz().expect("write");
    let back = Bundle::from_tar_gz(&bytes, LIMITS).expect("read");
    assert_eq!(back, bundle);
    assert_eq!(back.revision(), "r7");
    assert_eq!(back.manifest().roots, Some(vec!["envoy".to_string()]));
    assert_eq!(back.digest(), bundle.digest());
}

#[test]
fn opa_style_leading_slashes_are_accepted() {
    let bytes = raw_archive(&[("/x/data.json", tar::EntryType::Regular, b"{}")]);
    let b = Bundle::from_tar_gz(&bytes, LIMITS).expect("read");
    assert!(b.files().contains_key("x/data.json"));
}

#[test]
fn unsafe_archives_are_refused() {
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "parent dir",
            raw_archive(&[("../evil.rego", tar::EntryType::Regular, b"x")]),
        ),
        (
            "nested parent",
            raw_archive(&[("a/../../evil.rego", tar::EntryType::Regular, b"x")]),
        ),
        (
            "symlink",
            raw_archive(&[("link.rego", tar::EntryType::Symlink, b"")]),
        ),
        (
            "duplicate",
            raw_archive(&[
                ("a.rego", tar::EntryType::Regular, b"x"),
                ("a.rego", tar::EntryType::Regular, b"y"),
            ]),
        ),
    ];
    for (name, bytes) in cases {
        let err = Bundle::from_tar_gz(&bytes, LIMITS).expect_err(name);
        assert!(
            matches!(
                err,
                BundleError::UnsafePath(_) | BundleError::NotAFile(_) | BundleError::Duplicate(_)
            ),
            "{name}: {err}"
        );
    }
}

#[test]
fn size_limits_and_truncation() {
    let big = "x".repeat(5000);
    let bytes = Bundle::from_files(files(&[("a.rego", &big)]))
        .expect("bundle")
        .to_tar_gz()
        .expect("write");
    let small = Limits {
        max_archive_bytes: 1 << 20,
        max_content_bytes: 4096,
    };
    assert!(matches!(
        Bundle::from_tar_gz(&bytes, small),
        Err(BundleError::TooLarge(4096))
    ));
    let tiny = Limits {
        max_archive_bytes: 10,
        max_content_bytes: 1 << 20,
    };
    assert!(matches!(
        Bundle::from_tar_gz(&bytes, tiny),
        Err(BundleError::TooLarge(10))
    ));
    let truncated = &bytes[..bytes.len() / 2];
    assert!(matches!(
        Bundle::from_tar_gz(truncated, LIMITS),
        Err(BundleError::Archive(_))
    ));
    assert!(matches!(
        Bundle::from_tar_gz(b"not gzip at all", LIMITS),
        Err(BundleError::Archive(_))
    ));
}

fn keys() -> (EncodingKey, Vec<SigningKey>) {
    let private = EncodingKey::from_rsa_pem(&fixture("rsa-1.pem")).expect("key");
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_slice(&fixture("rsa-1.jwk.json")).expect("jwk");
    let public = SigningKey {
        id: "k1".into(),
        algorithm: Algorithm::RS256,
        key: DecodingKey::from_jwk(&jwk).expect("public"),
    };
    (private, vec![public])
}

#[test]
fn signatures_verify_and_catch_tampering() {
    let (private, public) = keys();
    let mut bundle = sample();
    assert!(matches!(
        bundle.verify(&public, true),
        Err(BundleError::Unsigned)
    ));
    assert!(
        bundle.verify(&public, false).is_ok(),
        "unsigned is fine unless required"
    );

    bundle
        .sign(&private, Algorithm::RS256, Some("k1"))
        .expect("sign");
    bundle.verify(&public, true).expect("valid signature");
    let round = Bundle::from_tar_gz(&bundle.to_tar_gz().expect("write"), LIMITS).expect("read");
    round
        .verify(&public, true)
        .expect("still valid after the archive round trip");

    // A changed file.
    let mut tampered = bundle.clone();
    tampered.files.insert(
        "envoy/authz/policy.rego".into(),
        b"package envoy.authz\nallow := false\n".to_vec(),
    );
    assert!(matches!(
        tampered.verify(&public, true),
        Err(BundleError::Signature(_))
    ));
    // An added file.
    let mut added = bundle.clone();
    added
        .files
        .insert("envoy/extra.rego".into(), b"package envoy.extra\n".to_vec());
    assert!(matches!(
        added.verify(&public, true),
        Err(BundleError::Signature(_))
    ));
    // A removed file.
    let mut removed = bundle.clone();
    removed.files.remove("envoy/data.json");
    assert!(matches!(
        removed.verify(&public, true),
        Err(BundleError::Signature(_))
    ));
    // Signed by another key.
    let other = EncodingKey::from_rsa_pem(&fixture("rsa-2.pem")).expect("key");
    let mut forged = sample();
    forged
        .sign(&other, Algorithm::RS256, Some("k1"))
        .expect("sign");
    assert!(matches!(
        forged.verify(&public, true),
        Err(BundleError::Signature(_))
    ));
    // Naming a key that is not configured.
    let mut unknown = sample();
    unknown
        .sign(&private, Algorithm::RS256, Some("k9"))
        .expect("sign");
    assert!(matches!(
        unknown.verify(&public, true),
        Err(BundleError::Signature(_))
    ));
}

#[test]
fn json_files_hash_in_canonical_form() {
    // Same JSON, different key order and spacing: same hash, as OPA computes it.
    let a = file_hash(
        "data.json",
        br#"{"b": 1, "a": {"y": [1, "x"], "x": null}}"#,
        "SHA-256",
    );
    let b = file_hash(
        "data.json",
        br#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#,
        "SHA-256",
    );
    assert_eq!(a, b);
    // Other files hash byte for byte.
    assert_ne!(
        file_hash("a.rego", b"package a\n", "SHA-256"),
        file_hash("a.rego", b"package a\n\n", "SHA-256")
    );
    let mut out = String::new();
    canonical_json(
        &serde_json::json!({"b": [1, {"d": 2, "c": "é<"}], "a": true}),
        &mut out,
    );
    assert_eq!(out, r#"{"a":true,"b":[1,{"c":"é<","d":2}]}"#);
}

#[test]
fn directory_bundles_skip_hidden_entries_but_read_the_manifest() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("a.rego"), "package a\n").expect("write");
    std::fs::write(dir.path().join(".manifest"), r#"{"revision": "dir-1"}"#).expect("write");
    std::fs::create_dir(dir.path().join("..2024_01_01")).expect("mkdir");
    std::fs::write(dir.path().join("..2024_01_01/a.rego"), "package a\n").expect("write");
    let b = Bundle::from_dir(dir.path()).expect("read");
    assert_eq!(
        b.files().keys().collect::<Vec<_>>(),
        [".manifest", "a.rego"]
    );
    assert_eq!(b.revision(), "dir-1");
}

#[test]
fn build_excludes_tests_and_writes_a_manifest() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("a.rego"), "package a\n").expect("write");
    std::fs::write(dir.path().join("a_test.rego"), "package a\n").expect("write");
    std::fs::write(dir.path().join("notes.md"), "# notes").expect("write");
    let b = build(dir.path(), Some("v2"), None).expect("build");
    assert_eq!(
        b.files().keys().collect::<Vec<_>>(),
        [".manifest", "a.rego"]
    );
    assert_eq!(b.revision(), "v2");
    let unnamed = build(dir.path(), None, None).expect("build");
    assert!(
        unnamed.revision().starts_with("sha256:"),
        "{}",
        unnamed.revision()
    );
}
