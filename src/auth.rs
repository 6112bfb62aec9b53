//! Pure authentication and authorization primitives: password hashing, opaque bearer secrets,
//! Docker token scopes, ES256 JSON Web Tokens and the access policy (repositories in `permission`,
//! organizations and accounts in `policy`).
//!
//! Invariants:
//! - No I/O, no async, no database: callers pass bytes (PEM files they read, hashes they loaded)
//!   and get values back. Everything here is unit tested in place.
//! - Secrets are compared in constant time, and no type here prints a secret in its `Debug`
//!   output.
//! - This is the only module that imports `jsonwebtoken` and `argon2` (enforced by `tidy`).
//!
//! Must not depend on any crate module other than `oci` and `config`.

pub mod jwt;
pub mod password;
pub mod permission;
pub mod policy;
pub mod scope;
pub mod secret;

pub use jwt::{Claims, KeySet, LEEWAY_SECS, generate_signing_pem};
pub use permission::{AccessFacts, Action, KeyCap, OrgRole, Permission, effective_permission};
pub use policy::{AccountAction, AccountFacts, OrgAction, OrgFacts, account_permits, org_permits};
pub use scope::{AccessEntry, Scope, parse_scopes};
pub use secret::{NewSecret, SecretKind};

/// Everything that can go wrong in `auth`.
///
/// Token verification failures are split by cause so that callers can log why a token was
/// refused; all of them mean "401 with `error=\"invalid_token\"`" to a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Argon2 refused to hash (only on absurd inputs or a broken system RNG).
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// A PEM key could not be read, or is not a P-256 key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A token could not be signed.
    #[error("token signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The token is not a well-formed JWT, or its signature does not verify.
    #[error("invalid token")]
    InvalidToken(#[source] Option<jsonwebtoken::errors::Error>),
    /// The token's header names an algorithm other than ES256 (including `none` and HS*).
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The token's `kid` is missing or names a key this node does not know.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// `exp` is in the past by more than the leeway.
    #[error("token expired")]
    TokenExpired,
    /// `nbf` is in the future by more than the leeway.
    #[error("token not yet valid")]
    TokenNotYetValid,
    /// `iss` is not this registry's issuer.
    #[error("token issuer mismatch")]
    WrongIssuer,
    /// `aud` is not this registry's service name.
    #[error("token audience mismatch")]
    WrongAudience,
    /// A resource scope does not follow the Docker scope grammar.
    #[error("malformed scope {0:?}")]
    InvalidScope(String),
}
