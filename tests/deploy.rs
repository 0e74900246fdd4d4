//! The Kubernetes manifests in deploy/, validated offline: schemas (kubernetes-validate), the
//! Envoy config they carry (`envoy --mode validate`), and the onbehalf config they carry.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use crate::envoy::envoy_bin;

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// The `data` entry `key` of the ConfigMap in `file`.
fn config_map_entry(file: &str, key: &str) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes").join(file)).expect("read");
    let doc: yaml_serde::Value = yaml_serde::from_str(&text).expect("yaml");
    doc.get("data")
        .and_then(|d| d.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{file} has no data.{key}"))
        .to_string()
}

#[test]
fn manifests_match_the_kubernetes_schemas() {
    let python = std::env::var("ONBEHALF_TEST_PYTHON")
        .expect("ONBEHALF_TEST_PYTHON is not set: run the suite with scripts/test.sh");
    let validator = PathBuf::from(python).with_file_name("kubernetes-validate");
    let out = Command::new(&validator)
        .arg("--strict")
        .args(manifests())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", validator.display()));
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_envoy_config_map_validates() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, config_map_entry("envoy-config.yaml", "envoy.yaml")).expect("write");
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_exchange_config_map_is_a_valid_config() {
    let config = parse_config(&config_map_entry("exchange-config.yaml", "onbehalf.yaml"));
    assert!(config.exchange.enabled);
    assert_eq!(
        config.exchange.addr.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:8282")
    );
    // The sidecars trust the issuer the exchange signs as.
    let sidecar = parse_config(&config_map_entry("onbehalf-config.yaml", "onbehalf.yaml"));
    assert!(
        sidecar
            .authn
            .issuers
            .iter()
            .any(|i| i.issuer == config.exchange.issuer && i.discovery)
    );
}

#[test]
fn the_onbehalf_config_map_is_a_valid_config() {
    let yaml = config_map_entry("onbehalf-config.yaml", "onbehalf.yaml");
    let config = parse_config(&yaml);
    assert_eq!(config.server.admin_addr.to_string(), "0.0.0.0:8181");
}
