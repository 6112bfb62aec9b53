//! Caches: moka in process (L1), optionally Redis shared by the nodes (L2), in front of the
//! database; and the invalidation bus (Redis pub/sub) that makes every node drop an entry a writer
//! changed. See docs/cache.md for what is cached and the staleness bound.
//!
//! Invariants: a cache is never the source of truth; a Redis failure is a miss, never an error
//! (short timeouts, a circuit breaker); concurrent misses of one key on one node load once.
//! Only this module imports `moka` and `redis`. Must not depend on `service`, `meta` or `storage`.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(test)]
pub(crate) mod pause;
mod tiered;

pub use tiered::{Caches, Error, SharedFailure, Tiered};

/// A bounded in-process cache whose entries expire `ttl` after insertion.
///
/// Entries carry the generation in force when their value was read (see
/// [`LocalCache::generation`]); [`LocalCache::clear`] moves the generation on, so a value read
/// before a clear is never served after it, even when its insert lands after the clear.
#[derive(Clone)]
pub struct LocalCache<K, V> {
    inner: moka::sync::Cache<K, (u64, V)>,
    generation: Arc<AtomicU64>,
}

/// The generation of a [`LocalCache`] at the moment a caller started reading a value; pass it
/// to [`LocalCache::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

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
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current generation: take it before reading the value you will insert.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    /// The entry for `key`, if present, fresh, and read since the last [`LocalCache::clear`].
    pub fn get(&self, key: &K) -> Option<V> {
        let (generation, value) = self.inner.get(key)?;
        (generation == self.generation.load(Ordering::SeqCst)).then_some(value)
    }

    /// Stores `value`, read when the cache was at generation `read_at`; a value read before a
    /// clear is stored but never served.
    pub fn insert(&self, key: K, value: V, read_at: Generation) {
        if read_at.0 == self.generation.load(Ordering::SeqCst) {
            self.inner.insert(key, (read_at.0, value));
        }
    }

    /// Drops every entry, including those whose insert is still under way.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let c = LocalCache::new(10, Duration::from_millis(50));
        c.insert(1, "a", c.generation());
        assert_eq!(c.get(&1), Some("a"));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn a_value_read_before_a_clear_is_never_served_after_it() {
        let c = LocalCache::new(10, Duration::from_secs(60));
        let before = c.generation();
        c.clear();
        c.insert(1, "stale", before);
        assert_eq!(c.get(&1), None, "read before the clear: not stored");
        let read = c.generation();
        c.insert(2, "raced", read);
        // The insert above passed its check; a clear right after it must still win.
        c.clear();
        assert_eq!(c.get(&2), None, "cleared after the insert");
        c.insert(3, "fresh", c.generation());
        assert_eq!(c.get(&3), Some("fresh"));
    }
}
