//! The layering of `src/`: every module imports only modules listed before it in `lib.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules in the order `lib.rs` declares them.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// Every `.rs` file below `dir` except unit-test files (which may reach anywhere).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/authn/jwks.rs` -> `authn`).
fn owner(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Names `x` of every `crate::x` in `text`, including `crate::{x, y}` groups.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn modules_import_only_the_layers_above_them() {
    let layers = layers();
    assert!(layers.len() > 10, "{layers:?}");
    let rank: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = owner(file) else { continue };
        // The binaries sit on top of the library.
        let Some(&own) = rank.get(module.as_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for used in crate_refs(&text) {
            match rank.get(used.as_str()) {
                Some(&r) if r > own => problems.push(format!(
                    "{} ({module}) imports {used}, which lib.rs lists below it",
                    file.display()
                )),
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    let refs = crate_refs("use crate::{authn::X, key};\nlet k = crate::cache::sha256(b);");
    assert_eq!(refs, ["authn", "key", "cache"]);
}
