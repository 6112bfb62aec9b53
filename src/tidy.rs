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

/// The stored names of roles, permissions, grant subjects and key scopes: in `api` they may
/// appear only in the OpenAPI document, in `service` only where the store's strings are parsed
/// into enums (`service::access`, `service::views`).
const POLICY_WORDS: &[&str] = &[
    "owner",
    "admin",
    "member",
    "team",
    "user",
    "read",
    "write",
    "all",
    "namespace",
    "repository",
];

/// Why `line` of an `api` file decides access on its own, if it does. Handlers only pass what
/// the caller asked for to a service method; the service asks the policy (`auth::permission`,
/// `auth::policy`) and hands back views.
fn api_decides_access(line: &str) -> Option<&'static str> {
    let compares = ["==", "!=", ">=", "<=", " > ", " < ", "matches!"]
        .iter()
        .any(|op| line.contains(op));
    let boolean = compares
        || ["&&", "||", "if ", ".then", "!"]
            .iter()
            .any(|op| line.contains(op));
    if POLICY_WORDS
        .iter()
        .any(|w| line.contains(&format!("\"{w}\"")))
    {
        return Some("names a role, permission, subject kind or key scope as a string");
    }
    if [
        "effective_permission",
        "org_permits",
        "account_permits",
        ".allows(",
        "permission_on(",
    ]
    .iter()
    .any(|f| line.contains(f))
    {
        return Some("calls the access policy itself instead of a service method");
    }
    if line.contains("is_admin") && boolean {
        return Some("decides on the caller's site-admin flag");
    }
    if [".key.is_", ".key.as_ref", ".key ==", ".key.map"]
        .iter()
        .any(|k| line.contains(k))
    {
        return Some("decides on the caller's API key");
    }
    if line.contains("user_id") && compares {
        return Some("compares user ids (ownership is the policy's)");
    }
    if (line.contains("OrgRole::") || line.contains("Permission::")) && compares {
        return Some("compares roles or permissions");
    }
    None
}

/// Why `line` of a `service` file compares a stored role, permission, subject kind or scope as a
/// string, if it does.
fn service_compares_policy_strings(line: &str) -> Option<&'static str> {
    POLICY_WORDS
        .iter()
        .any(|w| {
            line.contains(&format!("== \"{w}\""))
                || line.contains(&format!("!= \"{w}\""))
                || line.contains(&format!("\"{w}\" =="))
                || line.contains(&format!("\"{w}\" !="))
        })
        .then_some("compares a role, permission, subject kind or key scope as a string")
}

/// The code lines of `text` before its `#[cfg(test)]` module, without comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
}

/// Issue 14's "one access policy": no handler decides access on its own, and roles travel as
/// enums, not strings, from the store's boundary to the API.
#[test]
fn no_handler_decides_access_on_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let layer = layer_of(&src, file);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let check: fn(&str) -> Option<&'static str> = match layer.as_str() {
            "api" if name != "openapi.rs" => api_decides_access,
            "service" if !["access.rs", "views.rs", "testing.rs"].contains(&name) => {
                service_compares_policy_strings
            }
            _ => continue,
        };
        let text = std::fs::read_to_string(file).expect("read file");
        for (i, line) in code_lines(&text) {
            if let Some(why) = check(line) {
                problems.push(format!(
                    "{}:{}: {why}: {}",
                    file.display(),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "access decided outside the policy:\n{}",
        problems.join("\n")
    );
}

/// The rules catch what the handlers and the service did before the policy decided everything.
#[test]
fn the_policy_rules_catch_handlers_deciding() {
    for line in [
        "viewer.is_none_or(|v| v.user_id == row.id || (v.is_admin && v.key.is_none()));",
        "let team = g.subject_kind == \"team\";",
        "if caller.is_admin {",
        "if role >= OrgRole::Admin {",
        "let p = registry.permission_on(Some(&caller), &repo).await?;",
    ] {
        assert!(api_decides_access(line).is_some(), "{line}");
    }
    for line in [
        "is_admin: user.is_admin,",
        "body.is_admin,",
        "role: body.role,",
        "let rows = state.registry.org_members(&caller, &org).await?;",
    ] {
        assert_eq!(api_decides_access(line), None, "{line}");
    }
    assert!(
        service_compares_policy_strings(
            "let owners = members.iter().filter(|m| m.role == \"owner\").count();"
        )
        .is_some()
    );
    assert!(service_compares_policy_strings("m.role == OrgRole::Owner").is_none());
}
