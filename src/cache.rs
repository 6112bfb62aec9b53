//! Caches: moka in process (L1), optionally Redis shared by the nodes (L2), in front of the
//! database; and the invalidation bus (Redis pub/sub) that makes every node drop an entry a writer
//! changed. See docs/cache.md for what is cached and the staleness bound.
//!
//! Invariants: a cache is never the source of truth; a Redis failure is a miss, never an error
//! (short timeouts, a circuit breaker); concurrent misses of one key on one node load once.
//! Only this module imports `moka` and `redis`. Must not depend on `service`, `meta` or `storage`.

use std::hash::Hash;
use std::time::Duration;

mod tiered;

pub use tiered::{Caches, Error, SharedFailure, Tiered};

/// A bounded in-process cache whose entries expire `ttl` after insertion.
#[derive(Clone)]
pub struct LocalCache<K, V> {
    inner: moka::sync::Cache<K, V>,
}

impl<K, V> std::fmt::Debug for LocalCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("entries", &self.inner.entry_count())
            .finish()
    }
}

impl<K, V> LocalCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `capacity` entries living `ttl` each.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The entry for `key`, if present and fresh.
    pub fn get(&self, key: &K) -> Option<V> {
        self.inner.get(key)
    }

    /// Stores an entry.
    pub fn insert(&self, key: K, value: V) {
        self.inner.insert(key, value);
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.inner.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let c = LocalCache::new(10, Duration::from_millis(50));
        c.insert(1, "a");
        assert_eq!(c.get(&1), Some("a"));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.get(&1), None);
    }
}
