//! Forward-only schema migrations, embedded from `schema/<backend>/NNNN_verb_noun.sql`.
//!
//! Each backend applies the migrations it has not recorded in `schema_migrations`, one transaction
//! per migration, in version order. A migration is never edited after it has shipped.

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
pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "0001_create_registry",
    sql: include_str!("../../schema/sqlite/0001_create_registry.sql"),
}];
