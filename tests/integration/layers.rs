//! The floors of `docs/architecture.md`, checked: every `crate::…` path in a module's code (unit tests aside)
//! names a module on a lower floor, or one earlier on its own floor. A new import that goes up or around — the
//! start of a cycle — fails here, naming the file and the module it reached.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top; within a floor, a module may use those before it on the same floor.
const FLOORS: &[&[&str]] = &[
    &[
        "config",
        "progress",
        "buffers",
        "error_chain",
        "caps",
        "TOOL",
    ],
    &["docker", "storage", "archive", "lock", "notify"],
    &["catalog", "pipeline"],
    &[
        "retention",
        "crypto",
        "hooks",
        "dump",
        "plan",
        "sizes",
        "quiesce",
        "readback",
        "schedule",
    ],
    &[
        "prune",
        "backup",
        "restore",
        "verify",
        "daemon",
        "check",
        "target_check",
    ],
    &["cli"],
];

fn rank(module: &str) -> Option<(usize, usize)> {
    FLOORS
        .iter()
        .enumerate()
        .find_map(|(f, mods)| mods.iter().position(|m| *m == module).map(|i| (f, i)))
}

/// The top-level module a source file belongs to (`src/backup/source.rs` → `backup`).
fn owner(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn code_of(text: &str) -> &str {
    // Unit tests may reach anywhere: cut at the test module.
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Top-level module names used through `crate::name` or `crate::{name, …}`.
fn uses(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group
                .find("};")
                .or_else(|| group.find('}'))
                .unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_from_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for f in all {
        let module = owner(&src, &f);
        if matches!(module.as_str(), "lib" | "main") || f.ends_with("tests.rs") {
            continue;
        }
        let Some(me) = rank(&module) else {
            unknown.push(module);
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for used in uses(code_of(&text)) {
            if used == module || matches!(used.as_str(), "self" | "super") {
                continue;
            }
            match rank(&used) {
                Some(them) if them < me => {}
                Some(_) => wrong
                    .entry(f.strip_prefix(&src).unwrap().display().to_string())
                    .or_default()
                    .push(used),
                None => unknown.push(used),
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from the floors here and in docs/architecture.md: {unknown:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports that go up a floor (or forward on one) — see docs/architecture.md: {wrong:#?}"
    );
}
