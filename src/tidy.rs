//! Architecture checks run by `cargo test`: the layer arrows of `docs/ARCHITECTURE.md`, the
//! external-crate fences, and a `//!` header on every module file.
//!
//! The check is textual on purpose: it reads every `crate::<module>` path and every external crate
//! path in each file under `src/`, so a forbidden dependency fails the build's tests at once.

use std::path::{Path, PathBuf};

/// Which crate modules each layer may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("main", &["app", "config", "telemetry"]),
    (
        "app",
        &[
            "api",
            "jobs",
            "service",
            "meta",
            "storage",
            "auth",
            "config",
            "telemetry",
        ],
    ),
    ("api", &["service", "auth", "oci", "config"]),
    ("jobs", &["service", "config"]),
    (
        "service",
        &["meta", "storage", "cache", "auth", "oci", "config"],
    ),
    ("meta", &["oci", "config"]),
    ("storage", &["oci", "config"]),
    ("cache", &["oci", "config"]),
    ("auth", &["oci", "config"]),
    ("telemetry", &["config"]),
    ("config", &[]),
    ("oci", &[]),
    ("lib", &[]),
    ("tidy", &[]),
];

/// External crates only some layers may use.
const FENCES: &[(&str, &[&str])] = &[
    ("rusqlite", &["meta"]),
    ("tokio_postgres", &["meta"]),
    ("deadpool_postgres", &["meta"]),
    ("aerugo_storage", &["storage"]),
    ("opendal", &[]),
    ("axum", &["api", "app"]),
    ("tower_http", &["api", "app"]),
    ("hyper", &["app"]),
    ("hyper_util", &["app"]),
    ("redis", &["cache"]),
    ("moka", &["cache"]),
    ("jsonwebtoken", &["auth"]),
    ("argon2", &["auth"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a file belongs to: the first path component under `src/`.
fn layer_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// Every identifier that follows `prefix` in `text` (e.g. `crate::` → `meta`).
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .filter(|(i, _)| {
            // Only whole path starts: not `foo_crate::` or `mycrate::`.
            *i == 0
                || !text.as_bytes()[i - 1].is_ascii_alphanumeric() && text.as_bytes()[i - 1] != b'_'
        })
        .filter_map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (end > 0).then(|| &rest[..end])
        })
        .collect()
}

#[test]
fn layers_and_fences_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let layer = layer_of(&src, file);
        if layer == "tests" || layer == "tidy" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read file");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let allowed = ALLOWED
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{}: layer {layer} is not in tidy's table", file.display()));
        let crate_prefix = if layer == "main" {
            "aerugo::"
        } else {
            "crate::"
        };
        for used in paths_after(&code, crate_prefix) {
            if used != layer && !allowed.contains(&used) {
                problems.push(format!("{}: layer `{layer}` uses `{used}`", file.display()));
            }
        }
        for (krate, layers) in FENCES {
            let prefix = format!("{krate}::");
            if !paths_after(&code, &prefix).is_empty() && !layers.contains(&layer.as_str()) {
                problems.push(format!(
                    "{}: `{krate}` may only be used in {layers:?}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_module_file_has_a_header() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read file");
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header:\n{}",
        missing.join("\n")
    );
}

#[test]
fn path_scanner_finds_whole_paths_only() {
    assert_eq!(
        paths_after("use crate::meta::X; crate::oci::Y", "crate::"),
        vec!["meta", "oci"]
    );
    assert!(paths_after("mycrate::meta", "crate::").is_empty());
}
