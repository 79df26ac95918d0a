//! House rules checked on the source tree: every Rust file says its role in a leading `//!` line,
//! and no test is switched off.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_owned()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "corpus" | "artifacts") {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_role_line_and_no_test_is_ignored() {
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["proto", "actors", "gateway", "loadtest", "tests", "tools"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found the sources under {}", root.display());
    let ignore_attribute = ["#[", "ignore]"].concat();
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if !text.starts_with("//!") {
            offenders.push(format!("{}: does not open with a //! line", file.display()));
        }
        if text.contains(&ignore_attribute) {
            offenders.push(format!("{}: has an ignored test", file.display()));
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

/// The README's configuration block lists every setting with its default: it must parse, and equal
/// the defaults, so the documentation cannot drift from the code.
#[test]
fn the_readme_configuration_is_the_default_configuration() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme.split("## Configuration").nth(1).expect("README has a Configuration section");
    let block = section.split("```toml").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml block");
    let parsed = gateway::config::Config::from_toml(block).unwrap_or_else(|error| panic!("README config: {error}"));
    assert_eq!(parsed, gateway::config::Config::default());
}
