//! ARCHITECTURE.md's dependency graph is the manifests' graph: a crate that gains or loses a
//! dependency on another workspace crate must say so there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap()
}

/// Normal (non-dev, non-build) dependencies between workspace crates, from `cargo metadata`.
fn manifest_graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|name| names.contains(*name))
                .map(str::to_owned)
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// The `text` block after the sentence naming this test.
fn documented_graph() -> Graph {
    let doc = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("crates/cli/tests/architecture.rs")
        .expect("the graph's introduction");
    let block = &doc[start..];
    let block = &block[block.find("```text\n").expect("the graph's block") + 8..];
    let block = &block[..block.find("```").expect("the block's end")];
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (name, deps) = line
                .split_once("->")
                .unwrap_or_else(|| panic!("not `a -> b, c`: {line:?}"));
            let deps = match deps.trim() {
                "(none)" => BTreeSet::new(),
                deps => deps.split(',').map(|d| d.trim().to_owned()).collect(),
            };
            (name.trim().to_owned(), deps)
        })
        .collect()
}

#[test]
fn architecture_md_draws_the_real_dependency_graph() {
    let real = manifest_graph();
    let documented = documented_graph();
    let mut differences = Vec::new();
    for name in real.keys().chain(documented.keys()).collect::<BTreeSet<_>>() {
        match (real.get(name), documented.get(name)) {
            (Some(r), Some(d)) if r == d => {}
            (r, d) => differences.push(format!("{name}: manifests {r:?}, ARCHITECTURE.md {d:?}")),
        }
    }
    assert!(
        differences.is_empty(),
        "ARCHITECTURE.md's graph is stale:\n{}",
        differences.join("\n")
    );
}

/// The check itself notices a difference (so it cannot pass by reading nothing).
#[test]
fn the_graph_check_sees_every_crate() {
    let real = manifest_graph();
    assert!(real.len() >= 10, "cargo metadata listed {} crates", real.len());
    assert!(real["cloister-cli"].contains("cloister-platform"));
    assert_eq!(documented_graph().len(), real.len());
}
