//! Static analysis of the parsed policy, done once at load time.
//!
//! - Unknown functions: regorus reports a call to an unknown function only when an evaluation
//!   reaches it; a policy calling `http.send` would then fail on some requests only. onbehalf refuses such a policy up front, naming file and line.
//! - What the policy reads (`reads`, in `reads.rs`): the `input` paths its answer can depend
//!   on, followed through the names bound to parts of the input, and whether it calls a
//!   builtin whose answer varies between calls (time, randomness). The decision cache keys on
//!   exactly those paths, and stays off for a policy that reads time or randomness.

use std::collections::HashSet;

use regorus::unstable::{BUILTINS, Expr, Literal, Module, Query, Ref, Rule, RuleHead};

pub use crate::input::Segment;
pub use reads::reads;

mod reads;
#[cfg(test)]
mod tests;

/// Builtins whose result is not a function of their arguments.
const NONDETERMINISTIC: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
    // Reads the clock unless its constraints give a `time`.
    "io.jwt.decode_verify",
];

/// What a policy can read that varies between requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// The `input` subtrees the policy references, minimal (no path below another); a path of
    /// length 0 is the whole input.
    pub input_paths: Vec<Vec<Segment>>,
    /// Non-deterministic builtins the policy calls anywhere: nothing may be cached then.
    pub nondeterministic: Vec<String>,
}

/// A call to a function that is neither a regorus builtin nor defined by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCall {
    pub name: String,
    pub file: String,
    pub line: u32,
}

/// Whether `query` (`data.a.b`) names no rule but an object the policy builds key by key,
/// rules below it (`b["allowed"] := ...` in package `a`).
pub fn builds_key_by_key(modules: &[Ref<Module>], query: &str) -> bool {
    let prefix = format!("{query}.");
    modules.iter().any(|module| {
        let Some(package) = dotted(&module.package.refr) else {
            return false;
        };
        let package = match package.starts_with("data.") {
            true => package,
            false => format!("data.{package}"),
        };
        module.policy.iter().any(|rule| {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                    ..
                } => refr,
                _ => return false,
            };
            dotted(refr).is_some_and(|name| format!("{package}.{name}").starts_with(&prefix))
        })
    })
}

/// Every call in `modules` whose function is unknown.
pub fn unknown_calls(modules: &[Ref<Module>]) -> Vec<UnknownCall> {
    // User functions may be called by their name, their package-qualified path, or through an
    // import alias; matching on the last path segment accepts all three.
    let mut user_functions: HashSet<String> = HashSet::new();
    for module in modules {
        for rule in &module.policy {
            if let Rule::Spec {
                head: RuleHead::Func { refr, .. },
                ..
            } = rule.as_ref()
                && let Some(name) = dotted(refr)
                && let Some(last) = name.rsplit('.').next()
            {
                user_functions.insert(last.to_string());
            }
        }
    }
    let mut unknown = Vec::new();
    for module in modules {
        walk(module, |expr, _| {
            let Expr::Call { fcn, span, .. } = expr else {
                return true;
            };
            let Some(name) = dotted(fcn) else {
                return true;
            };
            let last = name.rsplit('.').next().unwrap_or(&name);
            let known = name == "print"
                || BUILTINS.contains_key(name.as_str())
                || super::is_extension(&name)
                || user_functions.contains(last);
            if !known {
                unknown.push(UnknownCall {
                    name,
                    file: span.source.file().clone(),
                    line: span.line,
                });
            }
            true
        });
    }
    unknown
}

/// `a.b.c` for a reference made of a variable and dotted or string-indexed fields.
pub(crate) fn dotted(expr: &Expr) -> Option<String> {
    let mut parts = Vec::new();
    let mut node = expr;
    loop {
        match node {
            Expr::Var { value, .. } => {
                parts.push(value.as_string().ok()?.to_string());
                break;
            }
            Expr::RefDot { refr, field, .. } => {
                parts.push(field.1.as_string().ok()?.to_string());
                node = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                let Expr::String { value, .. } = index.as_ref() else {
                    return None;
                };
                parts.push(value.as_string().ok()?.to_string());
                node = refr;
            }
            _ => return None,
        }
    }
    parts.reverse();
    Some(parts.join("."))
}

/// Calls `f` on every expression of the module: rule heads, bodies, `with` modifiers,
/// comprehensions. `f` returns whether to visit the expression's children, and may queue
/// other expressions to visit. Iterative, so a deeply nested policy cannot overflow the stack.
fn walk<'a>(module: &'a Module, mut f: impl FnMut(&'a Expr, &mut Vec<&'a Expr>) -> bool) {
    let mut exprs: Vec<&Expr> = Vec::new();
    let mut queries: Vec<&Query> = Vec::new();
    for rule in &module.policy {
        match rule.as_ref() {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        exprs.push(refr);
                        exprs.extend(assign.iter().map(|a| a.value.as_ref()));
                    }
                    RuleHead::Set { refr, key, .. } => {
                        exprs.push(refr);
                        exprs.extend(key.iter().map(|k| k.as_ref()));
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        exprs.push(refr);
                        exprs.extend(args.iter().map(|a| a.as_ref()));
                        exprs.extend(assign.iter().map(|a| a.value.as_ref()));
                    }
                }
                for body in bodies {
                    exprs.extend(body.assign.iter().map(|a| a.value.as_ref()));
                    queries.push(&body.query);
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                exprs.push(refr);
                exprs.extend(args.iter().map(|a| a.as_ref()));
                exprs.push(value);
            }
        }
    }
    loop {
        if let Some(query) = queries.pop() {
            for stmt in &query.stmts {
                for m in &stmt.with_mods {
                    exprs.push(&m.refr);
                    exprs.push(&m.r#as);
                }
                match &stmt.literal {
                    Literal::SomeVars { .. } => {}
                    Literal::SomeIn {
                        key,
                        value,
                        collection,
                        ..
                    } => {
                        exprs.extend(key.iter().map(|k| k.as_ref()));
                        exprs.push(value);
                        exprs.push(collection);
                    }
                    Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => exprs.push(expr),
                    Literal::Every { domain, query, .. } => {
                        exprs.push(domain);
                        queries.push(query);
                    }
                }
            }
            continue;
        }
        let Some(expr) = exprs.pop() else { break };
        if f(expr, &mut exprs) {
            children(expr, &mut exprs, &mut queries);
        }
    }
}

/// Queues the direct children of `expr`: its sub-expressions in `exprs`, the queries of its
/// comprehensions in `queries`.
pub(crate) fn children<'a>(
    expr: &'a Expr,
    exprs: &mut Vec<&'a Expr>,
    queries: &mut Vec<&'a Query>,
) {
    match expr {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. }
        | Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            exprs.extend(items.iter().map(|i| i.as_ref()));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                exprs.push(k);
                exprs.push(v);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            exprs.push(term);
            queries.push(query);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            exprs.push(key);
            exprs.push(value);
            queries.push(query);
        }
        Expr::Call { fcn, params, .. } => {
            exprs.push(fcn);
            exprs.extend(params.iter().map(|p| p.as_ref()));
        }
        Expr::UnaryExpr { expr, .. } => exprs.push(expr),
        Expr::RefDot { refr, .. } => exprs.push(refr),
        Expr::RefBrack { refr, index, .. } => {
            exprs.push(refr);
            exprs.push(index);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            exprs.push(lhs);
            exprs.push(rhs);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            exprs.extend(key.iter().map(|k| k.as_ref()));
            exprs.push(value);
            exprs.push(collection);
        }
    }
}
