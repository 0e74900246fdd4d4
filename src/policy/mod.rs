//! Rego policy: load a directory of `.rego` and `data.json` files, compile once, evaluate the
//! configured rule per request with `&self` (no lock), and read the result into a `Verdict`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regorus::{CompiledPolicy, Engine, Value};

pub mod analysis;
pub mod result;

pub use result::{AppendAction, Grant, HeaderOp, Verdict, VerdictError};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no .rego files under {0}")]
    Empty(PathBuf),
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: not valid JSON data: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{}", .0.iter().map(|c| format!("{}:{}: unknown function `{}` (not a regorus builtin, not defined by the policy)", c.file, c.line, c.name)).collect::<Vec<_>>().join("\n"))]
    UnknownFunctions(Vec<analysis::UnknownCall>),
    #[error("compiling the policy for `{query}` failed: {message}")]
    Compile { query: String, message: String },
    #[error("evaluating `{query}` failed: {message}")]
    Eval { query: String, message: String },
}

/// A compiled policy and the rule it answers with. Cheap to share: evaluation takes `&self`.
pub struct PolicySet {
    compiled: CompiledPolicy,
    query: Arc<str>,
    files: Vec<PathBuf>,
}

// === impl PolicySet ===

impl PolicySet {
    /// Loads every `.rego` file (tests, `*_test.rego`, excepted) and every `data.json` under
    /// `dir`; a `data.json` in `dir/a/b/` is placed at `data.a.b`.
    pub fn load_dir(dir: &Path, query: &str) -> Result<PolicySet, PolicyError> {
        let mut files = Vec::new();
        walk(dir, &mut files)?;
        files.sort();
        let mut engine = Engine::new();
        let mut rego_files = Vec::new();
        for path in &files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".rego") && !name.ends_with("_test.rego") {
                let text = read(path)?;
                engine
                    .add_policy(path.display().to_string(), text)
                    .map_err(|e| PolicyError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                rego_files.push(path.clone());
            } else if name == "data.json" {
                let text = read(path)?;
                let value = Value::from_json_str(&text).map_err(|e| PolicyError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let prefix = path
                    .parent()
                    .and_then(|p| p.strip_prefix(dir).ok())
                    .map(|p| {
                        p.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                engine
                    .add_data(nest(value, &prefix))
                    .map_err(|e| PolicyError::Data {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            }
        }
        if rego_files.is_empty() {
            return Err(PolicyError::Empty(dir.to_path_buf()));
        }
        Self::compile(engine, query, rego_files)
    }

    fn compile(
        mut engine: Engine,
        query: &str,
        files: Vec<PathBuf>,
    ) -> Result<PolicySet, PolicyError> {
        let unknown = analysis::unknown_calls(engine.get_modules());
        if !unknown.is_empty() {
            return Err(PolicyError::UnknownFunctions(unknown));
        }
        // As OPA: a builtin error (e.g. to_number("abc")) makes the expression undefined.
        engine.set_strict_builtin_errors(false);
        let compile_err = |message: String| PolicyError::Compile {
            query: query.to_string(),
            message,
        };
        let compiled = engine
            .compile_with_entrypoint(&query.into())
            .map_err(|e| compile_err(e.to_string()))?;
        Ok(PolicySet {
            compiled,
            query: query.into(),
            files,
        })
    }

    pub fn query(&self) -> &str {
        &self.query
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Evaluates the rule against `input`. `Value::Undefined` means the rule had no value.
    pub fn evaluate(&self, input: Value) -> Result<Value, PolicyError> {
        self.compiled
            .eval_with_input(input)
            .map_err(|e| PolicyError::Eval {
                query: self.query.to_string(),
                message: e.to_string(),
            })
    }
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("query", &self.query)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Collects files below `dir`, following the `..data` symlink layout of Kubernetes volumes but
/// skipping hidden entries (`..2024_01_01...` timestamped copies would load twice).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn nest(value: Value, prefix: &[String]) -> Value {
    prefix.iter().rev().fold(value, |inner, key| {
        let mut map = std::collections::BTreeMap::new();
        map.insert(Value::from(key.as_str()), inner);
        Value::from(map)
    })
}

#[cfg(test)]
mod tests;
