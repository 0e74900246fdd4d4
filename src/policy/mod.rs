//! Rego policy: compile a bundle once, evaluate the configured rule per request with `&self`
//! (no lock), and read the result into a `Verdict`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::VmError;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::LimitError;
use regorus::{CompiledPolicy, Engine, Value};

pub mod analysis;
pub mod bundle;
pub mod crypto;
pub mod jwt;
pub mod result;
pub mod source;
pub mod store;
pub mod testing;

pub use bundle::{Bundle, BundleError};
pub use result::{AppendAction, Grant, HeaderOp, Verdict, VerdictError};
pub use store::{PolicySnapshot, PolicyStore};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("the bundle holds no .rego files")]
    Empty,
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: not valid data: {message}")]
    Data { path: String, message: String },
    #[error("{path}: outside the bundle's roots {roots:?}")]
    OutsideRoots { path: String, roots: Vec<String> },
    #[error("{}", .0.iter().map(|c| format!("{}:{}: unknown function `{}` (not a regorus builtin, not defined by the policy)", c.file, c.line, c.name)).collect::<Vec<_>>().join("\n"))]
    UnknownFunctions(Vec<analysis::UnknownCall>),
    #[error("no module defines `{0}` (exchange.policy_query): a package at or above it is needed")]
    Undefined(String),
    #[error("compiling the policy for `{query}` failed: {message}")]
    Compile { query: String, message: String },
    #[error("evaluating `{query}` took longer than {limit:?}")]
    Timeout {
        query: String,
        limit: std::time::Duration,
    },
    #[error("evaluating `{query}` failed: {message}")]
    Eval { query: String, message: String },
    /// The evaluation did not finish within its slice of a serving thread: run it again
    /// off the serving threads, with the whole `eval_timeout`.
    #[error("the evaluation needs more than its slice of the serving thread")]
    OverBudget,
}

/// How long one evaluation may run, and where it is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// On a serving thread, sharing it with every request of its connections: a short slice.
    /// Past it the answer is `PolicyError::OverBudget`.
    Inline(std::time::Duration),
    /// Off the serving threads: the whole `policy.eval_timeout`.
    Full(std::time::Duration),
}

/// Evaluations the register VM could not finish for a reason other than a limit, answered
/// by the interpreter instead (process-wide, for `/metrics`).
static INTERPRETER_FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// How many evaluations fell back from the register VM to the interpreter.
pub fn interpreter_fallbacks() -> u64 {
    INTERPRETER_FALLBACKS.load(Ordering::Relaxed)
}

/// A compiled policy and the rule it answers with. Cheap to share: evaluation takes `&self`.
pub struct PolicySet {
    /// Unique to this compiled set in the process: decision-cache keys and the memo of a
    /// token's share of them are made per set, so that two rules of one bundle never share.
    id: u64,
    compiled: CompiledPolicy,
    query: Arc<str>,
    /// The rule evaluated for `query`: the query itself, or, when the query names a value
    /// its package builds key by key (`result["allowed"] := ...`, which regorus does not
    /// take as an entry point), a rule of one line whose value is the query's.
    entry: Arc<str>,
    files: Vec<String>,
    revision: Arc<str>,
    reads: analysis::Reads,
    /// The same policy for regorus' register VM, when it compiles there.
    vm: Option<VmProgram>,
    /// The engine it compiled from, prepared: the interpreter runs a copy of it per
    /// evaluation, with that evaluation's own time limit (never a process-wide one), for
    /// policies the VM cannot run and for other queries than `query` (the exchange's).
    engine: Engine,
    /// `data.<package>` of every module.
    packages: Vec<String>,
}

/// A policy compiled for the register VM, with the data it runs against.
struct VmProgram {
    id: u64,
    program: Arc<Program>,
    data: Value,
}

static NEXT_PROGRAM: AtomicU64 = AtomicU64::new(1);

static NEXT_SET: AtomicU64 = AtomicU64::new(1);

/// The package and rule of the one-line entry rule for a query that is not a rule.
const ENTRY_PACKAGE: &str = "onbehalf_entrypoint";
const ENTRY_RULE: &str = "answer";

thread_local! {
    /// One VM per worker thread, reused while its program stays active: setting up a VM
    /// (registers, data checks) costs more than a typical evaluation.
    static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

// === impl PolicySet ===

impl PolicySet {
    /// Loads a directory as a bundle (see `Bundle::from_dir`).
    pub fn load_dir(dir: &Path, query: &str) -> Result<PolicySet, PolicyError> {
        let bundle = Bundle::from_dir(dir)?;
        let set = Self::from_bundle(&bundle, query, &dir.display().to_string())?;
        Ok(set)
    }

    /// Compiles a bundle: every `.rego` file (tests, `*_test.rego`, excepted) and every
    /// `data.json`/`data.yaml`, placed at its directory's path (`a/b/data.json` is `data.a.b`).
    /// `origin` prefixes file names in error messages.
    pub fn from_bundle(
        bundle: &Bundle,
        query: &str,
        origin: &str,
    ) -> Result<PolicySet, PolicyError> {
        let roots = bundle.manifest().roots.clone().unwrap_or_default();
        let display = |name: &str| match origin.is_empty() {
            true => name.to_string(),
            false => format!("{}/{name}", origin.trim_end_matches('/')),
        };
        let mut engine = new_engine();
        let mut rego_files = Vec::new();
        for (name, bytes) in bundle.files() {
            let file = name.rsplit('/').next().unwrap_or(name);
            let dir: Vec<&str> = match name.rsplit_once('/') {
                Some((dir, _)) => dir.split('/').collect(),
                None => Vec::new(),
            };
            if file.ends_with(".rego") && !file.ends_with("_test.rego") {
                let text = std::str::from_utf8(bytes).map_err(|_| PolicyError::Parse {
                    path: display(name),
                    message: "not UTF-8".into(),
                })?;
                let package = engine
                    .add_policy(display(name), text.to_string())
                    .map_err(|e| PolicyError::Parse {
                        path: display(name),
                        message: e.to_string(),
                    })?;
                let package_path: Vec<&str> =
                    package.trim_start_matches("data.").split('.').collect();
                check_roots(&roots, &package_path, &display(name))?;
                rego_files.push(display(name));
            } else if file == "data.json" || file == "data.yaml" || file == "data.yml" {
                let data_err = |message: String| PolicyError::Data {
                    path: display(name),
                    message,
                };
                let json: serde_json::Value = match file {
                    "data.json" => {
                        serde_json::from_slice(bytes).map_err(|e| data_err(e.to_string()))?
                    }
                    _ => yaml_serde::from_slice(bytes).map_err(|e| data_err(e.to_string()))?,
                };
                if !json.is_object() {
                    return Err(data_err("the top level must be an object".into()));
                }
                check_roots(&roots, &dir, &display(name))?;
                engine
                    .add_data(nest(Value::from(json), &dir))
                    .map_err(|e| data_err(e.to_string()))?;
            }
        }
        if rego_files.is_empty() {
            return Err(PolicyError::Empty);
        }
        Self::compile(engine, query, rego_files, bundle.revision())
    }

    fn compile(
        mut engine: Engine,
        query: &str,
        files: Vec<String>,
        revision: String,
    ) -> Result<PolicySet, PolicyError> {
        let unknown = analysis::unknown_calls(engine.get_modules());
        if !unknown.is_empty() {
            return Err(PolicyError::UnknownFunctions(unknown));
        }
        let reads = analysis::reads(engine.get_modules(), query);
        let packages: Vec<String> = engine
            .get_modules()
            .iter()
            .filter_map(|m| analysis::dotted(&m.package.refr))
            .map(|p| match p.starts_with("data.") {
                true => p,
                false => format!("data.{p}"),
            })
            .collect();
        let data = engine.get_data();
        // As OPA: a builtin error (e.g. to_number("abc")) makes the expression undefined.
        engine.set_strict_builtin_errors(false);
        if packages
            .iter()
            .any(|p| *p == format!("data.{ENTRY_PACKAGE}"))
        {
            return Err(PolicyError::Compile {
                query: query.to_string(),
                message: format!("the package name {ENTRY_PACKAGE} is reserved by onbehalf"),
            });
        }
        let compile_err = |e: anyhow::Error| PolicyError::Compile {
            query: query.to_string(),
            message: e.to_string(),
        };
        let (entry, compiled) = match engine.compile_with_entrypoint(&query.into()) {
            Ok(compiled) => (query.to_string(), compiled),
            // OPA-Envoy's primer builds its decision key by key (`result["allowed"] :=
            // allow`): evaluate the query through a rule whose value it is.
            Err(_) if analysis::builds_key_by_key(engine.get_modules(), query) => {
                engine
                    .add_policy(
                        "onbehalf:entrypoint.rego".into(),
                        format!(
                            "package {ENTRY_PACKAGE}
{ENTRY_RULE} := {query}
"
                        ),
                    )
                    .map_err(compile_err)?;
                let entry = format!("data.{ENTRY_PACKAGE}.{ENTRY_RULE}");
                let compiled = engine
                    .compile_with_entrypoint(&entry.as_str().into())
                    .map_err(compile_err)?;
                (entry, compiled)
            }
            Err(e) => return Err(compile_err(e)),
        };
        let vm = match Compiler::compile_from_policy(&compiled, &[entry.as_str()]) {
            Ok(program) => {
                // Check the data against the program once here, not per worker thread.
                let mut check = RegoVM::new_with_policy(compiled.clone());
                check.load_program(program.clone());
                match check.set_data(data.clone()) {
                    Ok(()) => Some(VmProgram {
                        id: NEXT_PROGRAM.fetch_add(1, Ordering::Relaxed),
                        program,
                        data,
                    }),
                    Err(e) => {
                        tracing::info!(error = %e, "Policy data does not fit the VM; using the interpreter");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "Policy does not compile for the VM; using the interpreter");
                None
            }
        };
        Ok(PolicySet {
            id: NEXT_SET.fetch_add(1, Ordering::Relaxed),
            compiled,
            query: query.into(),
            entry: entry.into(),
            files,
            revision: revision.into(),
            reads,
            vm,
            engine,
            packages,
        })
    }

    pub fn query(&self) -> &str {
        &self.query
    }

    /// Unique to this compiled set in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    /// What the policy reads of its input, and whether it reads time or randomness.
    pub fn reads(&self) -> &analysis::Reads {
        &self.reads
    }

    /// Evaluates the rule against `input` within `budget`. `Value::Undefined` means the rule
    /// had no value.
    ///
    /// The register VM answers when the policy compiled for it. A VM evaluation stopped by its
    /// time limit is never run again on the interpreter (that would double the deadline): it
    /// is `OverBudget` inline, `Timeout` in full. Any other VM error is evaluated again by the
    /// interpreter — counted and logged at warn, with the reason — off the serving threads.
    pub fn evaluate(&self, input: Value, budget: Budget) -> Result<Value, PolicyError> {
        let (limit, inline) = match budget {
            Budget::Inline(d) => (d, true),
            Budget::Full(d) => (d, false),
        };
        if let Some(vm) = &self.vm {
            match self.evaluate_vm(vm, input.clone(), Some(limit)) {
                Ok(v) => return Ok(v),
                Err(VmError::TimeLimitExceeded { .. }) => {
                    return Err(match inline {
                        true => PolicyError::OverBudget,
                        false => PolicyError::Timeout {
                            query: self.query.to_string(),
                            limit,
                        },
                    });
                }
                // The interpreter's answer is a fallback: counted, logged, off the serving
                // threads.
                Err(_) if inline => return Err(PolicyError::OverBudget),
                Err(e) => {
                    INTERPRETER_FALLBACKS.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        error = %e,
                        policy.query = &*self.query,
                        "The register VM cannot evaluate this input; using the interpreter"
                    );
                }
            }
        }
        match self.evaluate_interpreter(input, limit) {
            Err(PolicyError::Timeout { .. }) if inline => Err(PolicyError::OverBudget),
            result => result,
        }
    }

    /// Whether evaluation runs on the register VM.
    pub fn uses_vm(&self) -> bool {
        self.vm.is_some()
    }

    /// The register VM with no time limit at all: only for measuring what the limit costs
    /// (`benches/hot_path.rs`). Never on a request's path.
    #[doc(hidden)]
    pub fn evaluate_untimed(&self, input: Value) -> Result<Value, PolicyError> {
        let vm = self.vm.as_ref().ok_or_else(|| PolicyError::Eval {
            query: self.query.to_string(),
            message: "the policy does not run on the VM".into(),
        })?;
        self.evaluate_vm(vm, input, None)
            .map_err(|e| PolicyError::Eval {
                query: self.query.to_string(),
                message: e.to_string(),
            })
    }

    fn evaluate_vm(
        &self,
        vm: &VmProgram,
        input: Value,
        limit: Option<std::time::Duration>,
    ) -> Result<Value, VmError> {
        VM.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(|e| internal(e.to_string()))?;
            if slot.as_ref().map(|(id, _)| *id) != Some(vm.id) {
                let mut machine = RegoVM::new_with_policy(self.compiled.clone());
                machine.load_program(vm.program.clone());
                machine.set_data(vm.data.clone())?;
                // Time bounds an evaluation, not a count of instructions (whose default
                // would send long but legitimate evaluations to the interpreter).
                machine.set_max_instructions(usize::MAX);
                *slot = Some((vm.id, machine));
            }
            let (_, machine) = slot.as_mut().ok_or_else(|| internal("no VM".into()))?;
            // Set for each evaluation: the VM carries its timer from one run to the next
            // otherwise (seen as evaluations of microseconds stopped by a 1 ms limit).
            machine.set_execution_timer_config(limit.map(timer));
            machine.set_input(input);
            machine.execute_entry_point_by_name(&self.entry)
        })
    }

    /// The interpreter, for policies the VM cannot run and as the reference the VM is tested
    /// against; stopped after `limit`.
    pub fn evaluate_interpreter(
        &self,
        input: Value,
        limit: std::time::Duration,
    ) -> Result<Value, PolicyError> {
        self.interpret(&self.entry, input, limit, |engine, query| {
            engine.eval_rule(query.to_string())
        })
    }

    /// Whether some module of the policy could define `query`: a package at or above it.
    pub fn defines(&self, query: &str) -> bool {
        self.packages.iter().any(|p| {
            query == p
                || query
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// Evaluates another query than the policy's own — a rule or a whole package, as OPA
    /// answers `data.a.b` — on the interpreter, stopped after `limit`. `Value::Undefined`
    /// means no value.
    pub fn evaluate_query(
        &self,
        query: &str,
        input: Value,
        limit: std::time::Duration,
    ) -> Result<Value, PolicyError> {
        self.interpret(query, input, limit, |engine, query| {
            let results = engine.eval_query(query.to_string(), false)?;
            let mut values = results
                .result
                .into_iter()
                .filter_map(|r| r.expressions.into_iter().next().map(|e| e.value));
            match (values.next(), values.next()) {
                (None, _) => Ok(Value::Undefined),
                (Some(v), None) => Ok(v),
                (Some(_), Some(_)) => Err(anyhow::anyhow!("the query has more than one value")),
            }
        })
    }

    /// Runs `eval` on a copy of the prepared engine, with `input` and a time limit of its own.
    fn interpret(
        &self,
        query: &str,
        input: Value,
        limit: std::time::Duration,
        eval: impl FnOnce(&mut Engine, &str) -> anyhow::Result<Value>,
    ) -> Result<Value, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(timer(limit));
        engine.set_input(input);
        eval(&mut engine, query).map_err(|e| match e.downcast_ref::<LimitError>() {
            Some(LimitError::TimeLimitExceeded { limit, .. }) => PolicyError::Timeout {
                query: query.to_string(),
                limit: *limit,
            },
            _ => PolicyError::Eval {
                query: query.to_string(),
                message: e.to_string(),
            },
        })
    }
}

/// A regorus engine with onbehalf's extensions (`io.jwt.*`, `crypto.*`).
pub(crate) fn new_engine() -> Engine {
    let mut engine = Engine::new();
    if let Err(e) = jwt::register(&mut engine).and_then(|()| crypto::register(&mut engine)) {
        // Only a name registered twice fails, which a test would catch.
        tracing::error!(error = %e, "builtin extensions not registered");
    }
    engine
}

/// Whether `name` is a builtin onbehalf adds to regorus'.
pub fn is_extension(name: &str) -> bool {
    jwt::provides(name) || crypto::provides(name)
}

/// Units of evaluation work (instructions, loop steps) between two reads of the clock: a read
/// costs about as much as the few dozen steps between, and a runaway policy still stops within
/// microseconds of its limit.
const EVAL_TIMER_INTERVAL: std::num::NonZeroU32 = std::num::NonZeroU32::new(64).unwrap();

fn timer(limit: std::time::Duration) -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit,
        check_interval: EVAL_TIMER_INTERVAL,
    }
}

fn internal(message: String) -> VmError {
    VmError::Internal { message, pc: 0 }
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("query", &self.query)
            .field("revision", &self.revision)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// A package or data path must lie under one of the manifest's roots, when it has any.
fn check_roots(roots: &[String], path: &[&str], name: &str) -> Result<(), PolicyError> {
    if roots.is_empty() || roots.iter().any(|r| r.is_empty()) {
        return Ok(());
    }
    let path: Vec<&str> = path.iter().copied().filter(|p| !p.is_empty()).collect();
    let inside = roots.iter().any(|root| {
        let root: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
        // Data at a parent of a root (e.g. top-level data.json) would write outside it.
        root.len() <= path.len() && root.iter().zip(&path).all(|(a, b)| a == b)
    });
    match inside {
        true => Ok(()),
        false => Err(PolicyError::OutsideRoots {
            path: name.to_string(),
            roots: roots.to_vec(),
        }),
    }
}

fn nest(value: Value, prefix: &[&str]) -> Value {
    prefix.iter().rev().fold(value, |inner, key| {
        let mut map = BTreeMap::new();
        map.insert(Value::from(*key), inner);
        Value::from(map)
    })
}

#[cfg(test)]
mod tests;
