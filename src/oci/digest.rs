//! Content digests (`algorithm:encoded`) as the OCI image spec defines them, and streaming hashers.
//!
//! Invariant: a [`Digest`] value is always syntactically valid and uses a supported algorithm,
//! with a lowercase hex encoding of the right length.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

/// The digest algorithms Aerugo accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256, the canonical algorithm.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name in a digest string.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The algorithm called `name` (`sha256`, `sha512`), if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string does not follow the digest grammar.
    #[error("invalid digest format")]
    Malformed,
    /// The algorithm is well-formed but not supported.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The encoded part has the wrong length or characters for its algorithm.
    #[error("invalid encoded part for {0}")]
    BadEncoding(&'static str),
}

impl Digest {
    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        if self.0.starts_with("sha512:") {
            DigestAlgorithm::Sha512
        } else {
            DigestAlgorithm::Sha256
        }
    }

    /// The hex part after the colon.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, hex)| hex)
    }

    /// The full string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Hashes `data` with `algorithm`.
    pub fn compute(algorithm: DigestAlgorithm, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Digest {
        Self::compute(DigestAlgorithm::Sha256, data)
    }
}

fn algorithm_component_ok(s: &str) -> bool {
    // algorithm-component ::= [a-z0-9]+, joined by [+._-]
    !s.is_empty()
        && s.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, encoded) = s.split_once(':').ok_or(DigestError::Malformed)?;
        if !algorithm_component_ok(alg)
            || encoded.is_empty()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
        {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        if encoded.len() != algorithm.hex_len()
            || !encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding(algorithm.as_str()));
        }
        Ok(Digest(s.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// An incremental hasher whose state can be saved between requests, so that the next chunk of an
/// upload may be hashed by another process.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// Finishes and returns the digest.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest(format!("sha256:{}", hex::encode(h.finalize()))),
            Hasher::Sha512(h) => Digest(format!("sha512:{}", hex::encode(h.finalize()))),
        }
    }

    /// Serializes the internal state: one algorithm byte, then the hash state.
    pub fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        match self {
            Hasher::Sha256(h) => {
                out.push(1);
                out.extend_from_slice(h.serialize().as_slice());
            }
            Hasher::Sha512(h) => {
                out.push(2);
                out.extend_from_slice(h.serialize().as_slice());
            }
        }
        out
    }

    /// Restores a state written by [`Hasher::save`]; `None` when the bytes are not such a state.
    pub fn restore(state: &[u8]) -> Option<Self> {
        let (&tag, rest) = state.split_first()?;
        match tag {
            1 => {
                let arr = rest.try_into().ok()?;
                Sha256::deserialize(arr).ok().map(Hasher::Sha256)
            }
            2 => {
                let arr = rest.try_into().ok()?;
                Sha512::deserialize(arr).ok().map(Hasher::Sha512)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_digests() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d, Digest::sha256(b""));
        let d512 = Digest::compute(DigestAlgorithm::Sha512, b"x");
        assert_eq!(d512.as_str().parse::<Digest>().unwrap(), d512);
    }

    #[test]
    fn refuses_bad_digests() {
        for (input, want) in [
            ("", DigestError::Malformed),
            ("sha256", DigestError::Malformed),
            ("sha256:", DigestError::Malformed),
            (":abc", DigestError::Malformed),
            ("SHA256:abc", DigestError::Malformed),
            ("sha256:../../etc", DigestError::Malformed),
            ("sha256:%2e%2e", DigestError::Malformed),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                DigestError::UnsupportedAlgorithm("md5".into()),
            ),
            ("sha256:abc", DigestError::BadEncoding("sha256")),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestError::BadEncoding("sha256"),
            ),
        ] {
            assert_eq!(input.parse::<Digest>().unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn hasher_state_survives_save_and_restore() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let mut h = Hasher::new(alg);
            h.update(b"hello ");
            let saved = h.save();
            let mut restored = Hasher::restore(&saved).unwrap();
            restored.update(b"world");
            assert_eq!(restored.finish(), Digest::compute(alg, b"hello world"));
        }
        assert!(Hasher::restore(b"").is_none());
        assert!(Hasher::restore(&[1, 2, 3]).is_none());
        assert_eq!(Hasher::new(DigestAlgorithm::Sha256).save().len(), 105);
    }
}
