//! Login throttling: which counters a login attempt is charged to, how long an account's
//! attempts are slowed down, and the per-node pieces that keep the counters honest (one check
//! at a time per credential, and the bounded prune of ended windows).
//!
//! Three counters per attempt, all counted in the identity store *before* the credentials are
//! checked (so racers cannot pass a limit together) and given back when the login succeeds:
//! - per (username, address), a hard limit (`auth.login_max_failures`): 429 for that pair until
//!   its window ends;
//! - per address, every username alike, known or not, a hard limit
//!   (`auth.login_max_failures_per_address`), so random usernames buy no extra guesses and the
//!   answer never tells which users exist;
//! - per username across addresses, never a refusal, only a growing delay (bounded by
//!   [`MAX_DELAY`]), so an attacker elsewhere slows a user's logins but cannot lock them out.
//!
//! Usernames appear in counter keys only as a hash: whatever a client typed (a password in the
//! wrong field, bytes PostgreSQL's TEXT refuses, a 10 KB header) becomes a fixed-size key.
//! IPv6 clients are counted per /64, the smallest block a subscriber usually gets.
//!
//! Depends on nothing but std, tokio and `sha2`; the counters themselves live in `meta`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The delay an account's attempts start with once its failures across addresses reach the
/// per-pair limit; it doubles with every further failure up to [`MAX_DELAY`].
pub(crate) const BASE_DELAY: Duration = Duration::from_millis(100);

/// The longest an attempt is slowed down for its account's failures.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(5);

/// Every this many counted attempts (the first included), a node prunes ended windows.
pub(crate) const PRUNE_EVERY: u64 = 32;

/// Counters removed per prune. Each attempt writes at most three counters, so a prune every
/// [`PRUNE_EVERY`] attempts removes ended ones faster than attempts can create them.
pub(crate) const PRUNE_BATCH: u32 = 1000;

/// The counter keys one attempt is charged to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// Username and address.
    pub(crate) pair: String,
    /// Address alone.
    pub(crate) address: String,
    /// Username alone.
    pub(crate) account: String,
}

impl Keys {
    /// The keys for `username` logging in from `client` (`None`: an unknown connection, counted
    /// as one address).
    pub(crate) fn new(username: &str, client: Option<IpAddr>) -> Keys {
        let user = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(username.as_bytes());
            digest[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let address = match client.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => v4.to_string(),
            Some(IpAddr::V6(v6)) => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
            None => "unknown".to_owned(),
        };
        Keys {
            pair: format!("p:{user}:{address}"),
            address: format!("a:{address}"),
            account: format!("u:{user}"),
        }
    }
}

/// How long an attempt waits when its account already has `failures` in the window: nothing
/// below `limit`, then [`BASE_DELAY`] doubling per failure, never more than [`MAX_DELAY`].
pub(crate) fn account_delay(failures: u32, limit: u32) -> Duration {
    if failures < limit {
        return Duration::ZERO;
    }
    let doublings = (failures - limit).min(16);
    BASE_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Credentials being checked, each with the lock its concurrent attempts queue on.
type Flights = Arc<Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>>;

/// Per-node throttle state.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// Credentials being checked right now, by the hash of username and secret.
    flights: Flights,
    /// Attempts counted on this node, for the prune cadence.
    attempts: AtomicU64,
    /// A prune is running.
    pruning: Arc<AtomicBool>,
}

/// Held while one credential is checked; see [`Throttle::flight`].
pub(crate) struct Flight {
    key: [u8; 32],
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    flights: Flights,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.guard.take();
        let Ok(mut map) = self.flights.lock() else {
            return;
        };
        // The map and this flight hold the last two references: nobody else waits, so the entry
        // goes (a new attempt would take the map's lock first and find no entry).
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

impl Throttle {
    /// Waits until no other attempt with the same credentials (`key`, a hash) is being checked
    /// on this node. Many clients logging in with one credential at once (a CI fleet) then cost
    /// one check and one counted attempt, not one each; the others find the result cached.
    pub(crate) async fn flight(&self, key: [u8; 32]) -> Flight {
        let lock = match self.flights.lock() {
            Ok(mut map) => map.entry(key).or_default().clone(),
            // A poisoned map only loses the coalescing, never the limits.
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        let guard = lock.clone().lock_owned().await;
        Flight {
            key,
            lock,
            guard: Some(guard),
            flights: self.flights.clone(),
        }
    }

    /// Counts one attempt; `Some(guard)` when this node should prune now (no other prune of
    /// its own is running). Dropping the guard lets the next prune start.
    pub(crate) fn due_for_prune(&self) -> Option<PruneGuard> {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(PRUNE_EVERY) {
            return None;
        }
        self.pruning
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| PruneGuard(self.pruning.clone()))
    }

    /// Credentials being checked right now (for tests).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.flights.lock().map_or(0, |m| m.len())
    }
}

/// Marks a prune as running until dropped.
#[derive(Debug)]
pub(crate) struct PruneGuard(Arc<AtomicBool>);

impl Drop for PruneGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hash_usernames_and_group_ipv6_by_64() {
        let k = Keys::new("alice", Some("192.0.2.7".parse().unwrap()));
        assert_eq!(k.address, "a:192.0.2.7");
        assert!(k.pair.starts_with("p:") && k.pair.ends_with(":192.0.2.7"));
        assert!(!k.pair.contains("alice") && !k.account.contains("alice"));
        assert_eq!(k.account.len(), 2 + 32);
        assert_eq!(
            Keys::new("alice", None).account,
            k.account,
            "the account key ignores the address"
        );
        let a = Keys::new("x", Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = Keys::new("x", Some("2001:db8:1:2:bbbb::9".parse().unwrap()));
        assert_eq!(a, b);
        assert_eq!(a.address, "a:2001:db8:1:2::/64");
        let mapped = Keys::new("x", Some("::ffff:192.0.2.7".parse().unwrap()));
        assert_eq!(mapped.address, "a:192.0.2.7");
        assert_eq!(Keys::new("x", None).address, "a:unknown");
        let huge = "u".repeat(10_000) + "\0";
        assert_eq!(Keys::new(&huge, None).account.len(), 34);
    }

    #[test]
    fn account_delay_grows_and_is_bounded() {
        assert_eq!(account_delay(0, 10), Duration::ZERO);
        assert_eq!(account_delay(9, 10), Duration::ZERO);
        assert_eq!(account_delay(10, 10), BASE_DELAY);
        assert_eq!(account_delay(11, 10), BASE_DELAY * 2);
        assert_eq!(account_delay(13, 10), BASE_DELAY * 8);
        assert_eq!(account_delay(1000, 10), MAX_DELAY);
        assert_eq!(account_delay(u32::MAX, 1), MAX_DELAY);
    }

    #[tokio::test]
    async fn flights_serialize_one_credential_and_clean_up() {
        let t = Arc::new(Throttle::default());
        let first = t.flight([1; 32]).await;
        // Another credential is not held up.
        let other = t.flight([2; 32]).await;
        drop(other);
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move {
                let _f = t.flight([1; 32]).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the same credential waits");
        drop(first);
        waiter.await.unwrap();
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn prunes_come_every_so_many_attempts_one_at_a_time() {
        let t = Throttle::default();
        let first = t.due_for_prune();
        assert!(first.is_some(), "the first attempt prunes");
        for _ in 1..PRUNE_EVERY {
            assert!(t.due_for_prune().is_none());
        }
        assert!(t.due_for_prune().is_none(), "one prune at a time");
        drop(first);
        for _ in 1..PRUNE_EVERY {
            assert!(t.due_for_prune().is_none());
        }
        assert!(t.due_for_prune().is_some());
    }
}
