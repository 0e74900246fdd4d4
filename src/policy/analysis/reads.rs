//! What a policy reads of its input, followed through the names that stand for parts of it.
//!
//! Policies written for OPA-Envoy rarely spell every reference out: they name a part of the
//! input once (`http_request := input.attributes.request.http`) and read through the name
//! (`http_request.headers.authorization`). Counting the name as a read of the whole part would
//! key the decision cache on every header, Envoy's fresh `x-request-id` among them, and no
//! decision would ever hit. So each expression is given an *alias*: the input paths its value
//! may be, and a read is recorded only where a value is used as a whole (compared, passed to
//! a builtin, put into the answer), at the alias' paths plus the fields used after the name.
//!
//! Followed: package rules with one definition (chains of them, across packages and through
//! imports), `import input.x as y`, local `:=`/`=` bindings, static fields and brackets,
//! `object.get(x, "k", d)`, and user functions (a call reads what the function's body reads
//! of each parameter). Anything else — a dynamic index, iteration, a value built from an
//! input value, a name bound twice, a construct not listed — reads the whole value, and what
//! cannot be followed at all reads the whole input: sound first.
//!
//! Absence is part of a key (see `key.rs`): a key records how far a path leads and what it
//! meets there, so a name that is bound (its value defined) and then read below is told apart
//! from a name that is not defined at all.

use std::collections::{BTreeMap, HashMap};

use regorus::unstable::{AssignOp, BUILTINS, Expr, Literal, Module, Query, Ref, Rule, RuleHead};

use super::{NONDETERMINISTIC, Reads, Segment, children, dotted};

type Path = Vec<Segment>;

/// Where an aliased value comes from: the input, or a parameter of the function whose body
/// is being summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Root {
    Input,
    Param(usize),
}

/// The paths an expression's value may be. Empty: the value is constant, or built from values
/// whose reads are already recorded.
type Alias = Vec<(Root, Path)>;

/// Aliases larger than this, or longer paths, are not followed (the whole input is read).
const MAX_ALIAS: usize = 64;
const MAX_PATH: usize = 64;
/// Expression nesting followed before giving up (reading the whole input).
const MAX_DEPTH: usize = 256;

/// What the policy's modules can read, for the rule or package `query` (`data.a.b`).
pub fn reads(modules: &[Ref<Module>], query: &str) -> Reads {
    let mut a = Analysis::new(modules);
    let keys: Vec<Vec<String>> = a.rules.keys().cloned().collect();
    for key in &keys {
        match a.is_function(key) {
            true => {
                a.function_summary(key);
            }
            false => {
                a.rule_alias(key);
            }
        }
    }
    // The query's answer is used whole: its value goes into the response.
    match query_path(query) {
        Some(path) => {
            let answer = a.data_ref(path, &[], &Scope::default(), 0);
            a.use_whole(&answer);
        }
        None => a.give_up(),
    }
    a.finish()
}

/// `data.a.b.c` as `[a, b, c]`; `None` for anything else (then everything counts as read).
fn query_path(query: &str) -> Option<Vec<String>> {
    let rest = query.trim().strip_prefix("data")?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<String> = rest
        .strip_prefix('.')?
        .split('.')
        .map(String::from)
        .collect();
    let plain = |p: &String| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    parts.iter().all(plain).then_some(parts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `name := value` (or `name if ...`): one value, which may alias the input.
    Complete,
    /// A function.
    Function,
    /// A default value.
    Default,
    /// Partial sets and objects, rules with a dynamic reference in their head: their
    /// values are read whole where they are built.
    Other,
}

struct Def<'m> {
    module: usize,
    rule: &'m Rule,
    kind: Kind,
}

enum Memo<T> {
    InProgress,
    Done(T),
}

/// What a function body reads of each parameter below it; `None`: the whole parameter.
type Summary = Vec<Option<Vec<Path>>>;

/// The names of one rule: what each local may alias, how often it is bound, how often it is
/// used other than being bound. Locals of nested queries share the rule's table: two
/// variables of one name merge, which only widens what is read.
#[derive(Default)]
struct Scope {
    module: usize,
    locals: HashMap<String, Alias>,
    binders: HashMap<String, u32>,
    uses: HashMap<String, u32>,
}

struct Analysis<'m> {
    /// Every rule by its full path below `data` (the static part of its head).
    rules: BTreeMap<Vec<String>, Vec<Def<'m>>>,
    /// Each module's package path and imports (name -> `input`/`data` path).
    packages: Vec<Vec<String>>,
    imports: Vec<HashMap<String, Import>>,
    rule_aliases: HashMap<Vec<String>, Memo<Alias>>,
    summaries: HashMap<Vec<String>, Memo<Summary>>,
    /// The parameters of the functions being summarised, innermost last.
    frames: Vec<Summary>,
    recording: bool,
    /// Rules and functions being analysed inside one another.
    nesting: usize,
    paths: Vec<Path>,
    nondeterministic: Vec<String>,
}

#[derive(Clone)]
enum Import {
    Input(Path),
    Data(Vec<String>),
}

/// One step of a reference: a field known before evaluation, or an expression.
#[derive(Clone)]
enum Step<'e> {
    Static(Segment),
    Dynamic(&'e Expr),
}

impl<'m> Analysis<'m> {
    fn new(modules: &'m [Ref<Module>]) -> Self {
        let mut a = Analysis {
            rules: BTreeMap::new(),
            packages: Vec::new(),
            imports: Vec::new(),
            rule_aliases: HashMap::new(),
            summaries: HashMap::new(),
            frames: Vec::new(),
            recording: true,
            nesting: 0,
            paths: Vec::new(),
            nondeterministic: Vec::new(),
        };
        for (index, module) in modules.iter().enumerate() {
            // Paths from their components, never a dotted string split again: a key may
            // hold a dot (`filterMetadata["envoy.filters.http.jwt_authn"]`).
            let mut package = static_path(&module.package.refr).unwrap_or_default();
            if package.first().is_some_and(|p| p == "data") {
                package.remove(0);
            }
            let mut imports = HashMap::new();
            for import in &module.imports {
                let Some((Expr::Var { value, .. }, steps)) = ref_steps(&import.refr) else {
                    continue;
                };
                let root = value.as_string().map(|r| r.to_string()).unwrap_or_default();
                let segments: Option<Vec<Segment>> = steps
                    .into_iter()
                    .map(|s| match s {
                        Step::Static(seg) => Some(seg),
                        Step::Dynamic(_) => None,
                    })
                    .collect();
                let Some(segments) = segments else {
                    a.paths.push(Vec::new()); // an import that cannot be followed
                    continue;
                };
                let name = match (&import.r#as, segments.last()) {
                    (Some(span), _) => span.text().to_string(),
                    (None, Some(Segment::Key(k))) => k.clone(),
                    (None, Some(Segment::Index(i))) => i.to_string(),
                    (None, None) => root.clone(),
                };
                let target = match root.as_str() {
                    "input" => Import::Input(segments),
                    "data" => Import::Data(
                        segments
                            .into_iter()
                            .map(|s| match s {
                                Segment::Key(k) => k,
                                Segment::Index(i) => i.to_string(),
                            })
                            .collect(),
                    ),
                    _ => continue, // rego.v1, future.keywords
                };
                imports.insert(name, target);
            }
            for rule in &module.policy {
                let (refr, kind) = match rule.as_ref() {
                    Rule::Spec { head, .. } => match head {
                        RuleHead::Compr { refr, .. } => (refr, Kind::Complete),
                        RuleHead::Set { refr, .. } => (refr, Kind::Other),
                        RuleHead::Func { refr, .. } => (refr, Kind::Function),
                    },
                    Rule::Default { refr, .. } => (refr, Kind::Default),
                };
                let (head, fully_static) = head_path(refr);
                let kind = match (kind, fully_static) {
                    (Kind::Complete, false) => Kind::Other,
                    (kind, _) => kind,
                };
                let mut key = package.clone();
                key.extend(head);
                a.rules.entry(key).or_default().push(Def {
                    module: index,
                    rule: rule.as_ref(),
                    kind,
                });
            }
            a.packages.push(package);
            a.imports.push(imports);
        }
        a
    }

    fn finish(mut self) -> Reads {
        let mut paths = std::mem::take(&mut self.paths);
        paths.sort();
        paths.dedup();
        // Keep only paths with no prefix in the set: a subtree covers everything below it.
        let mut minimal: Vec<Path> = Vec::new();
        for p in paths {
            if !minimal.iter().any(|m| p.starts_with(m)) {
                minimal.push(p);
            }
        }
        Reads {
            input_paths: minimal,
            nondeterministic: self.nondeterministic,
        }
    }

    /// Nothing more can be said: the whole input is read.
    fn give_up(&mut self) {
        self.paths.push(Vec::new());
    }

    /// Records that `alias`'s values are used whole.
    fn use_whole(&mut self, alias: &Alias) {
        if !self.recording {
            return;
        }
        for (root, path) in alias {
            match root {
                Root::Input => self.paths.push(path.clone()),
                Root::Param(i) => match self.frames.last_mut().and_then(|f| f.get_mut(*i)) {
                    Some(Some(reads)) => reads.push(path.clone()),
                    Some(None) => {}
                    None => self.paths.push(Vec::new()),
                },
            }
        }
    }

    // --- rules and functions ---

    /// The definitions of the rule at `key`.
    fn defs(&self, key: &[String]) -> Vec<(usize, &'m Rule, Kind)> {
        self.rules
            .get(key)
            .map(|defs| defs.iter().map(|d| (d.module, d.rule, d.kind)).collect())
            .unwrap_or_default()
    }

    fn is_function(&self, key: &[String]) -> bool {
        self.rules
            .get(key)
            .is_some_and(|defs| defs.iter().any(|d| d.kind == Kind::Function))
    }

    /// What the value of the rule at `key` may alias (recording the reads of its bodies).
    fn rule_alias(&mut self, key: &[String]) -> Alias {
        match self.rule_aliases.get(key) {
            Some(Memo::Done(alias)) => return alias.clone(),
            Some(Memo::InProgress) => {
                self.give_up();
                return Alias::new();
            }
            None => {}
        }
        self.rule_aliases.insert(key.to_vec(), Memo::InProgress);
        let defs = self.defs(key);
        // One definition (with its else branches) has one value; several may conflict,
        // which depends on their whole values.
        let complete = defs.iter().filter(|d| d.2 == Kind::Complete).count();
        let single = complete == 1
            && defs
                .iter()
                .all(|d| matches!(d.2, Kind::Complete | Kind::Default));
        let mut alias = Alias::new();
        let recording = std::mem::replace(&mut self.recording, true);
        for (module, rule, kind) in defs {
            let value = self.analyse_rule(module, rule, kind, None);
            match single {
                true => alias.extend(value),
                false => self.use_whole(&value),
            }
        }
        self.recording = recording;
        let alias = self.capped(alias);
        self.rule_aliases
            .insert(key.to_vec(), Memo::Done(alias.clone()));
        alias
    }

    /// `alias` deduplicated; past `MAX_ALIAS` paths or `MAX_PATH` steps it is not followed
    /// (the whole input is read), so that chains that double it cannot grow without bound.
    fn capped(&mut self, mut alias: Alias) -> Alias {
        alias.sort();
        alias.dedup();
        if alias.len() > MAX_ALIAS || alias.iter().any(|(_, p)| p.len() > MAX_PATH) {
            self.give_up();
            return Alias::new();
        }
        alias
    }

    /// What the function at `key` reads of each parameter.
    fn function_summary(&mut self, key: &[String]) -> Summary {
        match self.summaries.get(key) {
            Some(Memo::Done(summary)) => return summary.clone(),
            Some(Memo::InProgress) => {
                self.give_up();
                return Summary::new();
            }
            None => {}
        }
        self.summaries.insert(key.to_vec(), Memo::InProgress);
        let defs = self.defs(key);
        let mut summary: Summary = Vec::new();
        let recording = std::mem::replace(&mut self.recording, true);
        for (module, rule, kind) in defs {
            let arity = match rule {
                Rule::Spec {
                    head: RuleHead::Func { args, .. },
                    ..
                }
                | Rule::Default { args, .. } => args.len(),
                Rule::Spec { .. } => 0,
            };
            self.frames.push(vec![Some(Vec::new()); arity]);
            let value = self.analyse_rule(module, rule, kind, Some(arity));
            self.use_whole(&value);
            let frame = self.frames.pop().unwrap_or_default();
            if summary.len() < frame.len() {
                summary.resize(frame.len(), Some(Vec::new()));
            }
            for (slot, reads) in summary.iter_mut().zip(frame) {
                *slot = match (slot.take(), reads) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    _ => None,
                };
            }
        }
        self.recording = recording;
        self.summaries
            .insert(key.to_vec(), Memo::Done(summary.clone()));
        summary
    }

    /// Records what one definition reads and returns what its value may alias (for a
    /// function, `arity` is set and the value's reads are recorded by the caller).
    fn analyse_rule(
        &mut self,
        module: usize,
        rule: &'m Rule,
        kind: Kind,
        arity: Option<usize>,
    ) -> Alias {
        if self.nesting > MAX_DEPTH {
            self.give_up();
            return Alias::new();
        }
        self.nesting += 1;
        let alias = self.analyse_rule_body(module, rule, kind, arity);
        self.nesting -= 1;
        alias
    }

    fn analyse_rule_body(
        &mut self,
        module: usize,
        rule: &'m Rule,
        kind: Kind,
        arity: Option<usize>,
    ) -> Alias {
        let mut scope = Scope {
            module,
            ..Scope::default()
        };
        let (head_exprs, values, bodies, params): (Vec<&Expr>, Vec<&Expr>, Vec<&Query>, &[_]) =
            match rule {
                Rule::Spec { head, bodies, .. } => {
                    let mut values: Vec<&Expr> = bodies
                        .iter()
                        .filter_map(|b| b.assign.as_ref())
                        .map(|a| a.value.as_ref())
                        .collect();
                    let queries = bodies.iter().map(|b| b.query.as_ref()).collect();
                    match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            values.extend(assign.iter().map(|a| a.value.as_ref()));
                            (vec![refr.as_ref()], values, queries, &[][..])
                        }
                        RuleHead::Set { refr, key, .. } => {
                            let mut exprs = vec![refr.as_ref()];
                            exprs.extend(key.iter().map(|k| k.as_ref()));
                            (exprs, values, queries, &[][..])
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            values.extend(assign.iter().map(|a| a.value.as_ref()));
                            (vec![refr.as_ref()], values, queries, &args[..])
                        }
                    }
                }
                Rule::Default {
                    refr, value, args, ..
                } => (
                    vec![refr.as_ref()],
                    vec![value.as_ref()],
                    Vec::new(),
                    &args[..],
                ),
            };

        // Parameters: a plain name aliases its argument; any other pattern reads it whole.
        if arity.is_some() {
            for (i, param) in params.iter().enumerate() {
                match param.as_ref() {
                    Expr::Var { value, .. } => {
                        let Ok(name) = value.as_string() else {
                            continue;
                        };
                        if name.as_ref() == "_" {
                            continue;
                        }
                        scope
                            .locals
                            .entry(name.to_string())
                            .or_default()
                            .push((Root::Param(i), Vec::new()));
                        *scope.binders.entry(name.to_string()).or_default() += 1;
                    }
                    pattern => {
                        if let Some(Some(frame)) = self.frames.last_mut().map(|f| f.get_mut(i)) {
                            *frame = None;
                        }
                        scan(
                            pattern,
                            &mut |name| count(&mut scope.binders, name),
                            &mut Vec::new(),
                        );
                    }
                }
            }
        }

        // Who binds and who uses each name, everywhere in the rule (comprehensions and
        // `every` bodies included).
        let mut bindings: Vec<(String, &Expr)> = Vec::new();
        let mut queries: Vec<&Query> = bodies.clone();
        for e in head_exprs.iter().chain(values.iter()) {
            scan(e, &mut |n| count(&mut scope.uses, n), &mut queries);
        }
        while let Some(query) = queries.pop() {
            for stmt in &query.stmts {
                for m in &stmt.with_mods {
                    scan(&m.refr, &mut |n| count(&mut scope.uses, n), &mut queries);
                    scan(&m.r#as, &mut |n| count(&mut scope.uses, n), &mut queries);
                }
                match &stmt.literal {
                    Literal::SomeVars { .. } => {}
                    Literal::SomeIn {
                        key,
                        value,
                        collection,
                        ..
                    } => {
                        for e in key.iter().map(|k| k.as_ref()).chain([value.as_ref()]) {
                            scan(
                                e,
                                &mut |n| {
                                    count(&mut scope.uses, n);
                                    count(&mut scope.binders, n);
                                },
                                &mut queries,
                            );
                        }
                        scan(collection, &mut |n| count(&mut scope.uses, n), &mut queries);
                    }
                    Literal::Every {
                        key,
                        value,
                        domain,
                        query,
                        ..
                    } => {
                        for span in key.iter().chain([value]) {
                            count(&mut scope.binders, span.text());
                        }
                        scan(domain, &mut |n| count(&mut scope.uses, n), &mut queries);
                        queries.push(query);
                    }
                    Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                        match binding(expr) {
                            Some((name, value)) => {
                                count(&mut scope.binders, name);
                                scan(value, &mut |n| count(&mut scope.uses, n), &mut queries);
                                bindings.push((name.to_string(), value));
                            }
                            None => {
                                scan(expr, &mut |n| count(&mut scope.uses, n), &mut queries);
                            }
                        }
                    }
                }
            }
        }

        // What each local may alias: to a fixed point, since a body is not evaluated in
        // the order it is written.
        let recording = std::mem::replace(&mut self.recording, false);
        let mut settled = false;
        for _ in 0..=bindings.len() + 1 {
            let mut changed = false;
            for (name, value) in &bindings {
                let alias = self.eval(value, &scope, 0);
                let entry = scope.locals.entry(name.clone()).or_default();
                for a in alias {
                    if !entry.contains(&a) {
                        entry.push(a);
                        changed = true;
                    }
                }
            }
            let oversized = scope
                .locals
                .values()
                .any(|a| a.len() > MAX_ALIAS || a.iter().any(|(_, p)| p.len() > MAX_PATH));
            if oversized {
                break;
            }
            if !changed {
                settled = true;
                break;
            }
        }
        self.recording = recording;
        if !settled {
            self.give_up();
            scope.locals.clear();
        }

        // Now record: every statement of every body, then the value.
        for body in &bodies {
            self.record_query(body, &scope);
        }
        for e in &head_exprs {
            // The head's own reference: only dynamic parts (`r[x]`) are evaluated.
            if let Some(steps) = ref_steps(e) {
                for step in steps.1 {
                    if let Step::Dynamic(index) = step {
                        let alias = self.eval(index, &scope, 0);
                        self.use_whole(&alias);
                    }
                }
            } else {
                let alias = self.eval(e, &scope, 0);
                self.use_whole(&alias);
            }
        }
        // A set rule's key is its value.
        if let Rule::Spec {
            head: RuleHead::Set { key: Some(key), .. },
            ..
        } = rule
        {
            let alias = self.eval(key, &scope, 0);
            self.use_whole(&alias);
        }
        let mut alias = Alias::new();
        for value in values {
            let a = self.eval(value, &scope, 0);
            match kind {
                Kind::Complete | Kind::Function => alias.extend(a),
                Kind::Default | Kind::Other => self.use_whole(&a),
            }
        }
        alias
    }

    /// Records what the statements of `query` read.
    fn record_query(&mut self, query: &'m Query, scope: &Scope) {
        for stmt in &query.stmts {
            for m in &stmt.with_mods {
                // Replacing part of `input` is followed (target and value read whole);
                // replacing a rule or a function (`with data.x as v`, `with f as g`) is not.
                let on_input = matches!(
                    ref_steps(&m.refr),
                    Some((Expr::Var { value, .. }, _)) if value.as_string().is_ok_and(|v| v.as_ref() == "input")
                );
                if !on_input {
                    self.give_up();
                }
                if let Some(name) = dotted(&m.r#as)
                    && NONDETERMINISTIC.contains(&name.as_str())
                    && !self.nondeterministic.contains(&name)
                {
                    self.nondeterministic.push(name);
                }
                let target = self.eval(&m.refr, scope, 0);
                self.use_whole(&target);
                let value = self.eval(&m.r#as, scope, 0);
                self.use_whole(&value);
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    for e in key
                        .iter()
                        .map(|k| k.as_ref())
                        .chain([value.as_ref(), collection.as_ref()])
                    {
                        let alias = self.eval(e, scope, 0);
                        self.use_whole(&alias);
                    }
                }
                Literal::Every { domain, query, .. } => {
                    let alias = self.eval(domain, scope, 0);
                    self.use_whole(&alias);
                    self.record_query(query, scope);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => match binding(expr) {
                    Some((name, value)) => {
                        let alias = self.eval(value, scope, 0);
                        // Bound once and read below: the reads below are what counts. Bound
                        // twice, the second binding compares; never used, only whether it is
                        // defined counts; a global name compares with it.
                        let whole = scope.binders.get(name).copied().unwrap_or(0) > 1
                            || scope.uses.get(name).copied().unwrap_or(0) == 0
                            || !self.globals(scope.module, name).is_empty();
                        if whole {
                            self.use_whole(&alias);
                        }
                    }
                    None => {
                        let alias = self.eval(expr, scope, 0);
                        self.use_whole(&alias);
                    }
                },
            }
        }
    }

    // --- expressions ---

    /// What `expr`'s value may alias; records the reads of its parts.
    fn eval(&mut self, expr: &'m Expr, scope: &Scope, depth: usize) -> Alias {
        if depth > MAX_DEPTH {
            if self.recording {
                self.give_up();
            }
            return Alias::new();
        }
        let depth = depth + 1;
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => Alias::new(),
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                let Some((root, steps)) = ref_steps(expr) else {
                    return Alias::new();
                };
                match root {
                    Expr::Var { value, .. } => {
                        let name = value.as_string().map(|n| n.to_string()).unwrap_or_default();
                        self.name_ref(&name, &steps, scope, depth)
                    }
                    other => {
                        let base = self.eval(other, scope, depth);
                        self.apply(base, &steps, scope, depth)
                    }
                }
            }
            Expr::Call { fcn, params, .. } => self.call(fcn, params, scope, depth),
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for item in items {
                    let alias = self.eval(item, scope, depth);
                    self.use_whole(&alias);
                }
                Alias::new()
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    for e in [k, v] {
                        let alias = self.eval(e, scope, depth);
                        self.use_whole(&alias);
                    }
                }
                Alias::new()
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.comprehension(&[term], query, scope, depth)
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => self.comprehension(&[key, value], query, scope, depth),
            Expr::UnaryExpr { expr, .. } => {
                let alias = self.eval(expr, scope, depth);
                self.use_whole(&alias);
                Alias::new()
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                for e in [lhs, rhs] {
                    let alias = self.eval(e, scope, depth);
                    self.use_whole(&alias);
                }
                Alias::new()
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                for e in key.iter().chain([value, collection]) {
                    let alias = self.eval(e, scope, depth);
                    self.use_whole(&alias);
                }
                Alias::new()
            }
        }
    }

    fn comprehension(
        &mut self,
        terms: &[&'m Ref<Expr>],
        query: &'m Query,
        scope: &Scope,
        depth: usize,
    ) -> Alias {
        if self.recording {
            self.record_query(query, scope);
            for term in terms {
                let alias = self.eval(term, scope, depth);
                self.use_whole(&alias);
            }
        }
        Alias::new()
    }

    /// A reference rooted at the name `name`, then `steps`.
    fn name_ref(&mut self, name: &str, steps: &[Step<'m>], scope: &Scope, depth: usize) -> Alias {
        match name {
            "input" => return self.apply(vec![(Root::Input, Vec::new())], steps, scope, depth),
            "data" => return self.data_ref(Vec::new(), steps, scope, depth),
            _ => {}
        }
        let local = scope.locals.get(name).cloned();
        let globals = self.globals(scope.module, name);
        let mut out = Alias::new();
        if let Some(alias) = &local {
            out.extend(self.apply(alias.clone(), steps, scope, depth));
        }
        // A name that is both an import and a rule (or a local): every meaning is followed.
        for global in &globals {
            match global {
                Import::Input(path) => {
                    out.extend(self.apply(vec![(Root::Input, path.clone())], steps, scope, depth));
                }
                Import::Data(path) => out.extend(self.data_ref(path.clone(), steps, scope, depth)),
            }
        }
        if local.is_none() && globals.is_empty() {
            // A variable bound by iteration or unification: derived, already recorded.
            out.extend(self.apply(Alias::new(), steps, scope, depth));
        }
        out
    }

    /// What the module's `name` stands for outside the rule: an import, a rule of its
    /// package (as a `data` path), or both.
    fn globals(&self, module: usize, name: &str) -> Vec<Import> {
        let mut out = Vec::new();
        if let Some(import) = self.imports.get(module).and_then(|i| i.get(name)) {
            out.push(import.clone());
        }
        if let Some(package) = self.packages.get(module) {
            let mut path = package.clone();
            path.push(name.to_string());
            if self.has_rules_at(&path) {
                out.push(Import::Data(path));
            }
        }
        out
    }

    /// Whether a rule is at `path` or below it.
    fn has_rules_at(&self, path: &[String]) -> bool {
        self.rules
            .range(path.to_vec()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(path))
    }

    /// `data` at `prefix`, then `steps`, walked from the root as regorus resolves it: the
    /// deepest rule on the path gives the value (a rule higher up is read whole too, and a
    /// document holding rules is read whole when used as such); base data and paths no rule
    /// is on are the same for every request.
    fn data_ref(
        &mut self,
        prefix: Vec<String>,
        steps: &[Step<'m>],
        scope: &Scope,
        depth: usize,
    ) -> Alias {
        let all: Vec<Step<'m>> = prefix
            .into_iter()
            .map(|k| Step::Static(Segment::Key(k)))
            .chain(steps.iter().cloned())
            .collect();
        let mut path: Vec<String> = Vec::new();
        let mut i = 0;
        loop {
            let rest = all.get(i..).unwrap_or_default();
            let next = match all.get(i) {
                Some(Step::Static(Segment::Key(k))) => Some(k.clone()),
                _ => None,
            };
            let deeper = next.as_ref().is_some_and(|k| {
                let mut p = path.clone();
                p.push(k.clone());
                self.has_rules_at(&p)
            });
            if self.rules.contains_key(&path) {
                let alias = match self.is_function(&path) {
                    true => Alias::new(),
                    false => self.rule_alias(&path),
                };
                if !deeper {
                    if next.is_none() {
                        // Used as a document: the rules below it are in its value too.
                        self.use_rules_below(&path, false);
                    }
                    return self.apply(alias, rest, scope, depth);
                }
                // A rule further down the path answers; this one may too.
                self.use_whole(&alias);
            } else if !self.has_rules_at(&path) {
                // Base data, or nothing: the same for every request.
                return self.apply(Alias::new(), rest, scope, depth);
            } else if next.is_none() {
                // A document holding rules is used as a whole: every rule in it is.
                self.use_rules_below(&path, true);
                return self.apply(Alias::new(), rest, scope, depth);
            }
            path.push(next.unwrap_or_default());
            i += 1;
        }
    }

    /// Every rule below `path` (and at it, when `inclusive`) used whole.
    fn use_rules_below(&mut self, path: &[String], inclusive: bool) {
        let below: Vec<Vec<String>> = self
            .rules
            .range(path.to_vec()..)
            .take_while(|(k, _)| k.starts_with(path))
            .filter(|(k, _)| inclusive || k.len() > path.len())
            .filter(|(_, defs)| defs.iter().all(|d| d.kind != Kind::Function))
            .map(|(k, _)| k.clone())
            .collect();
        for key in below {
            let alias = self.rule_alias(&key);
            self.use_whole(&alias);
        }
    }

    /// `base`, then `steps`: static steps extend the alias; a dynamic one reads the whole
    /// value it indexes (and its index), and the rest is derived.
    fn apply(&mut self, mut base: Alias, steps: &[Step<'m>], scope: &Scope, depth: usize) -> Alias {
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Static(seg) => {
                    for (_, path) in &mut base {
                        path.push(seg.clone());
                    }
                }
                Step::Dynamic(_) => {
                    self.use_whole(&base);
                    for rest in steps.iter().skip(i) {
                        if let Step::Dynamic(index) = rest {
                            let alias = self.eval(index, scope, depth);
                            self.use_whole(&alias);
                        }
                    }
                    return Alias::new();
                }
            }
        }
        base
    }

    fn call(
        &mut self,
        fcn: &'m Expr,
        params: &'m [Ref<Expr>],
        scope: &Scope,
        depth: usize,
    ) -> Alias {
        let name = dotted(fcn).unwrap_or_default();
        let user = self.user_function(scope.module, &name);
        if user.is_some() && BUILTINS.contains_key(name.as_str()) {
            // A user function named like a builtin: which one runs is not assumed.
            for param in params {
                let alias = self.eval(param, scope, depth);
                self.use_whole(&alias);
            }
            return Alias::new();
        }
        if let Some(key) = user {
            let summary = self.function_summary(&key);
            for (i, param) in params.iter().enumerate() {
                let alias = self.eval(param, scope, depth);
                match summary.get(i) {
                    Some(Some(reads)) if !reads.is_empty() => {
                        for read in reads {
                            let below = alias
                                .iter()
                                .map(|(root, path)| {
                                    let mut p = path.clone();
                                    p.extend(read.iter().cloned());
                                    (*root, p)
                                })
                                .collect();
                            self.use_whole(&below);
                        }
                    }
                    // Not read at all: whether it is defined still decides the call.
                    _ => self.use_whole(&alias),
                }
            }
            return Alias::new();
        }
        if name == "object.get"
            && let [object, key, default] = params
            && let Some(keys) = static_keys(key)
        {
            let mut alias = self.eval(object, scope, depth);
            for (_, path) in &mut alias {
                path.extend(keys.iter().cloned());
            }
            alias.extend(self.eval(default, scope, depth));
            return self.capped(alias);
        }
        if NONDETERMINISTIC.contains(&name.as_str()) && !self.nondeterministic.contains(&name) {
            self.nondeterministic.push(name);
        }
        for param in params {
            let alias = self.eval(param, scope, depth);
            self.use_whole(&alias);
        }
        Alias::new()
    }

    /// The rule path of the user function called as `name` from `module`, if it is one.
    fn user_function(&self, module: usize, name: &str) -> Option<Vec<String>> {
        let mut parts = name.split('.').map(String::from);
        let first = parts.next()?;
        let mut path = match first.as_str() {
            "data" => Vec::new(),
            _ => match self.imports.get(module)?.get(&first) {
                Some(Import::Data(p)) => p.clone(),
                Some(Import::Input(_)) => return None,
                None => {
                    let mut p = self.packages.get(module)?.clone();
                    p.push(first);
                    p
                }
            },
        };
        path.extend(parts);
        self.rules
            .get(&path)?
            .iter()
            .any(|d| d.kind == Kind::Function)
            .then_some(path)
    }
}

/// `x := value`, `x = value` or `value = x` binding the plain name `x`; `None` for any other
/// expression (a unification of two names, or of patterns, is evaluated as a comparison).
fn binding(expr: &Expr) -> Option<(&str, &Expr)> {
    let Expr::AssignExpr { op, lhs, rhs, .. } = expr else {
        return None;
    };
    match op {
        AssignOp::ColEq => Some((bindable(lhs)?, rhs.as_ref())),
        AssignOp::Eq => match (bindable(lhs), bindable(rhs)) {
            (Some(name), None) if !matches!(rhs.as_ref(), Expr::Var { .. }) => {
                Some((name, rhs.as_ref()))
            }
            (None, Some(name)) if !matches!(lhs.as_ref(), Expr::Var { .. }) => {
                Some((name, lhs.as_ref()))
            }
            _ => None,
        },
    }
}

/// The name of a plain variable that a binding can bind.
fn bindable(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Var { span, .. } => {
            Some(span.text()).filter(|n| !matches!(*n, "_" | "input" | "data"))
        }
        _ => None,
    }
}

/// A reference as its root and steps (`input.a[x]["b"]` is `input`, `a`, `x`, `b`); `None`
/// for an expression that is not a reference or a name.
fn ref_steps(expr: &Expr) -> Option<(&Expr, Vec<Step<'_>>)> {
    let mut steps = Vec::new();
    let mut node = expr;
    loop {
        match node {
            Expr::RefDot { refr, field, .. } => {
                let key = field.1.as_string().ok()?.to_string();
                steps.push(Step::Static(Segment::Key(key)));
                node = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                steps.push(match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        match value.as_string() {
                            Ok(s) => Step::Static(Segment::Key(s.to_string())),
                            Err(_) => Step::Dynamic(index),
                        }
                    }
                    Expr::Number { value, .. } => match value.as_u64() {
                        Ok(n) => Step::Static(Segment::Index(n)),
                        Err(_) => Step::Dynamic(index),
                    },
                    _ => Step::Dynamic(index),
                });
                node = refr;
            }
            Expr::Var { .. } => break,
            other => {
                if steps.is_empty() {
                    return None;
                }
                steps.reverse();
                return Some((other, steps));
            }
        }
    }
    steps.reverse();
    Some((node, steps))
}

/// The static part of a rule head's reference, and whether that is all of it.
fn head_path(refr: &Expr) -> (Vec<String>, bool) {
    let Some((root, steps)) = ref_steps(refr) else {
        return (Vec::new(), false);
    };
    let mut path = match root {
        Expr::Var { value, .. } => match value.as_string() {
            Ok(name) => vec![name.to_string()],
            Err(_) => return (Vec::new(), false),
        },
        _ => return (Vec::new(), false),
    };
    for step in steps {
        match step {
            Step::Static(Segment::Key(k)) => path.push(k),
            _ => return (path, false),
        }
    }
    (path, true)
}

/// A reference made of a name and static string keys, as its components.
fn static_path(expr: &Expr) -> Option<Vec<String>> {
    let (Expr::Var { value, .. }, steps) = ref_steps(expr)? else {
        return None;
    };
    let mut path = vec![value.as_string().ok()?.to_string()];
    for step in steps {
        match step {
            Step::Static(Segment::Key(k)) => path.push(k),
            _ => return None,
        }
    }
    Some(path)
}

/// `"k"` or `["a", "b"]` as path segments.
fn static_keys(expr: &Expr) -> Option<Vec<Segment>> {
    let key = |e: &Expr| match e {
        Expr::String { value, .. } | Expr::RawString { value, .. } => {
            Some(Segment::Key(value.as_string().ok()?.to_string()))
        }
        _ => None,
    };
    match expr {
        Expr::Array { items, .. } => items.iter().map(|i| key(i)).collect(),
        other => key(other).map(|k| vec![k]),
    }
}

fn count(map: &mut HashMap<String, u32>, name: &str) {
    *map.entry(name.to_string()).or_default() += 1;
}

/// Calls `f` with the name of every variable in `expr`, and queues the queries of its
/// comprehensions in `nested` rather than visiting them (their statements bind names too).
fn scan<'e>(expr: &'e Expr, f: &mut impl FnMut(&str), nested: &mut Vec<&'e Query>) {
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Var { value, .. } => {
                if let Ok(name) = value.as_string() {
                    f(name.as_ref());
                }
            }
            // A call's function is a name, not a variable.
            Expr::Call { params, .. } => stack.extend(params.iter().map(|p| p.as_ref())),
            other => children(other, &mut stack, nested),
        }
    }
}
