//! The Kubernetes manifests in deploy/kubernetes, rendered by `kubectl kustomize` (the base,
//! every overlay, the Istio example) and validated offline: schemas (kubernetes-validate),
//! the Envoy config they carry (`envoy --mode validate`), the onbehalf configs they carry,
//! and the policies they ship equal to the repository's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::envoy::envoy_bin;

/// Every kustomization a user applies.
const KUSTOMIZATIONS: [&str; 4] = [
    "base",
    "overlays/bundle-server",
    "overlays/otel-collector",
    "istio",
];

fn kubernetes() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// `kubectl kustomize DIR`, as `kubectl apply -k` renders it.
fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(kubernetes().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("run kubectl kustomize (kubectl is needed): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn documents(yaml: &str) -> Vec<yaml_serde::Value> {
    yaml.split("\n---\n")
        .map(|doc| yaml_serde::from_str(doc).expect("yaml"))
        .collect()
}

/// The `data` entry `key` of the ConfigMap whose name starts with `name` in `docs`.
fn config_map_entry(docs: &[yaml_serde::Value], name: &str, key: &str) -> String {
    docs.iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name))
        })
        .and_then(|d| d["data"][key].as_str())
        .unwrap_or_else(|| panic!("no ConfigMap {name} with data.{key}"))
        .to_string()
}

fn validate_schemas(file: &Path) {
    let python = std::env::var("ONBEHALF_TEST_PYTHON")
        .expect("ONBEHALF_TEST_PYTHON is not set: run the suite with scripts/test.sh");
    let validator = PathBuf::from(python).with_file_name("kubernetes-validate");
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", validator.display()));
    assert!(
        out.status.success(),
        "kubernetes-validate {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_kustomization_renders_and_matches_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tmp");
    for kustomization in KUSTOMIZATIONS {
        let file = dir.path().join(kustomization.replace('/', "-") + ".yaml");
        let rendered = render(kustomization);
        std::fs::write(&file, &rendered).expect("write");
        validate_schemas(&file);
        // Every pod runs as non-root, read-only, without capabilities, with RuntimeDefault
        // seccomp; every one is scraped by Prometheus' annotation convention.
        for doc in documents(&rendered)
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Deployment"))
        {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let pod = &doc["spec"]["template"];
            let security = &pod["spec"]["securityContext"];
            assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{name}");
            assert_eq!(
                security["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault"),
                "{name}"
            );
            assert_eq!(
                pod["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
                Some("true"),
                "{name}"
            );
            for container in pod["spec"]["containers"].as_sequence().expect("containers") {
                let cname = container["name"].as_str().unwrap_or_default();
                if cname == "service-b" {
                    continue;
                }
                let security = &container["securityContext"];
                assert_eq!(
                    security["readOnlyRootFilesystem"].as_bool(),
                    Some(true),
                    "{name}/{cname}"
                );
                assert_eq!(
                    security["capabilities"]["drop"][0].as_str(),
                    Some("ALL"),
                    "{name}/{cname}"
                );
            }
        }
    }
}

#[test]
fn the_envoy_config_map_validates() {
    let docs = documents(&render("base"));
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("envoy.yaml");
    std::fs::write(
        &file,
        config_map_entry(&docs, "service-b-envoy", "envoy.yaml"),
    )
    .expect("write");
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
fn every_onbehalf_config_map_is_a_valid_config() {
    let base = documents(&render("base"));
    let exchange = parse_config(&config_map_entry(
        &base,
        "onbehalf-exchange",
        "onbehalf.yaml",
    ));
    assert!(exchange.exchange.enabled);
    assert_eq!(
        exchange.exchange.addr.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:8282")
    );
    let sidecar = parse_config(&config_map_entry(
        &base,
        "service-b-onbehalf",
        "onbehalf.yaml",
    ));
    assert_eq!(sidecar.server.admin_addr.to_string(), "0.0.0.0:8181");
    // The sidecars trust the issuer the exchange signs as.
    assert!(
        sidecar
            .authn
            .issuers
            .iter()
            .any(|i| i.issuer == exchange.exchange.issuer && i.discovery)
    );
    let bundled = documents(&render("overlays/bundle-server"));
    let bundled = parse_config(&config_map_entry(
        &bundled,
        "service-b-onbehalf",
        "onbehalf.yaml",
    ));
    assert!(bundled.policy.bundle_url.is_some() && bundled.policy.signing.required);
    let istio = documents(&render("istio"));
    let mesh = parse_config(&config_map_entry(&istio, "onbehalf", "onbehalf.yaml"));
    assert_eq!(mesh.server.grpc_addr.to_string(), "0.0.0.0:9191");
}

/// The collector overlay points every onbehalf at the collector Service it deploys, with the
/// standard OTLP variables `serve` reads.
#[test]
fn the_otel_collector_overlay_sends_every_onbehalf_to_its_collector() {
    let docs = documents(&render("overlays/otel-collector"));
    let service = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Service")
                && d["metadata"]["name"].as_str() == Some("otel-collector")
        })
        .expect("the collector's Service");
    let grpc_port = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("otlp-grpc"))
        .and_then(|p| p["port"].as_u64())
        .expect("the OTLP gRPC port");
    let mut sidecars = 0;
    for deployment in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Deployment"))
    {
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
            .iter()
            .filter(|c| c["name"].as_str() == Some("onbehalf"))
        {
            let env = container["env"].as_sequence().expect("env");
            let value = |name: &str| {
                env.iter()
                    .find(|e| e["name"].as_str() == Some(name))
                    .and_then(|e| e["value"].as_str())
                    .map(str::to_string)
            };
            assert_eq!(
                value("OTEL_EXPORTER_OTLP_ENDPOINT"),
                Some(format!("http://otel-collector:{grpc_port}"))
            );
            assert!(value("OTEL_SERVICE_NAME").is_some());
            sidecars += 1;
        }
    }
    assert_eq!(sidecars, 2, "service-b's sidecar and the exchange");
}

#[test]
fn the_shipped_policies_are_the_repository_s() {
    let shipped = kubernetes().join("policies");
    for name in ["authz.rego", "data.json", "exchange.rego"] {
        assert_eq!(
            std::fs::read_to_string(shipped.join(name)).expect("shipped"),
            std::fs::read_to_string(repo().join("policies").join(name)).expect("policies/"),
            "deploy/kubernetes/policies/{name} differs from policies/{name}: copy it again"
        );
    }
}

/// The Istio provider points at the Service istio/ deploys, and the AuthorizationPolicy
/// sends Service B's requests to it (Istio's CRDs have no offline schema here: checked field
/// by field).
#[test]
fn the_istio_example_names_the_service_it_deploys() {
    let read = |name: &str| -> yaml_serde::Value {
        yaml_serde::from_str(
            &std::fs::read_to_string(kubernetes().join("istio").join(name)).expect("read"),
        )
        .expect("yaml")
    };
    let operator = read("istio-operator.yaml");
    let provider = &operator["spec"]["meshConfig"]["extensionProviders"][0];
    assert_eq!(provider["name"].as_str(), Some("onbehalf"));
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    assert_eq!(
        grpc["includeRequestBodyInCheck"]["packAsBytes"].as_bool(),
        Some(true)
    );
    let rendered = documents(&render("istio"));
    let service = rendered
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .expect("a Service");
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().expect("name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
    );
    assert_eq!(grpc["service"].as_str(), Some(host.as_str()));
    assert_eq!(
        grpc["port"].as_u64(),
        service["spec"]["ports"][0]["port"].as_u64()
    );
    let policy = read("authorization-policy.yaml");
    assert_eq!(policy["apiVersion"].as_str(), Some("security.istio.io/v1"));
    assert_eq!(policy["spec"]["action"].as_str(), Some("CUSTOM"));
    assert_eq!(
        policy["spec"]["provider"]["name"].as_str(),
        Some("onbehalf")
    );
}
