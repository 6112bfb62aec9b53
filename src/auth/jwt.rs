//! ES256 JSON Web Tokens for the Docker token protocol: claims, a key set with rotation, minting,
//! verification and the JWKS document.
//!
//! Invariants:
//! - Only ES256 (ECDSA P-256 + SHA-256) is minted or accepted; `none`, HS* and every other
//!   algorithm are refused before any key is touched, so algorithm-confusion attacks have
//!   nothing to work with.
//! - Every token names its key with `kid` (RFC 7638 JWK thumbprint of the public key: stable,
//!   derivable from the JWKS by anyone). A token without a `kid`, or whose `kid` is not in the
//!   set, is refused.
//! - Rotation: one key signs; older keys stay in the set as verify-only keys until every token
//!   they signed has expired. Every node loads the same PEM files, so any node verifies any
//!   node's tokens without calling anyone.
//! - `exp` and `nbf` are checked with [`LEEWAY_SECS`] of clock-skew leeway; `iss` and `aud` must
//!   match exactly.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::elliptic_curve::rand_core::OsRng;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, LineEnding};
use p256::{PublicKey, SecretKey};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Error;
use super::scope::AccessEntry;

/// Clock-skew leeway for `exp` and `nbf`, in seconds (what distribution uses).
pub const LEEWAY_SECS: u64 = 60;

/// The claims of a registry token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the token service's configured name.
    pub iss: String,
    /// Subject: the username, or `""` for an anonymous token.
    pub sub: String,
    /// Audience: the registry's `service` name.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    pub nbf: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// A unique token id.
    pub jti: String,
    /// What the token grants; missing means nothing.
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// What the token was minted from, so every use can re-check it against current facts.
    #[serde(default, flatten)]
    pub origin: Origin,
}

/// The credential behind a token: the subject's user id, their credential generation at minting,
/// and the API key or refresh token it was minted with. Absent on anonymous tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The subject's user id (a user name can be deleted and taken again; an id cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The subject's credential generation when the token was minted (moved on by every password
    /// change or reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgen: Option<i64>,
    /// The API key the token was minted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akid: Option<String>,
    /// The refresh token the token was minted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtid: Option<String>,
}

impl Claims {
    /// Claims issued at `now` (Unix seconds) and valid for `ttl_secs`, with a random `jti`.
    pub fn new(
        issuer: &str,
        subject: &str,
        audience: &str,
        access: Vec<AccessEntry>,
        now: u64,
        ttl_secs: u64,
    ) -> Claims {
        let jti: [u8; 16] = rand::rng().random();
        Claims {
            iss: issuer.to_owned(),
            sub: subject.to_owned(),
            aud: audience.to_owned(),
            exp: now.saturating_add(ttl_secs),
            nbf: now,
            iat: now,
            jti: hex::encode(jti),
            access,
            origin: Origin::default(),
        }
    }

    /// Whether any `access` entry grants `action` on (`resource_type`, `name`).
    pub fn grants(&self, resource_type: &str, name: &str, action: &str) -> bool {
        self.access
            .iter()
            .any(|entry| entry.grants(resource_type, name, action))
    }
}

/// One public key that verifies tokens.
struct VerifyKey {
    kid: String,
    key: DecodingKey,
    /// Base64url affine coordinates, for the JWKS.
    x: String,
    y: String,
}

impl VerifyKey {
    fn new(public: &PublicKey) -> Result<VerifyKey, Error> {
        let point = public.to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            // Only the identity point lacks coordinates, and it is not a valid public key.
            return Err(Error::InvalidKey(
                "public key has no coordinates".to_owned(),
            ));
        };
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = URL_SAFE_NO_PAD.encode(y);
        // RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let key = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| Error::InvalidKey(e.to_string()))?;
        Ok(VerifyKey { kid, key, x, y })
    }
}

/// The keys of the token service: one ES256 signing key and every key that still verifies.
pub struct KeySet {
    signing_kid: String,
    signing: EncodingKey,
    /// The signing key's public half first, then the extra keys; no duplicate `kid`.
    verify: Vec<VerifyKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("signing_kid", &self.signing_kid)
            .field("verify_kids", &self.kids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn pem_str(pem: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(pem).map_err(|_| Error::InvalidKey("PEM is not UTF-8".to_owned()))
}

/// Reads a P-256 private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`,
/// what `openssl ecparam -genkey` writes).
fn parse_private(pem: &str) -> Result<SecretKey, Error> {
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        SecretKey::from_sec1_pem(pem).map_err(|e| Error::InvalidKey(format!("SEC1 key: {e}")))
    } else {
        SecretKey::from_pkcs8_pem(pem)
            .map_err(|e| Error::InvalidKey(format!("expected a P-256 PKCS#8 private key: {e}")))
    }
}

/// Reads a P-256 public key from a private key PEM or an SPKI public key PEM.
fn parse_public(pem: &str) -> Result<PublicKey, Error> {
    if pem.contains("-----BEGIN PUBLIC KEY-----") {
        PublicKey::from_public_key_pem(pem)
            .map_err(|e| Error::InvalidKey(format!("expected a P-256 public key: {e}")))
    } else {
        parse_private(pem).map(|secret| secret.public_key())
    }
}

impl KeySet {
    /// Builds a key set from PEM bytes: `signing_pem` is the P-256 private key that signs (PKCS#8,
    /// or SEC1), `extra_verify_pems` are older keys that still verify (private or public PEMs).
    /// Passing the same key twice is harmless.
    pub fn from_pems(signing_pem: &[u8], extra_verify_pems: &[&[u8]]) -> Result<KeySet, Error> {
        let secret = parse_private(pem_str(signing_pem)?)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| Error::InvalidKey(e.to_string()))?;
        let signing = EncodingKey::from_ec_der(der.as_bytes());
        let first = VerifyKey::new(&secret.public_key())?;
        let signing_kid = first.kid.clone();
        let mut verify = vec![first];
        for pem in extra_verify_pems {
            let key = VerifyKey::new(&parse_public(pem_str(pem)?)?)?;
            if !verify.iter().any(|k| k.kid == key.kid) {
                verify.push(key);
            }
        }
        Ok(KeySet {
            signing_kid,
            signing,
            verify,
        })
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// The `kid` of every verify key, the signing key's first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verify.iter().map(|k| k.kid.as_str())
    }

    /// Signs `claims` with the signing key: header `{"typ":"JWT","alg":"ES256","kid":…}`.
    pub fn mint(&self, claims: &Claims) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing).map_err(Error::Sign)
    }

    /// Verifies a token: ES256 only, a known `kid`, a valid signature, `iss == issuer`,
    /// `aud == audience`, and `exp`/`nbf` within [`LEEWAY_SECS`] of the system clock.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<Claims, Error> {
        // Look at the header ourselves first, so that a refusal says why and so that no key is
        // chosen for a token that names a foreign algorithm.
        let header = peek_header(token)?;
        if header.alg != "ES256" {
            return Err(Error::AlgorithmNotAllowed);
        }
        let kid = header.kid.ok_or(Error::UnknownKey)?;
        let key = self
            .verify
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(Error::UnknownKey)?;

        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);

        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                ErrorKind::ImmatureSignature => Error::TokenNotYetValid,
                ErrorKind::InvalidIssuer => Error::WrongIssuer,
                ErrorKind::InvalidAudience => Error::WrongAudience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    Error::AlgorithmNotAllowed
                }
                _ => Error::InvalidToken(Some(e)),
            })
    }

    /// The JWKS document served at `/auth/jwks`: every verify key as an EC P-256 JWK.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .verify
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": k.x,
                    "y": k.y,
                    "kid": k.kid,
                    "use": "sig",
                    "alg": "ES256",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The two header fields `verify` decides on before any cryptography.
#[derive(Deserialize)]
struct PeekedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, Error> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::InvalidToken(None));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::InvalidToken(None))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::InvalidToken(None))
}

/// A new random P-256 signing key as a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), for
/// bootstrapping a key file.
pub fn generate_signing_pem() -> Result<String, Error> {
    let secret = SecretKey::random(&mut OsRng);
    secret
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.as_str().to_owned())
        .map_err(|e| Error::InvalidKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::jwk::JwkSet;
    use p256::pkcs8::EncodePublicKey;

    use super::*;
    use crate::auth::permission::Action;
    use crate::auth::scope::Scope;

    /// Made with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` (a test key).
    const OPENSSL_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaxxTe2bryF4TRBm8
5DiO+Q5v0dBjRc/ruquoo7+SSHuhRANCAAR9SgI8m+ihyNTUtvJPiWbkezLc/2Dk
XM99aOesFym++aVJcHSe9oDYI1kw7Nm/xK9D3HVoZ813GUDnuk7tbXEA
-----END PRIVATE KEY-----
";
    /// The same key as `openssl ec` writes it (SEC1).
    const OPENSSL_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIGscU3tm68heE0QZvOQ4jvkOb9HQY0XP67qrqKO/kkh7oAoGCCqGSM49
AwEHoUQDQgAEfUoCPJvoocjU1LbyT4lm5Hsy3P9g5FzPfWjnrBcpvvmlSXB0nvaA
2CNZMOzZv8SvQ9x1aGfNdxlA57pO7W1xAA==
-----END EC PRIVATE KEY-----
";
    /// Its public half (`openssl pkey -pubout`).
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfUoCPJvoocjU1LbyT4lm5Hsy3P9g
5FzPfWjnrBcpvvmlSXB0nvaA2CNZMOzZv8SvQ9x1aGfNdxlA57pO7W1xAA==
-----END PUBLIC KEY-----
";
    const P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEyUeBCkBRdYjIbBFl0QMDO28e7EGM/kg9
zCBQ2QTKJBLLtiXXuKK7In0027nFa6EMEZ3K7HNs2XVW6Wy8nq5JUiHgUys9ZCjQ
SMhpx0tbc+h6kijHWo2HzlOLuezaF0B7
-----END PUBLIC KEY-----
";
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIP187KNhS2vjNBZ8BlPPK0yf10Nyw/nVPGQ3eL2Ee8tD
-----END PRIVATE KEY-----
";

    const ISS: &str = "aerugo-token";
    const AUD: &str = "registry.example";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn new_pem() -> String {
        generate_signing_pem().unwrap()
    }

    fn keyset() -> KeySet {
        KeySet::from_pems(new_pem().as_bytes(), &[]).unwrap()
    }

    fn claims() -> Claims {
        Claims::new(
            ISS,
            "alice",
            AUD,
            vec![Scope::repository("alice/app", &[Action::Pull, Action::Push]).into()],
            now(),
            300,
        )
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn mint_verify_round_trip() {
        let keys = keyset();
        let claims = claims();
        let token = keys.mint(&claims).unwrap();
        let back = keys.verify(&token, ISS, AUD).unwrap();
        assert_eq!(back, claims);
        assert!(back.grants("repository", "alice/app", "push"));
        assert!(!back.grants("repository", "alice/app", "delete"));

        let header = peek_header(&token).unwrap();
        assert_eq!(header.alg, "ES256");
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid()));
    }

    #[test]
    fn anonymous_token_with_empty_subject_and_access() {
        let keys = keyset();
        let claims = Claims::new(ISS, "", AUD, vec![], now(), 60);
        let token = keys.mint(&claims).unwrap();
        assert_eq!(keys.verify(&token, ISS, AUD).unwrap(), claims);
    }

    #[test]
    fn missing_access_claim_means_nothing() {
        let keys = keyset();
        let t = now();
        let payload = serde_json::json!({
            "iss": ISS, "sub": "bob", "aud": AUD, "exp": t + 60, "nbf": t, "iat": t, "jti": "x",
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.signing_kid().to_owned());
        let token = jsonwebtoken::encode(&header, &payload, &keys.signing).unwrap();
        assert!(keys.verify(&token, ISS, AUD).unwrap().access.is_empty());
    }

    #[test]
    fn expiry_and_not_before_use_the_leeway() {
        let keys = keyset();
        let t = now();
        let at = |exp: u64, nbf: u64| {
            let mut c = claims();
            c.exp = exp;
            c.nbf = nbf;
            c.iat = nbf;
            keys.verify(&keys.mint(&c).unwrap(), ISS, AUD)
        };
        // Expired 30 s ago: within the 60 s leeway.
        assert!(at(t - 30, t - 300).is_ok());
        // Expired 120 s ago: beyond it.
        assert!(matches!(at(t - 120, t - 300), Err(Error::TokenExpired)));
        // Not valid for another 30 s: within the leeway.
        assert!(at(t + 300, t + 30).is_ok());
        // Not valid for another 120 s: beyond it.
        assert!(matches!(at(t + 300, t + 120), Err(Error::TokenNotYetValid)));
    }

    #[test]
    fn wrong_issuer_or_audience_is_rejected() {
        let keys = keyset();
        let token = keys.mint(&claims()).unwrap();
        assert!(matches!(
            keys.verify(&token, "someone-else", AUD),
            Err(Error::WrongIssuer)
        ));
        assert!(matches!(
            keys.verify(&token, ISS, "other.registry"),
            Err(Error::WrongAudience)
        ));
    }

    #[test]
    fn audience_as_an_array_is_not_our_token() {
        let keys = keyset();
        let t = now();
        let payload = serde_json::json!({
            "iss": ISS, "sub": "bob", "aud": [AUD], "exp": t + 60, "nbf": t, "iat": t, "jti": "x",
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.signing_kid().to_owned());
        let token = jsonwebtoken::encode(&header, &payload, &keys.signing).unwrap();
        assert!(matches!(
            keys.verify(&token, ISS, AUD),
            Err(Error::InvalidToken(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let keys = keyset();
        let token = keys.mint(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        // A payload that grants more, with the original signature.
        let mut forged_claims = claims();
        forged_claims.access = vec![
            Scope::repository("alice/app", &[Action::Pull, Action::Push, Action::Delete]).into(),
        ];
        let forged_payload = b64(&serde_json::to_value(&forged_claims).unwrap());
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            keys.verify(&forged, ISS, AUD),
            Err(Error::InvalidToken(_))
        ));

        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        sig[10] ^= 0x01;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
        assert!(matches!(
            keys.verify(&flipped, ISS, AUD),
            Err(Error::InvalidToken(_))
        ));

        // Garbage in every shape.
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            &format!("{}.{}", parts[0], parts[1]),
            &format!("{token}.x"),
        ] {
            assert!(
                matches!(keys.verify(bad, ISS, AUD), Err(Error::InvalidToken(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn token_from_a_key_outside_the_set_is_rejected() {
        let ours = keyset();
        let theirs = keyset();
        let token = theirs.mint(&claims()).unwrap();
        assert!(matches!(
            ours.verify(&token, ISS, AUD),
            Err(Error::UnknownKey)
        ));

        // The same foreign signature under a header that claims our kid.
        let parts: Vec<&str> = token.split('.').collect();
        let header = b64(&serde_json::json!({"typ":"JWT","alg":"ES256","kid":ours.signing_kid()}));
        let relabelled = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(
            ours.verify(&relabelled, ISS, AUD),
            Err(Error::InvalidToken(_))
        ));

        // No kid at all.
        let header = b64(&serde_json::json!({"typ":"JWT","alg":"ES256"}));
        let no_kid = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(
            ours.verify(&no_kid, ISS, AUD),
            Err(Error::UnknownKey)
        ));
    }

    #[test]
    fn rotation_old_tokens_still_verify() {
        let old_pem = new_pem();
        let new_pem = new_pem();
        let old = KeySet::from_pems(old_pem.as_bytes(), &[]).unwrap();
        let old_token = old.mint(&claims()).unwrap();

        let rotated = KeySet::from_pems(new_pem.as_bytes(), &[old_pem.as_bytes()]).unwrap();
        assert_ne!(rotated.signing_kid(), old.signing_kid());
        assert!(rotated.verify(&old_token, ISS, AUD).is_ok());
        let new_token = rotated.mint(&claims()).unwrap();
        assert_eq!(
            peek_header(&new_token).unwrap().kid.as_deref(),
            Some(rotated.signing_kid())
        );
        assert!(rotated.verify(&new_token, ISS, AUD).is_ok());
        // A node that only knows the old key does not accept the new one's tokens.
        assert!(matches!(
            old.verify(&new_token, ISS, AUD),
            Err(Error::UnknownKey)
        ));

        // The old key as a public PEM works the same.
        let old_public = SecretKey::from_pkcs8_pem(&old_pem)
            .unwrap()
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let rotated = KeySet::from_pems(new_pem.as_bytes(), &[old_public.as_bytes()]).unwrap();
        assert!(rotated.verify(&old_token, ISS, AUD).is_ok());
    }

    #[test]
    fn foreign_algorithms_are_refused() {
        let keys = keyset();
        let payload = serde_json::to_value(claims()).unwrap();
        let kid = keys.signing_kid();

        // alg: none, with and without a signature part.
        let none = b64(&serde_json::json!({"typ":"JWT","alg":"none","kid":kid}));
        for token in [
            format!("{none}.{}.", b64(&payload)),
            format!("{none}.{}.c2ln", b64(&payload)),
        ] {
            assert!(matches!(
                keys.verify(&token, ISS, AUD),
                Err(Error::AlgorithmNotAllowed)
            ));
        }

        // HS256 keyed with the public key's JWKS coordinates (the classic confusion attack),
        // and a plain shared secret.
        let jwks = keys.jwks();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        for secret in [x.as_bytes(), b"secret".as_slice()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            let token =
                jsonwebtoken::encode(&header, &payload, &EncodingKey::from_secret(secret)).unwrap();
            assert!(matches!(
                keys.verify(&token, ISS, AUD),
                Err(Error::AlgorithmNotAllowed)
            ));
        }

        // Other names, including case tricks.
        for alg in ["ES384", "RS256", "EdDSA", "es256", "HS512", ""] {
            let header = b64(&serde_json::json!({"typ":"JWT","alg":alg,"kid":kid}));
            let token = format!("{header}.{}.c2ln", b64(&payload));
            assert!(
                matches!(
                    keys.verify(&token, ISS, AUD),
                    Err(Error::AlgorithmNotAllowed)
                ),
                "{alg}"
            );
        }
    }

    #[test]
    fn jwks_lists_every_verify_key() {
        let a = new_pem();
        let b = new_pem();
        let keys = KeySet::from_pems(
            OPENSSL_PKCS8.as_bytes(),
            &[a.as_bytes(), b.as_bytes(), OPENSSL_PUBLIC.as_bytes()],
        )
        .unwrap();
        // OPENSSL_PUBLIC is the signing key again: listed once.
        let kids: Vec<&str> = keys.kids().collect();
        assert_eq!(kids.len(), 3);
        assert_eq!(kids[0], keys.signing_kid());

        let jwks = keys.jwks();
        let entries = jwks["keys"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, kid) in entries.iter().zip(&kids) {
            assert_eq!(entry["kid"], *kid);
            assert_eq!(entry["kty"], "EC");
            assert_eq!(entry["crv"], "P-256");
            assert_eq!(entry["use"], "sig");
            assert_eq!(entry["alg"], "ES256");
            for coord in ["x", "y"] {
                let bytes = URL_SAFE_NO_PAD
                    .decode(entry[coord].as_str().unwrap())
                    .unwrap();
                assert_eq!(bytes.len(), 32, "{coord}");
            }
        }

        // A third party can verify our tokens with nothing but the JWKS.
        let set: JwkSet = serde_json::from_value(jwks).unwrap();
        let token = keys.mint(&claims()).unwrap();
        let jwk = set.find(keys.signing_kid()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUD]);
        let decoded = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims.sub, "alice");
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_and_stable() {
        let pkcs8 = KeySet::from_pems(OPENSSL_PKCS8.as_bytes(), &[]).unwrap();
        let sec1 = KeySet::from_pems(OPENSSL_SEC1.as_bytes(), &[]).unwrap();
        assert_eq!(pkcs8.signing_kid(), sec1.signing_kid());
        assert_eq!(pkcs8.signing_kid().len(), 43);

        // jsonwebtoken's own RFC 7638 implementation agrees.
        let set: JwkSet = serde_json::from_value(pkcs8.jwks()).unwrap();
        let thumbprint = set.keys[0]
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap();
        assert_eq!(thumbprint, pkcs8.signing_kid());

        // A token minted from the SEC1 file verifies with the PKCS#8 one.
        let token = sec1.mint(&claims()).unwrap();
        assert!(pkcs8.verify(&token, ISS, AUD).is_ok());
        assert_ne!(keyset().signing_kid(), pkcs8.signing_kid());
    }

    #[test]
    fn bad_key_material_is_an_error() {
        let cases: [(&[u8], &[&[u8]]); 7] = [
            (b"", &[]),
            (b"not a pem", &[]),
            (&[0xff, 0xfe], &[]),
            (ED25519_PRIVATE.as_bytes(), &[]),
            // A public key cannot sign.
            (OPENSSL_PUBLIC.as_bytes(), &[]),
            (OPENSSL_PKCS8.as_bytes(), &[P384_PUBLIC.as_bytes()]),
            (OPENSSL_PKCS8.as_bytes(), &[ED25519_PRIVATE.as_bytes()]),
        ];
        for (signing, extra) in cases {
            assert!(
                matches!(KeySet::from_pems(signing, extra), Err(Error::InvalidKey(_))),
                "{:?}",
                String::from_utf8_lossy(signing)
            );
        }
    }

    #[test]
    fn generated_pems_are_pkcs8_and_distinct() {
        let a = new_pem();
        let b = new_pem();
        assert!(a.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{a}");
        assert_ne!(a, b);
        assert!(SecretKey::from_pkcs8_pem(&a).is_ok());
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let pem = new_pem();
        let keys = KeySet::from_pems(pem.as_bytes(), &[]).unwrap();
        let debug = format!("{keys:?}");
        assert!(debug.contains(keys.signing_kid()));
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body[..20]));
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<KeySet>();
        send_sync::<Claims>();
        send_sync::<Error>();
    }

    #[test]
    fn claims_new_sets_times_and_unique_jti() {
        let a = Claims::new(ISS, "u", AUD, vec![], 1000, 300);
        let b = Claims::new(ISS, "u", AUD, vec![], 1000, 300);
        assert_eq!((a.iat, a.nbf, a.exp), (1000, 1000, 1300));
        assert_ne!(a.jti, b.jti);
        assert_eq!(a.jti.len(), 32);
        assert_eq!(
            Claims::new(ISS, "u", AUD, vec![], u64::MAX, 5).exp,
            u64::MAX
        );
    }
}
