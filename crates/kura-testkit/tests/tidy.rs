//! The dependency rules of ARCHITECTURE.md, checked on every crate's
//! Cargo.toml: pure crates do no I/O, role crates do not use each other,
//! the black-box suites do not link what they test from outside, and the
//! test kit is never a dependency of the product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Crates that do I/O or networking: none of them in a pure crate.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-stream",
    "tonic",
    "tonic-prost",
    "tonic-health",
    "tonic-reflection",
    "tonic-types",
    "axum",
    "hyper",
    "rocksdb",
    "rustix",
    "libc",
    "futures",
    "metrics",
    "metrics-exporter-prometheus",
    "rustls",
    "tempfile",
];
const PURE: &[&str] = &["kura-erasure", "kura-dicom", "kura-placement"];
const ROLES: &[&str] = &["kura-meta", "kura-store", "kura-gateway"];

struct Manifest {
    path: PathBuf,
    /// Normal dependencies.
    deps: Vec<String>,
    /// Dev- and build-dependencies.
    other: Vec<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn names(t: Option<&toml::Value>) -> Vec<String> {
    t.and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn read(dir: &Path) -> Option<(String, Manifest)> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).ok()?;
    let v: toml::Value =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = v.get("package")?.get("name")?.as_str()?.to_string();
    let mut other = names(v.get("dev-dependencies"));
    other.extend(names(v.get("build-dependencies")));
    Some((
        name,
        Manifest {
            deps: names(v.get("dependencies")),
            other,
            path,
        },
    ))
}

fn manifests() -> BTreeMap<String, Manifest> {
    let root = root();
    let mut out = BTreeMap::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
    for dir in crates
        .flatten()
        .map(|e| e.path())
        .chain([root.join("bench"), root.join("chaos-tests")])
    {
        if let Some((name, m)) = read(&dir) {
            out.insert(name, m);
        }
    }
    out
}

/// Every rule broken by `all`; empty when the tree is tidy.
fn violations(all: &BTreeMap<String, Manifest>) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, m) in all {
        let uses = |d: &str| m.deps.iter().any(|x| x == d);
        let p = m.path.display();
        if PURE.contains(&name.as_str()) {
            for d in IO_CRATES
                .iter()
                .chain(ROLES)
                .chain(&["kura-proto", "kura-auth"])
            {
                if uses(d) {
                    bad.push(format!("{p}: the pure crate {name} depends on {d}"));
                }
            }
        }
        if ROLES.contains(&name.as_str()) {
            for d in ROLES.iter().chain(&["kura-dev", "kura"]) {
                if *d != name && uses(d) {
                    bad.push(format!("{p}: role crate {name} depends on {d}: role crates talk through kura-proto clients"));
                }
            }
        }
        if name == "kura-proto" || name == "kura-auth" {
            for d in ROLES.iter().chain(&["kura-dev", "rocksdb"]) {
                if uses(d) {
                    bad.push(format!(
                        "{p}: {name} is shared by every role and must not depend on {d}"
                    ));
                }
            }
        }
        if name == "kura-auth" && uses("kura-proto") {
            bad.push(format!("{p}: kura-auth is below kura-proto"));
        }
        if name == "bench" || name == "kura-bench" {
            for d in ROLES {
                if uses(d) {
                    bad.push(format!(
                        "{p}: the benchmarks use {d} directly; go through kura-dev or kura-proto"
                    ));
                }
            }
        }
        if name == "chaos-tests" {
            for d in ROLES.iter().chain(&["kura-dev", "kura"]) {
                if uses(d) {
                    bad.push(format!(
                        "{p}: the chaos suite is black-box and must not link {d}"
                    ));
                }
            }
        }
        let tools = ["kura-testkit", "kura-bench", "chaos-tests"];
        if !tools.contains(&name.as_str()) && uses("kura-testkit") {
            bad.push(format!(
                "{p}: {name} depends on kura-testkit outside [dev-dependencies]"
            ));
        }
        if name == "kura-testkit" {
            for d in ROLES.iter().chain(&["kura-dev", "kura"]) {
                if uses(d) {
                    bad.push(format!(
                        "{p}: kura-testkit must not depend on {d} (the chaos suite uses it)"
                    ));
                }
            }
        }
        let _ = &m.other;
    }
    bad
}

#[test]
fn the_workspace_keeps_its_dependency_rules() {
    let all = manifests();
    for must in
        PURE.iter()
            .chain(ROLES)
            .chain(&["kura-proto", "kura-auth", "kura-testkit", "chaos-tests"])
    {
        assert!(
            all.contains_key(*must),
            "{must} not found among {:?}",
            all.keys()
        );
    }
    let bad = violations(&all);
    assert!(
        bad.is_empty(),
        "dependency rules broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_rules_catch_a_broken_tree() {
    let mut all = manifests();
    let m = |deps: &[&str]| Manifest {
        path: PathBuf::from("x/Cargo.toml"),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        other: Vec::new(),
    };
    all.insert("kura-placement".into(), m(&["kura-erasure", "tokio"]));
    all.insert("kura-store".into(), m(&["kura-proto", "kura-meta"]));
    all.insert("chaos-tests".into(), m(&["kura-proto", "kura-dev"]));
    all.insert("kura-bench".into(), m(&["kura-dev", "kura-gateway"]));
    all.insert("kura-gateway".into(), m(&["kura-proto", "kura-testkit"]));
    let bad = violations(&all).join("\n");
    for want in [
        "pure crate kura-placement depends on tokio",
        "role crate kura-store depends on kura-meta",
        "must not link kura-dev",
        "benchmarks use kura-gateway",
        "kura-gateway depends on kura-testkit",
    ] {
        assert!(bad.contains(want), "{want:?} not caught in:\n{bad}");
    }
}
