//! `onbehalf policy test DIR`: every rule named `test_*`, OPA's convention, evaluated with the
//! directory's policies and data (test files included). A test passes when its rule is true.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use regorus::Value;
use regorus::unstable::{Expr, Rule, RuleHead};

use super::{Bundle, PolicyError};

/// The outcome of one test rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub file: String,
    /// `data.<package>.<rule>`.
    pub name: String,
    pub outcome: TestOutcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TestOutcome {
    Pass,
    /// The rule was false or undefined.
    Fail,
    Error(String),
}

/// Runs every `test_*` rule under `dir`, in file then rule order.
pub fn run(dir: &Path) -> Result<Vec<TestResult>, PolicyError> {
    let bundle = Bundle::from_dir(dir)?;
    let origin = dir.display().to_string();
    let mut engine = super::new_engine();
    engine.set_strict_builtin_errors(false);
    for (name, bytes) in bundle.files() {
        let path = format!("{}/{name}", origin.trim_end_matches('/'));
        let file = name.rsplit('/').next().unwrap_or(name);
        if file.ends_with(".rego") {
            let text = String::from_utf8_lossy(bytes).into_owned();
            engine
                .add_policy(path.clone(), text)
                .map_err(|e| PolicyError::Parse {
                    path,
                    message: e.to_string(),
                })?;
        } else if file == "data.json" {
            let data_err = |message: String| PolicyError::Data {
                path: path.clone(),
                message,
            };
            let json: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| data_err(e.to_string()))?;
            let prefix: Vec<&str> = match name.rsplit_once('/') {
                Some((d, _)) => d.split('/').collect(),
                None => Vec::new(),
            };
            engine
                .add_data(super::nest(Value::from(json), &prefix))
                .map_err(|e| data_err(e.to_string()))?;
        }
    }
    let unknown = super::analysis::unknown_calls(engine.get_modules());
    if !unknown.is_empty() {
        return Err(PolicyError::UnknownFunctions(unknown));
    }

    let mut tests: BTreeSet<(String, String)> = BTreeSet::new();
    for module in engine.get_modules().clone() {
        let Some(package) = dotted(&module.package.refr) else {
            continue;
        };
        let file = module.package.span.source.file().clone();
        for rule in &module.policy {
            let Rule::Spec { head, .. } = rule.as_ref() else {
                continue;
            };
            let refr = match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                RuleHead::Func { .. } => continue,
            };
            if let Some(name) = dotted(refr).filter(|n| n.starts_with("test_")) {
                tests.insert((file.clone(), format!("data.{package}.{name}")));
            }
        }
    }

    let mut results = Vec::new();
    for (file, name) in tests {
        let start = Instant::now();
        let outcome = match engine.eval_rule(name.clone()) {
            Ok(Value::Bool(true)) => TestOutcome::Pass,
            Ok(_) => TestOutcome::Fail,
            Err(e) => TestOutcome::Error(e.to_string()),
        };
        results.push(TestResult {
            file,
            name,
            outcome,
            duration: start.elapsed(),
        });
    }
    Ok(results)
}

/// `pkg.rule` for a package or rule reference, without the leading `data`.
fn dotted(expr: &Expr) -> Option<String> {
    let path = super::analysis::dotted(expr)?;
    Some(path.strip_prefix("data.").unwrap_or(&path).to_string())
}
