//! Password hashing with Argon2id, stored as PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
//!
//! Invariants:
//! - New hashes always use [`PARAMS`] and a fresh random 16-byte salt.
//! - Verification uses the parameters stored in the PHC string, so old hashes keep working after
//!   a parameter change; [`needs_rehash`] tells the caller when to re-hash on a successful login.
//! - [`dummy_verify`] costs the same as a real verification, so that a login for an unknown user
//!   takes as long as one for a known user (no user-enumeration timing oracle).

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use super::Error;

/// Argon2 memory cost in KiB: 19 MiB, the OWASP minimum for Argon2id.
pub const M_COST_KIB: u32 = 19_456;
/// Argon2 time cost (passes over memory).
pub const T_COST: u32 = 2;
/// Argon2 parallelism (lanes).
pub const P_COST: u32 = 1;

/// The parameters every new hash is made with (OWASP's Argon2id minimum: m=19 MiB, t=2, p=1).
///
/// Hashing with these takes tens of milliseconds on a server core, which bounds how fast an
/// attacker holding the database can guess, while keeping logins cheap enough to serve.
pub const PARAMS: Params = match Params::new(M_COST_KIB, T_COST, P_COST, None) {
    Ok(params) => params,
    // Evaluated at compile time: bad constants fail the build, never a request.
    Err(_) => panic!("invalid Argon2 parameters"),
};

/// Hashes whose stored parameters exceed these are refused by [`verify_password`] rather than
/// computed: a corrupted or planted row must not make one login allocate gigabytes or spin for
/// minutes.
const MAX_VERIFY_M_COST_KIB: u32 = 1024 * 1024;
const MAX_VERIFY_T_COST: u32 = 64;
const MAX_VERIFY_P_COST: u32 = 64;

/// A PHC string made with [`PARAMS`] for a random password nobody knows; [`dummy_verify`]
/// checks against it. A unit test pins that its parameters equal [`PARAMS`].
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$X2q+sLyUwhJKZRWib69Epw$Eb//ubMyNzyLcsS82uBRhTZXSwSj0KcjX6CpMflU/Hw";

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, PARAMS)
}

/// Hashes `password` with Argon2id and a random salt, returning the PHC string to store.
pub fn hash_password(password: &str) -> Result<String, Error> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| Error::PasswordHash(e.to_string()))
}

/// Whether `password` matches the stored PHC string.
///
/// The final comparison is constant-time (argon2's verifier). A malformed PHC string, an
/// unsupported algorithm, or parameters beyond sane bounds all yield `false`.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if params.m_cost() > MAX_VERIFY_M_COST_KIB
        || params.t_cost() > MAX_VERIFY_T_COST
        || params.p_cost() > MAX_VERIFY_P_COST
    {
        return false;
    }
    // The verifier takes algorithm, version and parameters from `hash`, not from `hasher()`.
    hasher().verify_password(password.as_bytes(), &hash).is_ok()
}

/// Spends the time of one [`verify_password`] against a fixed hash and discards the result.
///
/// Call it when the username is unknown, then answer exactly as for a wrong password.
pub fn dummy_verify(password: &str) {
    std::hint::black_box(verify_password(password, DUMMY_PHC));
}

/// Whether a stored hash was made with other parameters or another algorithm than today's, so
/// the caller should store a fresh [`hash_password`] after a successful login.
/// A malformed PHC string also needs a re-hash.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return true;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return true;
    };
    hash.salt.is_none()
        || hash.hash.is_none()
        || hash.algorithm.as_str() != Algorithm::Argon2id.as_str()
        || hash.version != Some(Version::V0x13.into())
        || params.m_cost() != M_COST_KIB
        || params.t_cost() != T_COST
        || params.p_cost() != P_COST
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn hash_then_verify_round_trips() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery staple", &phc));
        assert!(!verify_password("correct horse battery stapler", &phc));
        assert!(!verify_password("", &phc));
        assert!(!needs_rehash(&phc));
    }

    #[test]
    fn salts_are_random() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password("same", &a) && verify_password("same", &b));
    }

    #[test]
    fn empty_and_unicode_passwords_work() {
        for pw in ["", "pässwörd 🔑", "a\0b"] {
            let phc = hash_password(pw).unwrap();
            assert!(verify_password(pw, &phc), "{pw:?}");
        }
    }

    #[test]
    fn malformed_phc_is_false() {
        for phc in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$bcrypt$v=19$m=19456,t=2,p=1$2bRHbnE7nmgPVrYAz3LzJg$JgtW4ryE7Mw9qwegK4xHJTEWnD2rxPUWdWnN3/ZWdHM",
            "$argon2id$v=19$m=1,t=2,p=1$2bRHbnE7nmgPVrYAz3LzJg$JgtW4ryE7Mw9qwegK4xHJTEWnD2rxPUWdWnN3/ZWdHM",
        ] {
            assert!(!verify_password("x", phc), "{phc:?}");
            assert!(needs_rehash(phc), "{phc:?}");
        }
    }

    #[test]
    fn absurd_stored_parameters_are_refused_without_computing() {
        // 4 TiB of memory: computing this would abort the process.
        let phc = "$argon2id$v=19$m=4294967295,t=2,p=1$2bRHbnE7nmgPVrYAz3LzJg$JgtW4ryE7Mw9qwegK4xHJTEWnD2rxPUWdWnN3/ZWdHM";
        assert!(!verify_password("x", phc));
        let phc = "$argon2id$v=19$m=19456,t=100000,p=1$2bRHbnE7nmgPVrYAz3LzJg$JgtW4ryE7Mw9qwegK4xHJTEWnD2rxPUWdWnN3/ZWdHM";
        assert!(!verify_password("x", phc));
    }

    #[test]
    fn older_parameters_still_verify_but_need_rehash() {
        let weak = Params::new(1024, 1, 1, None).unwrap();
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, weak)
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(verify_password("pw", &phc));
        assert!(needs_rehash(&phc));

        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, PARAMS)
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(verify_password("pw", &argon2i));
        assert!(needs_rehash(&argon2i));
    }

    #[test]
    fn dummy_hash_uses_current_parameters() {
        let hash = PasswordHash::new(DUMMY_PHC).unwrap();
        assert_eq!(hash.algorithm.as_str(), "argon2id");
        assert!(!needs_rehash(DUMMY_PHC));
        // Nobody knows its password; in particular not the empty one.
        assert!(!verify_password("", DUMMY_PHC));
    }

    #[test]
    fn dummy_verify_costs_about_as_much_as_a_real_one() {
        let phc = hash_password("pw").unwrap();
        let timed = |f: &dyn Fn()| {
            let start = Instant::now();
            f();
            start.elapsed()
        };
        // Interleaved, and the fastest of each kept: other tests run in parallel, and the
        // minimum is the measurement least disturbed by them.
        let (mut real, mut dummy) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            real = real.min(timed(&|| {
                verify_password("wrong", &phc);
            }));
            dummy = dummy.min(timed(&|| dummy_verify("wrong")));
        }
        // Generous bounds: this guards against the dummy path being free, not against jitter.
        assert!(
            dummy * 3 > real && real * 3 > dummy,
            "real {real:?} vs dummy {dummy:?}"
        );
        assert!(dummy > Duration::from_millis(1), "{dummy:?}");
    }
}
