//! The layers of ARCHITECTURE.md, kept true: every `crate::…` path in the framework's sources
//! (outside comments and `#[cfg(test)]` modules) names a module of the same layer or one below,
//! the three wings do not know each other, and no two files of one folder import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, bottom first; a module may use its own layer's modules and those below,
/// except that the wings (one layer) may not use each other.
const LAYERS: &[&[&str]] = &[
    &["message", "shutdown", "failpoint", "backoff"],
    &["error"],
    &["config", "postgres"],
    &["codec"],
    &["event"],
    &["kafka"],
    &["aggregate", "projection", "reactor", "handler"],
    &["service", "args", "testing", "asyncapi"],
];

const WINGS: &[&str] = &["aggregate", "projection", "reactor", "handler"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "bin") {
                continue; // binaries use the crate from outside
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines that are code: comments dropped, and everything from a `#[cfg(test)]` on (test
/// modules sit at the end of their files, and tests may reach any layer).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(i, line)| (i + 1, line))
}

/// The top-level module names a line's `crate::x` paths and `use crate::{x, ..}` groups reach.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = &rest[..at];
        rest = &rest[at + "crate::".len()..];
        // `$crate::` in macros and identifiers ending in `crate` are not paths of this crate.
        if before.ends_with('$') || before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.push(name);
        }
    }
    found
}

/// The module a source file belongs to: its first path component under `src/`.
fn home(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn every_import_points_down_or_sideways() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let from = home(&src, file);
        if from == "lib" {
            continue;
        }
        let Some(from_layer) = layer_of(&from) else {
            upward.push(format!("{}: module {from} has no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (number, line) in code_lines(&text) {
            for to in crate_paths(line) {
                let Some(to_layer) = layer_of(&to) else {
                    continue; // macros and items of lib.rs (re-exports)
                };
                checked += 1;
                let wing_to_wing =
                    from != to && WINGS.contains(&from.as_str()) && WINGS.contains(&to.as_str());
                if to_layer > from_layer || wing_to_wing {
                    upward.push(format!(
                        "{}:{number}: {from} uses {to}: {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(checked > 200, "the scan saw the imports: {checked}");
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_files_of_a_folder_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    // folder -> (file stem -> siblings it names with `super::x` or `crate::folder::x`)
    let mut uses: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let stem = file
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        if stem == "mod" {
            continue; // a folder's mod.rs declares and re-exports its files
        }
        let folder = file.parent().expect("a folder").to_path_buf();
        let folder_path = folder
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('/', "::");
        let text = std::fs::read_to_string(file).expect("read");
        let mut named = BTreeSet::new();
        for (_, line) in code_lines(&text) {
            for prefix in ["super::".to_owned(), format!("crate::{folder_path}::")] {
                let mut rest = line;
                while let Some(at) = rest.find(&prefix) {
                    rest = &rest[at + prefix.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != stem {
                        named.insert(name);
                    }
                }
            }
        }
        uses.entry(folder).or_default().insert(stem, named);
    }
    let mut circles = Vec::new();
    for (folder, files) in &uses {
        for (a, named) in files {
            for b in named {
                if a < b && files.get(b).is_some_and(|theirs| theirs.contains(a)) {
                    circles.push(format!("{}: {a}.rs <-> {b}.rs", folder.display()));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "files that import each other:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_scanner_sees_paths_groups_and_ignores_macros() {
    assert_eq!(crate_paths("use crate::kafka::Record;"), vec!["kafka"]);
    assert_eq!(
        crate_paths("use crate::{codec, message::Metadata};"),
        vec!["codec", "message"]
    );
    assert_eq!(
        crate_paths("x = crate::event::encode_event(e); $crate::codec::decode()"),
        vec!["event"]
    );
    assert!(crate_paths("let my_crate::x = 1;").is_empty());
    let text = "use crate::a;\n// crate::b\n#[cfg(test)]\nuse crate::c;";
    let lines: Vec<usize> = code_lines(text).map(|(n, _)| n).collect();
    assert_eq!(lines, vec![1]);
}
