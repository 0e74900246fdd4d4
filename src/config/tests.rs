use super::*;

const NO_ENV: [(&str, &str); 0] = [];

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(&Source::File("test.yaml".into()), yaml, NO_ENV)
}

const MINIMAL: &str = "
authn:
  issuers:
    - issuer: https://idp.example
      audiences: [svc]
      jwks_uri: https://idp.example/jwks.json
";

#[test]
fn embedded_defaults_are_valid() {
    let c = Config::load(None, NO_ENV).expect("embedded defaults load");
    assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:9191");
    assert_eq!(c.server.admin_addr.to_string(), "127.0.0.1:8181");
    assert_eq!(c.policy.query, "data.envoy.authz.allow");
    // The demo IdP, and the quickstart's own token exchange trusted by discovery.
    assert_eq!(c.authn.issuers.len(), 2);
    assert!(c.exchange.enabled);
    assert_eq!(c.authn.issuers[1].issuer, c.exchange.issuer);
    assert!(c.authn.issuers[1].discovery);
}

#[test]
fn exchange_is_validated_when_enabled() {
    let err = parse(&format!(
        "{MINIMAL}mint:\n  enabled: true\n  issuer: http://x\nexchange:\n  enabled: true\n  \
         issuer: http://x\n  algorithm: HS256\n  policy_query: allow\n  max_ttl: 0s\n  \
         max_request_bytes: 10\n  rate_limit:\n    per_second: -1\n"
    ))
    .unwrap_err()
    .to_string();
    for key in [
        "exchange.issuer: is also mint.issuer",
        "exchange.algorithm",
        "exchange.policy_query",
        "exchange.max_ttl",
        "exchange.max_request_bytes",
        "exchange.rate_limit.per_second",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let err = parse(&format!("{MINIMAL}exchange:\n  enabled: true\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exchange.issuer: is required"), "{err}");
    parse(&format!("{MINIMAL}exchange:\n  algorithm: HS256\n")).expect("disabled");
}

#[test]
fn defaults_fill_unset_keys() {
    let c = parse(MINIMAL).expect("valid");
    let iss = &c.authn.issuers[0];
    assert_eq!(iss.algorithms, vec!["RS256", "ES256", "EdDSA"]);
    assert_eq!(iss.leeway, Interval(Duration::from_secs(30)));
    assert_eq!(c.headers.subject, "x-onbehalf-subject");
    assert_eq!(c.authn.header, "authorization");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn unknown_key_is_an_error_naming_key_and_line() {
    let err = parse("server:\n  grpc_adr: 1.2.3.4:1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.yaml"), "{err}");
    assert!(err.contains("grpc_adr"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let err = parse("server:\n  shutdown_grace: soon\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shutdown_grace") && err.contains("soon"),
        "{err}"
    );
    let err = parse("server:\n  grpc_addr: nowhere\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grpc_addr") && err.contains("nowhere"),
        "{err}"
    );
}

#[test]
fn validation_reports_every_problem() {
    let yaml = "
authn:
  header: Authorization
  issuers:
    - issuer: https://a
      audiences: []
      algorithms: [HS256]
      jwks_file: a.json
      jwks_uri: https://a/jwks
policy:
  query: envoy.authz.allow
";
    let err = parse(yaml).unwrap_err().to_string();
    for expected in [
        "authn.header",
        "authn.issuers[0].audiences",
        "`HS256` is not allowed",
        "authn.issuers[0]: set exactly one of",
        "policy.query",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn no_issuer_is_an_error() {
    let err = parse("log:\n  level: info\n").unwrap_err().to_string();
    assert!(err.contains("authn.issuers"), "{err}");
    assert!(err.contains("authn.required: false"), "{err}");
    // Without required tokens, no issuer is needed: every bearer token is then refused.
    let c = parse("authn:\n  required: false\n").expect("valid");
    assert!(!c.authn.required && c.authn.issuers.is_empty());
}

#[test]
fn env_overrides_nested_keys_and_list_items() {
    let env = [
        ("ONBEHALF_SERVER__GRPC_ADDR", "unix:/tmp/onbehalf.sock"),
        ("ONBEHALF_AUTHN__ISSUERS__0__LEEWAY", "5s"),
        ("ONBEHALF_LOG__FORMAT", "text"),
        ("UNRELATED", "x"),
        ("ONBEHALF_CHECK_TOKEN", "not configuration: no section"),
    ];
    let c = Config::from_yaml(&Source::Embedded, MINIMAL, env).expect("valid");
    assert_eq!(
        c.server.grpc_addr,
        ListenAddr::Unix(PathBuf::from("/tmp/onbehalf.sock"))
    );
    assert_eq!(c.authn.issuers[0].leeway, Interval(Duration::from_secs(5)));
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn env_override_of_unknown_key_names_the_variable() {
    let env = [("ONBEHALF_SERVER__NOPE", "1")];
    let err = Config::from_yaml(&Source::Embedded, MINIMAL, env)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ONBEHALF_SERVER__NOPE"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let yaml = "
policy:
  dir: rego
authn:
  issuers:
    - issuer: https://a
      audiences: [svc]
      jwks_file: keys/jwks.json
";
    let c = Config::from_yaml(
        &Source::File("/etc/onbehalf/config.yaml".into()),
        yaml,
        NO_ENV,
    )
    .expect("valid");
    assert_eq!(
        c.policy.source(),
        PolicySourceConfig::Dir(PathBuf::from("/etc/onbehalf/rego"))
    );
    assert_eq!(
        c.authn.issuers[0].jwks_file.as_deref(),
        Some(Path::new("/etc/onbehalf/keys/jwks.json"))
    );
}

#[test]
fn durations_parse_and_print() {
    for (text, d) in [
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
    ] {
        let s: Interval = text.parse().expect(text);
        assert_eq!(s.0, d);
        assert_eq!(s.to_string().parse::<Interval>().expect("round trip").0, d);
    }
    for bad in ["", "5", "s", "1.5s", "-1s", "10 days"] {
        assert!(bad.parse::<Interval>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn mint_defaults_and_partial_sections() {
    let c = parse(MINIMAL).expect("valid");
    assert!(!c.mint.enabled);
    let c = parse(&format!(
        "{MINIMAL}mint:\n  enabled: true\n  issuer: https://sidecar.example\n  audience: svc\n"
    ))
    .expect("a partial mint section is valid");
    let m = &c.mint;
    assert_eq!(m.audience, ["svc"]);
    assert_eq!(m.ttl, Interval(Duration::from_secs(60)));
    assert_eq!(m.max_ttl, Interval(Duration::from_secs(300)));
    assert_eq!(m.header(), "authorization");
    assert_eq!(m.without_grant, WithoutGrant::Deny);
    assert_eq!(m.algorithm, "ES256");
    assert_eq!(m.format, MintFormat::Jwt);
    assert!(m.reuse);
    let c = parse(&format!(
        "{MINIMAL}mint:\n  enabled: true\n  issuer: i\n  format: txn-token\n  audience: [a, b]\n  without_grant: pass\n"
    ))
    .expect("valid");
    assert_eq!(c.mint.header(), "txn-token");
    assert_eq!(c.mint.audience, ["a", "b"]);
    assert_eq!(c.mint.without_grant, WithoutGrant::Pass);
}

#[test]
fn mint_problems_are_listed_by_key() {
    let err = parse(&format!(
        "{MINIMAL}mint:\n  enabled: true\n  algorithm: HS256\n  ttl: 10m\n  header: Upstream Token\n"
    ))
    .unwrap_err()
    .to_string();
    for key in ["mint.issuer", "mint.algorithm", "mint.ttl", "mint.header"] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let err = parse(&format!("{MINIMAL}mint:\n  without_grant: maybe\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("without_grant"), "{err}");
    // A disabled section is not checked beyond its types.
    parse(&format!("{MINIMAL}mint:\n  algorithm: HS256\n")).expect("disabled");
}

/// `(key path, default)` for every key of `docs/configuration.md` whose default is one
/// literal, e.g. `("cache.decisions.ttl", "1m")`.
fn documented_defaults() -> Vec<(String, String)> {
    let doc = include_str!("../../docs/configuration.md");
    let mut section = None;
    let mut out = Vec::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## `").and_then(|h| h.strip_suffix('`')) {
            section = Some(h.to_string());
            continue;
        }
        if line.starts_with("## ") || line.starts_with("### ") {
            // Issuer entries are list items, checked by `issuer_defaults_apply_key_by_key`.
            section = None;
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let (Some(key), Some(default)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let key = key.trim_end_matches('`');
        let literal = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`'));
        if let Some(literal) = literal
            && !key.contains('[')
        {
            out.push((format!("{section}.{key}"), literal.to_string()));
        }
    }
    out
}

/// The config with `keys` set (dotted paths, YAML scalars) on top of the minimal one.
fn with_keys(keys: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut tree: yaml_serde::Value = yaml_serde::from_str(MINIMAL).expect("yaml");
    for (path, value) in keys {
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        let value = yaml_serde::from_str(value).expect("scalar");
        set_path(&mut tree, &path, value).expect("path");
    }
    parse(&yaml_serde::to_string(&tree).expect("yaml"))
}

fn as_yaml(c: &Config) -> String {
    yaml_serde::to_string(c).expect("serialize")
}

#[test]
fn every_documented_default_applies_key_by_key() {
    let documented = documented_defaults();
    assert!(documented.len() > 30, "{documented:?}");
    for (key, default) in &documented {
        // A sibling in the same section, so the section is given in part without `key`.
        let section = key.rsplit_once('.').map_or("", |(s, _)| s);
        let sibling = documented
            .iter()
            .find(|(k, _)| k != key && k.rsplit_once('.').map(|(s, _)| s) == Some(section));
        let mut without: Vec<(&str, &str)> = Vec::new();
        if let Some((k, v)) = sibling {
            without.push((k, v));
        }
        let omitted =
            with_keys(&without).unwrap_or_else(|e| panic!("{key} omitted, {without:?} given: {e}"));
        let mut with = without.clone();
        with.push((key, default));
        let explicit = with_keys(&with).unwrap_or_else(|e| panic!("{key}: {default} given: {e}"));
        assert_eq!(
            as_yaml(&omitted),
            as_yaml(&explicit),
            "{key}: omitting it does not give the documented default `{default}`"
        );
    }
}

#[test]
fn a_cache_section_may_be_given_in_part() {
    let c = with_keys(&[("cache.decisions.enabled", "false")]).expect("valid");
    assert!(!c.cache.decisions.enabled);
    assert_eq!(c.cache.decisions.ttl, Interval(Duration::from_secs(60)));
    assert_eq!(c.cache.decisions.max_entries, 100_000);
    assert_eq!(c.cache.tokens.max_entries, 10_000);
    let err = with_keys(&[("cache.tokens.size", "5")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("size"), "{err}");
}

#[test]
fn issuer_defaults_apply_key_by_key() {
    let doc = include_str!("../../docs/configuration.md");
    let table = doc
        .split("### `authn.issuers[]`")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .expect("issuer table");
    let base = parse(MINIMAL).expect("valid").authn.issuers[0].clone();
    let base = yaml_serde::to_value(&base).expect("yaml");
    let mut checked = 0;
    for row in table.lines().filter_map(|l| l.strip_prefix("| `")) {
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].trim_end_matches('`');
        let Some(default) = cells[1]
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`'))
        else {
            continue;
        };
        let path = format!("authn.issuers.0.{key}");
        let explicit = with_keys(&[(&path, default)]).expect("valid");
        let explicit = yaml_serde::to_value(&explicit.authn.issuers[0]).expect("yaml");
        assert_eq!(
            base, explicit,
            "authn.issuers[].{key}: documented default `{default}`"
        );
        checked += 1;
    }
    assert!(checked >= 6, "{checked} issuer keys checked");
}

#[test]
fn secrets_never_print() {
    let c = with_keys(&[("policy.bearer_token", "s3cr3t-t0ken")]).expect("valid");
    assert_eq!(
        c.policy.bearer_token.as_ref().map(Secret::expose),
        Some("s3cr3t-t0ken")
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("[redacted]"));
}

#[test]
fn route_queries_must_be_named_rule_paths() {
    let base = "authn:\n  required: false\npolicy:\n  queries:\n";
    let c = parse(&format!("{base}    mcp: data.mcp.authz.allow\n")).expect("valid");
    assert_eq!(c.policy.queries["mcp"], "data.mcp.authz.allow");
    for bad in [
        "    mcp: mcp.authz.allow\n",
        "    mcp: \"data.x := 1\"\n",
        "    \"bad name\": data.x.y\n",
    ] {
        let err = parse(&format!("{base}{bad}")).unwrap_err().to_string();
        assert!(err.contains("policy.queries."), "{bad}: {err}");
    }
}
