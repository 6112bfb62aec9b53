//! Forward-only schema migrations, embedded from `schema/<backend>/NNNN_verb_noun.sql`.
//!
//! Each backend applies the migrations it has not recorded in `schema_migrations`, in version
//! order. A migration is never edited after it has shipped.
//!
//! The PostgreSQL migrations are also run on CockroachDB, so they keep to the SQL both accept, and
//! every statement is idempotent (`IF NOT EXISTS`): CockroachDB commits schema changes outside the
//! surrounding transaction, so a migration cut off half-way is applied again from the start. The
//! tests below read every file under `schema/` and fail on constructs outside that subset.

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Version number, from the file name.
    pub version: i64,
    /// File name without the extension.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// The SQLite migrations, in order.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_create_registry",
        sql: include_str!("../../schema/sqlite/0001_create_registry.sql"),
    },
    Migration {
        version: 2,
        name: "0002_create_identity",
        sql: include_str!("../../schema/sqlite/0002_create_identity.sql"),
    },
    Migration {
        version: 3,
        name: "0003_create_leases",
        sql: include_str!("../../schema/sqlite/0003_create_leases.sql"),
    },
    Migration {
        version: 4,
        name: "0004_create_work_items",
        sql: include_str!("../../schema/sqlite/0004_create_work_items.sql"),
    },
    Migration {
        version: 5,
        name: "0005_add_credential_revocation",
        sql: include_str!("../../schema/sqlite/0005_add_credential_revocation.sql"),
    },
    Migration {
        version: 6,
        name: "0006_create_cluster",
        sql: include_str!("../../schema/sqlite/0006_create_cluster.sql"),
    },
    Migration {
        version: 7,
        name: "0007_add_upload_owner",
        sql: include_str!("../../schema/sqlite/0007_add_upload_owner.sql"),
    },
    Migration {
        version: 8,
        name: "0008_index_login_failures",
        sql: include_str!("../../schema/sqlite/0008_index_login_failures.sql"),
    },
];

/// The PostgreSQL/CockroachDB migrations, in order.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_create_registry",
        sql: include_str!("../../schema/postgres/0001_create_registry.sql"),
    },
    Migration {
        version: 2,
        name: "0002_create_identity",
        sql: include_str!("../../schema/postgres/0002_create_identity.sql"),
    },
    Migration {
        version: 3,
        name: "0003_create_leases",
        sql: include_str!("../../schema/postgres/0003_create_leases.sql"),
    },
    Migration {
        version: 4,
        name: "0004_create_work_items",
        sql: include_str!("../../schema/postgres/0004_create_work_items.sql"),
    },
    Migration {
        version: 5,
        name: "0005_add_credential_revocation",
        sql: include_str!("../../schema/postgres/0005_add_credential_revocation.sql"),
    },
    Migration {
        version: 6,
        name: "0006_create_cluster",
        sql: include_str!("../../schema/postgres/0006_create_cluster.sql"),
    },
    Migration {
        version: 7,
        name: "0007_add_upload_owner",
        sql: include_str!("../../schema/postgres/0007_add_upload_owner.sql"),
    },
    Migration {
        version: 8,
        name: "0008_index_login_failures",
        sql: include_str!("../../schema/postgres/0008_index_login_failures.sql"),
    },
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Words (or phrases of words) no migration may use, with the reason.
    const FORBIDDEN_EVERYWHERE: &[(&str, &str)] = &[
        ("SERIAL", "sequence-backed ids; use explicit TEXT/UUID keys"),
        (
            "SMALLSERIAL",
            "sequence-backed ids; use explicit TEXT/UUID keys",
        ),
        (
            "BIGSERIAL",
            "sequence-backed ids; use explicit TEXT/UUID keys",
        ),
        (
            "SEQUENCE",
            "sequences depend on gaps and ordering CockroachDB does not keep",
        ),
        (
            "NEXTVAL",
            "sequences depend on gaps and ordering CockroachDB does not keep",
        ),
        ("IDENTITY", "identity columns are sequences"),
        ("AUTOINCREMENT", "sequence-like ids; use explicit keys"),
        ("LISTEN", "LISTEN/NOTIFY is PostgreSQL-only"),
        ("UNLISTEN", "LISTEN/NOTIFY is PostgreSQL-only"),
        ("NOTIFY", "LISTEN/NOTIFY is PostgreSQL-only"),
        ("PG_NOTIFY", "LISTEN/NOTIFY is PostgreSQL-only"),
        ("TRIGGER", "triggers are not in the shared subset"),
        ("EXTENSION", "extensions are PostgreSQL-only"),
        (
            "PARTITION",
            "partitioning differs between PostgreSQL and CockroachDB",
        ),
        ("INHERITS", "table inheritance is PostgreSQL-only"),
        ("FUNCTION", "stored functions are not in the shared subset"),
        (
            "PROCEDURE",
            "stored procedures are not in the shared subset",
        ),
        (
            "LANGUAGE",
            "procedural languages are not in the shared subset",
        ),
        ("CREATE RULE", "rules are PostgreSQL-only"),
        ("TABLESPACE", "tablespaces are PostgreSQL-only"),
        ("UNLOGGED", "unlogged tables are PostgreSQL-only"),
        ("EXCLUDE", "exclusion constraints are PostgreSQL-only"),
        (
            "LOCK TABLE",
            "explicit table locks are not in the shared subset",
        ),
        ("BEGIN", "the runner owns the transaction"),
        ("COMMIT", "the runner owns the transaction"),
        ("ROLLBACK", "the runner owns the transaction"),
    ];

    /// Extra words forbidden in the PostgreSQL/CockroachDB migrations.
    const FORBIDDEN_POSTGRES: &[(&str, &str)] = &[
        (
            "COLLATE",
            "CockroachDB rejects column collations such as \"C\"; use BYTEA for byte-ordered names",
        ),
        ("OIDS", "OIDs are PostgreSQL-only"),
        ("JSONPATH", "jsonpath is PostgreSQL-only"),
        (
            "DEFERRABLE",
            "deferred constraints are not supported by CockroachDB",
        ),
    ];

    /// Substrings (after comments are removed, upper-cased) forbidden everywhere.
    const FORBIDDEN_SUBSTRINGS: &[(&str, &str)] = &[
        (
            "PG_ADVISORY",
            "advisory locks are PostgreSQL-only; use a lease row",
        ),
        ("$$", "dollar-quoted bodies mean functions or DO blocks"),
    ];

    /// The SQL text without `--` comments, `/* */` comments and string literals, upper-cased.
    fn code_of(sql: &str) -> String {
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            out.push('\n');
                            break;
                        }
                    }
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut prev = ' ';
                    for c in chars.by_ref() {
                        if prev == '*' && c == '/' {
                            break;
                        }
                        prev = c;
                    }
                    out.push(' ');
                }
                '\'' => {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                    out.push_str("''");
                }
                c => out.push(c.to_ascii_uppercase()),
            }
        }
        out
    }

    fn words(code: &str) -> Vec<&str> {
        code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect()
    }

    /// Every problem with one migration's text.
    fn problems(sql: &str, postgres: bool) -> Vec<String> {
        let code = code_of(sql);
        // The words joined by single spaces, padded, so a phrase matches only whole words.
        let phrase_text = format!(" {} ", words(&code).join(" "));
        let mut found = Vec::new();
        let lists: &[&[(&str, &str)]] = if postgres {
            &[FORBIDDEN_EVERYWHERE, FORBIDDEN_POSTGRES]
        } else {
            &[FORBIDDEN_EVERYWHERE]
        };
        for list in lists {
            for (phrase, why) in *list {
                if phrase_text.contains(&format!(" {phrase} ")) {
                    found.push(format!("uses {phrase}: {why}"));
                }
            }
        }
        for (needle, why) in FORBIDDEN_SUBSTRINGS {
            if code.contains(needle) {
                found.push(format!("uses {}: {why}", needle.trim()));
            }
        }
        if postgres {
            // Every schema change must be safe to repeat (see the module doc).
            for statement in code.split(';') {
                let w = words(statement);
                let creates = w.first() == Some(&"CREATE");
                let idempotent = w.windows(3).any(|t| t == ["IF", "NOT", "EXISTS"]);
                if creates && !idempotent {
                    found.push(format!(
                        "`{}` lacks IF NOT EXISTS (CockroachDB may re-run a migration)",
                        statement.split_whitespace().collect::<Vec<_>>().join(" ")
                    ));
                }
                if w.first() == Some(&"ALTER") && w.contains(&"ADD") && !idempotent {
                    found.push(format!(
                        "`{}` lacks IF NOT EXISTS (CockroachDB may re-run a migration)",
                        statement.split_whitespace().collect::<Vec<_>>().join(" ")
                    ));
                }
            }
        }
        found
    }

    /// Checks the files on disk against the embedded list: same names, in order, versions rising.
    fn check_backend(dir: &str, embedded: &[Migration], postgres: bool) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(dir);
        let mut files: Vec<String> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("read {}: {e}", root.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let mut out = Vec::new();
        let names: Vec<String> = embedded.iter().map(|m| format!("{}.sql", m.name)).collect();
        if files != names {
            out.push(format!(
                "schema/{dir} holds {files:?} but the embedded list is {names:?}"
            ));
        }
        // Versions only have to increase: branches developed in parallel are each given a
        // number, so the list may have gaps until all are merged. The runners apply every
        // version not recorded yet, so a gap filled later is still applied.
        let mut previous = 0;
        for m in embedded {
            if m.version <= previous || !m.name.starts_with(&format!("{:04}_", m.version)) {
                out.push(format!("{}: version {} out of sequence", m.name, m.version));
            }
            previous = m.version;
            let on_disk =
                std::fs::read_to_string(root.join(format!("{}.sql", m.name))).unwrap_or_default();
            for p in problems(&on_disk, postgres) {
                out.push(format!("schema/{dir}/{}.sql {p}", m.name));
            }
        }
        out
    }

    #[test]
    fn migrations_keep_to_the_shared_sql_subset() {
        let mut all = check_backend("postgres", POSTGRES, true);
        all.extend(check_backend("sqlite", SQLITE, false));
        assert!(all.is_empty(), "migration problems:\n{}", all.join("\n"));
    }

    #[test]
    fn backends_create_the_same_tables() {
        fn tables(sql: &str) -> Vec<String> {
            let code = code_of(sql);
            let w = words(&code);
            let mut out: Vec<String> = w
                .windows(3)
                .enumerate()
                .filter(|(_, t)| t[0] == "CREATE" && (t[1] == "TABLE" || t[1] == "INDEX"))
                .map(|(i, t)| {
                    let rest = &w[i + 2..];
                    let name = if rest.starts_with(&["IF", "NOT", "EXISTS"]) {
                        rest[3]
                    } else {
                        rest[0]
                    };
                    format!("{} {name}", t[1])
                })
                .collect();
            out.sort();
            out
        }
        // Versions both backends have must create the same tables and indexes. (A migration may
        // land on one backend first; the backends' shared conformance tests catch a missing one.)
        for (pg, lite) in POSTGRES.iter().zip(SQLITE) {
            assert_eq!(pg.name, lite.name);
            assert_eq!(tables(pg.sql), tables(lite.sql), "{}", pg.name);
        }
    }

    #[test]
    fn the_checker_catches_forbidden_constructs() {
        let bad = [
            "CREATE TABLE IF NOT EXISTS t (id SERIAL PRIMARY KEY);",
            "CREATE TABLE IF NOT EXISTS t (id BIGSERIAL PRIMARY KEY);",
            "CREATE SEQUENCE IF NOT EXISTS s;",
            "SELECT pg_advisory_lock(1);",
            "LISTEN events;",
            "NOTIFY events;",
            "CREATE TRIGGER IF NOT EXISTS t AFTER INSERT ON x EXECUTE FUNCTION f();",
            "CREATE EXTENSION IF NOT EXISTS pgcrypto;",
            "CREATE TABLE IF NOT EXISTS t (name TEXT COLLATE \"C\");",
            "CREATE TABLE IF NOT EXISTS t (id INT8) PARTITION BY RANGE (id);",
            "CREATE TABLE t (id TEXT PRIMARY KEY);",
            "CREATE INDEX t_by_x ON t (x);",
            "ALTER TABLE t ADD COLUMN x INT8;",
            "DO $$ BEGIN END $$;",
            "CREATE RULE r AS ON INSERT TO t DO NOTHING;",
            "LOCK TABLE t;",
        ];
        for sql in bad {
            assert!(!problems(sql, true).is_empty(), "not caught: {sql}");
        }
        let fine = [
            "-- SERIAL, LISTEN and COLLATE \"C\" in a comment are fine\n\
             CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, note TEXT DEFAULT 'NOTIFY');",
            "CREATE INDEX IF NOT EXISTS t_by_x ON t (x);",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS x INT8;",
            "INSERT INTO t (id, rule) VALUES ('a', 'b') ON CONFLICT DO NOTHING;",
        ];
        for sql in fine {
            assert!(
                problems(sql, true).is_empty(),
                "{sql}: {:?}",
                problems(sql, true)
            );
        }
    }
}
