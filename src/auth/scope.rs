//! The Docker token scope grammar and the JWT `access` claim.
//!
//! ```text
//! scope         := resourcescope [' ' resourcescope]*
//! resourcescope := resourcetype ":" resourcename ":" action [',' action]*
//! resourcetype  := typevalue ['(' classvalue ')']      (the class is deprecated and dropped)
//! resourcename  := [hostname '/'] component ['/' component]*   (hostname may hold ":port")
//! ```
//!
//! Because a name may contain `:` (`localhost:5000/app`), an entry is split at its *first* `:`
//! (type) and its *last* `:` (actions), never naively.
//! Known types are `repository` (actions `pull`, `push`, `delete`, `*`) and `registry`
//! (`registry:catalog:*`); other types and actions are kept verbatim and callers ignore them.
//!
//! Malformed entries are skipped by [`parse_scopes`] without a trace: the token server grants
//! the intersection of what was asked and what is allowed, so an entry it cannot read grants
//! nothing, exactly like a denied one. [`Scope::from_str`] reports them for callers that want to.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Error;
use super::permission::Action;

/// The `repository` resource type.
pub const REPOSITORY: &str = "repository";
/// The `registry` resource type (only `registry:catalog:*` is meaningful).
pub const REGISTRY: &str = "registry";
/// The wildcard action: every action on the resource.
pub const WILDCARD: &str = "*";

/// One parsed resource scope, e.g. `repository:acme/app:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// `repository`, `registry`, or an unknown type kept verbatim.
    pub resource_type: String,
    /// The resource name, e.g. `acme/app` or `localhost:5000/acme/app`, or `catalog`.
    pub name: String,
    /// The requested actions, deduplicated; never empty.
    pub actions: BTreeSet<String>,
}

impl Scope {
    /// A `repository` scope for `name` with `actions`.
    pub fn repository(name: &str, actions: &[Action]) -> Scope {
        Scope {
            resource_type: REPOSITORY.to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| a.as_str().to_owned()).collect(),
        }
    }

    /// The `registry:catalog:*` scope.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: REGISTRY.to_owned(),
            name: "catalog".to_owned(),
            actions: BTreeSet::from([WILDCARD.to_owned()]),
        }
    }

    /// Whether this is a `repository` scope.
    pub fn is_repository(&self) -> bool {
        self.resource_type == REPOSITORY
    }

    /// Whether this is the `registry:catalog:*` scope.
    pub fn is_catalog(&self) -> bool {
        self.resource_type == REGISTRY && self.name == "catalog" && self.actions.contains(WILDCARD)
    }

    /// The known repository actions requested, with `*` expanded to all of them; empty for a
    /// non-repository scope. Unknown actions are dropped.
    pub fn repository_actions(&self) -> BTreeSet<Action> {
        if !self.is_repository() {
            return BTreeSet::new();
        }
        if self.actions.contains(WILDCARD) {
            return Action::ALL.into_iter().collect();
        }
        self.actions
            .iter()
            .filter_map(|a| a.parse::<Action>().ok())
            .collect()
    }
}

fn is_type_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_action(action: &str) -> bool {
    // The grammar says /[a-z]*/ plus `*`; digits, `-` and `_` are accepted too so that a client's
    // unknown action does not make the whole entry unreadable.
    action == WILDCARD
        || !action.is_empty()
            && action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl FromStr for Scope {
    type Err = Error;

    /// Parses one resource scope (no spaces). Type and class must be `[a-z0-9]+`; the name must
    /// be non-empty; there must be at least one action, and empty actions (`pull,,push`) are
    /// dropped.
    fn from_str(entry: &str) -> Result<Scope, Error> {
        let bad = || Error::InvalidScope(entry.to_owned());
        let (full_type, rest) = entry.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        let resource_type = match full_type.split_once('(') {
            None => full_type,
            Some((ty, class)) => {
                let class = class.strip_suffix(')').ok_or_else(bad)?;
                if class.is_empty() || !class.bytes().all(is_type_char) {
                    return Err(bad());
                }
                ty
            }
        };
        if resource_type.is_empty() || !resource_type.bytes().all(is_type_char) {
            return Err(bad());
        }
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let mut set = BTreeSet::new();
        for action in actions.split(',').filter(|a| !a.is_empty()) {
            if !valid_action(action) {
                return Err(bad());
            }
            set.insert(action.to_owned());
        }
        if set.is_empty() {
            return Err(bad());
        }
        Ok(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: set,
        })
    }
}

impl fmt::Display for Scope {
    /// `type:name:action[,action]*`, actions in sorted order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.resource_type, self.name)?;
        for (i, action) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(action)?;
        }
        Ok(())
    }
}

/// Parses a space-separated `scope` value, skipping malformed entries (see the module docs).
///
/// For repeated `scope` query parameters, call this on each and concatenate; [`merge_scopes`]
/// then folds duplicates.
pub fn parse_scopes(value: &str) -> Vec<Scope> {
    value
        .split_ascii_whitespace()
        .filter_map(|entry| entry.parse().ok())
        .collect()
}

/// Most scope entries one token request may ask for. Real clients ask for one to a handful
/// (a push with cross-repository mounts names a few); each entry costs an access decision.
pub const MAX_SCOPES_PER_REQUEST: usize = 100;

/// Most bytes all `scope` parameters of one token request may hold together (about 100 entries
/// with names of the longest allowed length).
pub const MAX_SCOPE_BYTES_PER_REQUEST: usize = 32 * 1024;

/// Parses every `scope` parameter of a token request, refusing a request that asks for more than
/// [`MAX_SCOPES_PER_REQUEST`] entries or [`MAX_SCOPE_BYTES_PER_REQUEST`] bytes; the message says
/// which limit was passed. Malformed entries count towards the limit and are then skipped.
pub fn parse_requested_scopes<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Scope>, String> {
    let mut bytes = 0usize;
    let mut entries = 0usize;
    let mut scopes = Vec::new();
    for value in values {
        bytes = bytes.saturating_add(value.len());
        if bytes > MAX_SCOPE_BYTES_PER_REQUEST {
            return Err(format!(
                "the scope parameters hold more than {MAX_SCOPE_BYTES_PER_REQUEST} bytes"
            ));
        }
        for entry in value.split_ascii_whitespace() {
            entries += 1;
            if entries > MAX_SCOPES_PER_REQUEST {
                return Err(format!(
                    "a token request may ask for at most {MAX_SCOPES_PER_REQUEST} scopes"
                ));
            }
            if let Ok(scope) = entry.parse() {
                scopes.push(scope);
            }
        }
    }
    Ok(scopes)
}

/// Folds scopes with the same type and name into one with the union of their actions, sorted
/// by type then name.
pub fn merge_scopes(scopes: impl IntoIterator<Item = Scope>) -> Vec<Scope> {
    let mut merged: Vec<Scope> = Vec::new();
    let mut sorted: Vec<Scope> = scopes.into_iter().collect();
    sorted.sort_by(|a, b| (&a.resource_type, &a.name).cmp(&(&b.resource_type, &b.name)));
    for scope in sorted {
        match merged.last_mut() {
            Some(last) if last.resource_type == scope.resource_type && last.name == scope.name => {
                last.actions.extend(scope.actions);
            }
            _ => merged.push(scope),
        }
    }
    merged
}

/// The scope string for a `WWW-Authenticate` challenge, e.g. `repository:acme/app:pull,push`.
///
/// Actions keep the caller's order (clients echo them back), without duplicates.
pub fn challenge_scope(repository: &str, actions: &[Action]) -> String {
    let mut seen = Vec::with_capacity(actions.len());
    for action in actions {
        if !seen.contains(&action.as_str()) {
            seen.push(action.as_str());
        }
    }
    format!("{REPOSITORY}:{repository}:{}", seen.join(","))
}

/// One entry of the JWT `access` claim: `{"type":"repository","name":"acme/app","actions":["pull"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// The resource type, e.g. `repository`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The resource name.
    pub name: String,
    /// The granted actions. May be empty: the token server answers a denied scope with an
    /// entry that grants nothing rather than with an error.
    #[serde(default)]
    pub actions: Vec<String>,
}

impl AccessEntry {
    /// Whether this entry grants `action` on (`resource_type`, `name`); `*` grants every action.
    pub fn grants(&self, resource_type: &str, name: &str, action: &str) -> bool {
        self.resource_type == resource_type
            && self.name == name
            && self.actions.iter().any(|a| a == action || a == WILDCARD)
    }
}

impl From<Scope> for AccessEntry {
    fn from(scope: Scope) -> AccessEntry {
        AccessEntry {
            resource_type: scope.resource_type,
            name: scope.name,
            actions: scope.actions.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(ty: &str, name: &str, actions: &[&str]) -> Scope {
        Scope {
            resource_type: ty.to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn parses_well_formed_entries() {
        let cases: &[(&str, Scope)] = &[
            (
                "repository:samalba/my-app:pull,push",
                scope("repository", "samalba/my-app", &["pull", "push"]),
            ),
            ("repository:app:pull", scope("repository", "app", &["pull"])),
            (
                "repository:localhost:5000/acme/app:push",
                scope("repository", "localhost:5000/acme/app", &["push"]),
            ),
            (
                "repository:reg.example.com:443/a/b/c:pull,delete",
                scope(
                    "repository",
                    "reg.example.com:443/a/b/c",
                    &["delete", "pull"],
                ),
            ),
            ("repository:app:*", scope("repository", "app", &["*"])),
            ("registry:catalog:*", scope("registry", "catalog", &["*"])),
            (
                "repository(plugin):acme/plugin:pull",
                scope("repository", "acme/plugin", &["pull"]),
            ),
            (
                "repository:app:pull,pull,push,",
                scope("repository", "app", &["pull", "push"]),
            ),
            (
                "repository:app:,pull",
                scope("repository", "app", &["pull"]),
            ),
            // Unknown types and actions are kept; callers ignore them.
            (
                "unknown:thing:frob,metadata-read",
                scope("unknown", "thing", &["frob", "metadata-read"]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Scope>().ok().as_ref(), Some(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        for input in [
            "",
            "repository",
            "repository:app",
            "repository::pull",
            ":app:pull",
            "repository:app:",
            "repository:app:,",
            "repository:app:PULL",
            "repository:app:pu ll",
            "repository:app:pull;push",
            "Repository:app:pull",
            "repo-sitory:app:pull",
            "repository(:app:pull",
            "repository():app:pull",
            "repository(plugin:app:pull",
            "repository(Plugin):app:pull",
            "repository:a\tb:pull",
        ] {
            assert!(
                matches!(input.parse::<Scope>(), Err(Error::InvalidScope(ref s)) if s == input),
                "{input:?}"
            );
        }
    }

    #[test]
    fn parse_scopes_splits_on_spaces_and_skips_bad_entries() {
        let got = parse_scopes(
            "repository:a:pull  bogus registry:catalog:* repository:localhost:5000/b:push\t",
        );
        assert_eq!(
            got,
            vec![
                scope("repository", "a", &["pull"]),
                scope("registry", "catalog", &["*"]),
                scope("repository", "localhost:5000/b", &["push"]),
            ]
        );
        assert!(parse_scopes("").is_empty());
        assert!(parse_scopes("   ").is_empty());
    }

    #[test]
    fn merge_unions_actions_per_resource() {
        let merged = merge_scopes(
            [
                "repository:b:pull",
                "repository:a:push",
                "repository:b:push",
                "repository:a:push",
            ]
            .iter()
            .map(|s| s.parse::<Scope>().unwrap()),
        );
        assert_eq!(
            merged,
            vec![
                scope("repository", "a", &["push"]),
                scope("repository", "b", &["pull", "push"]),
            ]
        );
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "repository:samalba/my-app:pull,push",
            "repository:localhost:5000/x:delete,pull,push",
            "registry:catalog:*",
        ] {
            let parsed: Scope = input.parse().unwrap();
            assert_eq!(parsed.to_string(), input);
            assert_eq!(parsed.to_string().parse::<Scope>().unwrap(), parsed);
        }
    }

    #[test]
    fn typed_helpers() {
        let s = Scope::repository("acme/app", &[Action::Push, Action::Pull]);
        assert_eq!(s.to_string(), "repository:acme/app:pull,push");
        assert!(s.is_repository() && !s.is_catalog());
        assert_eq!(
            s.repository_actions(),
            BTreeSet::from([Action::Pull, Action::Push])
        );
        assert_eq!(
            "repository:x:*"
                .parse::<Scope>()
                .unwrap()
                .repository_actions(),
            BTreeSet::from(Action::ALL)
        );
        assert_eq!(
            "repository:x:pull,frob"
                .parse::<Scope>()
                .unwrap()
                .repository_actions(),
            BTreeSet::from([Action::Pull])
        );
        assert!(
            "registry:catalog:*"
                .parse::<Scope>()
                .unwrap()
                .repository_actions()
                .is_empty()
        );
        assert!(Scope::catalog().is_catalog());
        assert_eq!(Scope::catalog().to_string(), "registry:catalog:*");
        assert!(
            !"registry:catalog:pull"
                .parse::<Scope>()
                .unwrap()
                .is_catalog()
        );
    }

    #[test]
    fn challenge_scope_formats_like_distribution() {
        assert_eq!(
            challenge_scope("samalba/my-app", &[Action::Pull, Action::Push]),
            "repository:samalba/my-app:pull,push"
        );
        assert_eq!(
            challenge_scope("a", &[Action::Pull, Action::Pull]),
            "repository:a:pull"
        );
        assert_eq!(
            challenge_scope("a", &[Action::Delete]),
            "repository:a:delete"
        );
    }

    #[test]
    fn access_entry_serde_and_grants() {
        let entry = AccessEntry::from(Scope::repository("acme/app", &[Action::Pull]));
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"repository","name":"acme/app","actions":["pull"]})
        );
        let back: AccessEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
        let no_actions: AccessEntry =
            serde_json::from_str(r#"{"type":"repository","name":"x"}"#).unwrap();
        assert!(no_actions.actions.is_empty());

        assert!(entry.grants("repository", "acme/app", "pull"));
        assert!(!entry.grants("repository", "acme/app", "push"));
        assert!(!entry.grants("repository", "acme/other", "pull"));
        assert!(!entry.grants("registry", "acme/app", "pull"));
        let star = AccessEntry::from(Scope::catalog());
        assert!(star.grants("registry", "catalog", "*"));
        assert!(star.grants("registry", "catalog", "anything"));
    }
}
