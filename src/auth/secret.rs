//! Opaque bearer secrets: API keys and refresh tokens.
//!
//! A token looks like `aerugo_ak_<id>_<secret>`: a fixed product prefix (so leaked tokens are
//! easy to spot by secret scanners), a [`SecretKind`] tag, a public `id` that finds the stored
//! row, and 43 random base62 characters (≥ 256 bits). Only the SHA-256 of the whole token is
//! stored; the token itself is shown once.
//!
//! Why SHA-256 and not Argon2: Argon2's cost exists to slow down guessing of *low-entropy*
//! human passwords. These secrets carry 256 random bits, so a single fast hash is already
//! beyond brute force, and a fast hash keeps every API-key-authenticated request cheap (an
//! Argon2 verification per `docker pull` layer request would be a denial-of-service lever).
//!
//! Invariants: comparisons are constant-time ([`subtle`]); `Debug` never shows the secret.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token starts with this, followed by the kind's tag.
const PRODUCT: &str = "aerugo";
/// Length of the public id part, in base62 characters (~71 bits: unique without coordination).
const ID_LEN: usize = 12;
/// Length of the secret part, in base62 characters (43 × log2(62) ≈ 256 bits).
const SECRET_LEN: usize = 43;

/// What a token is for; its tag is part of the token so one kind can never pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// A long-lived API key (robot account), usable as a `docker login` password.
    ApiKey,
    /// A refresh token handed out by the token endpoint for `offline_token=true`.
    RefreshToken,
}

impl SecretKind {
    /// The tag inside the token: `ak` or `rt`.
    pub fn tag(self) -> &'static str {
        match self {
            SecretKind::ApiKey => "ak",
            SecretKind::RefreshToken => "rt",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "ak" => Some(SecretKind::ApiKey),
            "rt" => Some(SecretKind::RefreshToken),
            _ => None,
        }
    }
}

/// A freshly generated secret: show `token` to the user once, store `id` and `hash`.
#[derive(Clone)]
pub struct NewSecret {
    /// What the token is for.
    pub kind: SecretKind,
    /// The public id (base62), the lookup key of the stored row.
    pub id: String,
    /// The full token, e.g. `aerugo_ak_<id>_<secret>`. Never log or store it.
    pub token: String,
    /// SHA-256 of the full token: the only form that is stored.
    pub hash: Vec<u8>,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSecret")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn random_base62(len: usize) -> String {
    // `rand::rng()` is a CSPRNG (ChaCha12) seeded from the operating system, and `Alphanumeric`
    // samples the 62 characters uniformly.
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The stored form of a token: its SHA-256.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Makes a new random token of `kind`.
pub fn generate(kind: SecretKind) -> NewSecret {
    let id = random_base62(ID_LEN);
    let token = format!(
        "{PRODUCT}_{}_{id}_{}",
        kind.tag(),
        random_base62(SECRET_LEN)
    );
    NewSecret {
        kind,
        hash: hash(&token),
        id,
        token,
    }
}

/// Splits a presented token into its kind and public id, to find the stored row.
///
/// Returns `None` for anything that is not shaped like a token this module makes, so callers
/// can cheaply tell an API key from a password (`docker login` sends either as the password).
/// A `Some` says nothing about validity: [`verify`] against the stored hash decides that.
pub fn parse(token: &str) -> Option<(SecretKind, &str)> {
    let rest = token.strip_prefix(PRODUCT)?.strip_prefix('_')?;
    let (tag, rest) = rest.split_once('_')?;
    let kind = SecretKind::from_tag(tag)?;
    let (id, secret) = rest.split_once('_')?;
    let base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (id.len() == ID_LEN && secret.len() == SECRET_LEN && base62(id) && base62(secret))
        .then_some((kind, id))
}

/// Whether `token` hashes to `stored_hash`, compared in constant time.
pub fn verify(token: &str, stored_hash: &[u8]) -> bool {
    hash(token).ct_eq(stored_hash).into()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        for kind in [SecretKind::ApiKey, SecretKind::RefreshToken] {
            let new = generate(kind);
            let prefix = format!("aerugo_{}_{}_", kind.tag(), new.id);
            assert!(new.token.starts_with(&prefix), "{}", new.token);
            assert_eq!(new.token.len(), prefix.len() + SECRET_LEN);
            assert_eq!(new.id.len(), ID_LEN);
            assert_eq!(new.hash.len(), 32);
            assert_eq!(parse(&new.token), Some((kind, new.id.as_str())));
            assert!(verify(&new.token, &new.hash));
        }
    }

    #[test]
    fn tokens_are_unique() {
        let tokens: HashSet<String> = (0..200)
            .map(|_| generate(SecretKind::ApiKey).token)
            .collect();
        assert_eq!(tokens.len(), 200);
    }

    #[test]
    fn verify_rejects_other_tokens_and_hashes() {
        let a = generate(SecretKind::ApiKey);
        let b = generate(SecretKind::ApiKey);
        assert!(!verify(&a.token, &b.hash));
        assert!(!verify(&b.token, &a.hash));
        assert!(!verify(&a.token, &[]));
        assert!(!verify(&a.token, &a.hash[..31]));
        let mut flipped = a.hash.clone();
        flipped[31] ^= 1;
        assert!(!verify(&a.token, &flipped));
        // One character changed in the secret part.
        let mut tampered = a.token.clone();
        let last = if tampered.ends_with('a') { "b" } else { "a" };
        tampered.replace_range(tampered.len() - 1.., last);
        assert!(!verify(&tampered, &a.hash));
    }

    #[test]
    fn parse_refuses_what_is_not_a_token() {
        let good = generate(SecretKind::RefreshToken);
        let id = &good.id;
        let secret = &good.token[good.token.len() - SECRET_LEN..];
        for bad in [
            String::new(),
            "hunter2".to_owned(),
            "aerugo".to_owned(),
            "aerugo_ak".to_owned(),
            format!("aerugo_xx_{id}_{secret}"),
            format!("other_ak_{id}_{secret}"),
            format!("aerugo_ak_{id}"),
            format!("aerugo_ak_{id}_"),
            format!("aerugo_ak_{id}_{secret}x"),
            format!("aerugo_ak_{id}x_{secret}"),
            format!("aerugo_ak_{}_{secret}", &id[1..]),
            format!("aerugo_ak_{id}_{}-", &secret[1..]),
            format!("aerugo_ak_{id}_{secret}_extra"),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
        assert_eq!(
            parse(&format!("aerugo_ak_{id}_{secret}")),
            Some((SecretKind::ApiKey, id.as_str()))
        );
    }

    #[test]
    fn debug_output_hides_the_token() {
        let new = generate(SecretKind::ApiKey);
        let debug = format!("{new:?}");
        assert!(!debug.contains(&new.token), "{debug}");
        assert!(debug.contains(&new.id));
    }

    #[test]
    fn hash_is_sha256_of_the_token() {
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
