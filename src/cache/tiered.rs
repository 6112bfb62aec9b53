//! The two-tier cache: moka (L1, per node) → Redis (L2, shared) → the caller's loader (database),
//! and the invalidation bus over Redis pub/sub.
//!
//! A [`Caches`] hub is built once per process from `CacheConfig`; each [`Tiered`] cache registers
//! with it so that invalidations arriving on the bus (or a bus reconnect) reach every local tier.
//! Redis is optional: without `cache.redis_url` the hub is moka only (embedded mode).
//!
//! Invariant: no resurrection. A loader that read before a write committed never makes its value
//! servable after that write's invalidation:
//! - in moka, every entry carries the generations (per key stripe, and per cache) in force
//!   before its value was read; an invalidation moves them on, and an entry older than the
//!   caller's start is a miss;
//! - in Redis, an invalidation increments a generation key next to the value (and a per-cache
//!   one for prefix invalidations) in the same transaction that deletes the value, and a loader
//!   writes its value with a script that stores it only if the generations it read before
//!   loading are unchanged.

use std::fmt::Display;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use moka::Expiry;
use moka::future::Cache;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::CacheConfig;

/// A cache could not be set up (only at startup; at run time a cache failure is a miss).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cache.redis_url` is not a valid Redis URL.
    #[error("cache.redis_url is invalid: {0}")]
    InvalidUrl(String),
}

/// The loader of a [`Tiered`] cache failed for another waiter of the same key; its error is
/// shared, so it reaches the other waiters as text.
#[derive(Debug)]
pub struct SharedFailure(pub String);

/// One invalidation message on the bus.
#[derive(Debug, Deserialize, Serialize)]
struct Invalidation {
    /// The cache's name.
    c: String,
    /// Keys to drop; `None` drops every entry of that cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<Vec<String>>,
}

/// A local tier the hub can reach by name.
trait Local: Send + Sync {
    fn name(&self) -> &'static str;
    fn drop_keys<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, ()>;
    fn drop_all(&self);
}

/// Opens after `threshold` consecutive Redis failures; while open Redis is skipped, and one probe
/// is let through every `open_for`. A success closes it.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: AtomicU32,
    opened_at: Mutex<Option<Instant>>,
}

impl Breaker {
    fn allow(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) < self.threshold {
            return true;
        }
        let Ok(mut opened) = self.opened_at.lock() else {
            return false;
        };
        match *opened {
            Some(at) if at.elapsed() < self.open_for => false,
            _ => {
                // Half open: this caller probes; the others keep skipping for another period.
                *opened = Some(Instant::now());
                true
            }
        }
    }

    fn success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= self.threshold {
            tracing::info!("redis answers again: cache circuit breaker closed");
        }
        metrics::gauge!("aerugo_cache_breaker_open").set(0.0);
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.threshold {
            if let Ok(mut opened) = self.opened_at.lock() {
                *opened = Some(Instant::now());
            }
            tracing::warn!(
                failures = n,
                "redis keeps failing: cache circuit breaker open"
            );
        }
        if n >= self.threshold {
            metrics::gauge!("aerugo_cache_breaker_open").set(1.0);
        }
    }
}

/// The shared tier.
struct Redis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    breaker: Breaker,
}

impl Redis {
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Runs one Redis operation under the breaker and the timeout; `None` on any failure.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            metrics::counter!("aerugo_cache_redis_skipped_total", "op" => op).increment(1);
            return None;
        }
        let work = async {
            let c = self.connection().await?;
            f(c).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(cache.op = op, "redis failed: {e}");
                self.failed(op);
                None
            }
            Err(_) => {
                tracing::debug!(cache.op = op, "redis timed out");
                self.failed(op);
                None
            }
        }
    }

    fn failed(&self, op: &'static str) {
        metrics::counter!("aerugo_cache_redis_errors_total", "op" => op).increment(1);
        self.breaker.failure();
    }
}

struct Hub {
    prefix: String,
    channel: String,
    redis: Option<Redis>,
    /// Whether the invalidation subscription is live (always false in embedded mode, where it
    /// is not needed).
    subscribed: AtomicBool,
    disconnected_ttl: Duration,
    locals: RwLock<Vec<Arc<dyn Local>>>,
}

impl Hub {
    fn locals(&self) -> Vec<Arc<dyn Local>> {
        self.locals.read().map(|l| l.clone()).unwrap_or_default()
    }

    fn drop_all_locals(&self) {
        for l in self.locals() {
            l.drop_all();
        }
    }

    async fn apply(&self, payload: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Invalidation>(payload) else {
            tracing::warn!("ignoring a malformed cache invalidation message");
            return;
        };
        metrics::counter!("aerugo_cache_invalidations_received_total").increment(1);
        for l in self.locals() {
            if l.name() == msg.c {
                match &msg.k {
                    Some(keys) => l.drop_keys(keys).await,
                    None => l.drop_all(),
                }
            }
        }
    }

    fn redis_key(&self, cache: &str, key: &str) -> String {
        format!("{}:{cache}:{key}", self.prefix)
    }

    /// The generation of one key in Redis; `~` keeps it out of the value keys' namespace (and
    /// out of prefix patterns).
    fn redis_gen_key(&self, cache: &str, key: &str) -> String {
        format!("{}:{cache}~gen:{key}", self.prefix)
    }

    /// The generation of a whole cache in Redis, moved on by prefix invalidations.
    fn redis_cache_gen_key(&self, cache: &str) -> String {
        format!("{}:{cache}~gen", self.prefix)
    }

    /// Deletes the shared entries whose key starts with `prefix` (SCAN, so only for rare
    /// events such as a repository's deletion) and tells every node to drop that cache. The
    /// cache's generation moves on first, so no load under way can store an entry afterwards.
    async fn announce_prefix(&self, cache: &'static str, prefix: &str) {
        let Some(redis) = &self.redis else {
            return;
        };
        let pattern = format!("{}*", self.redis_key(cache, prefix));
        let generation = self.redis_cache_gen_key(cache);
        let payload = serde_json::to_vec(&Invalidation {
            c: cache.to_owned(),
            k: None,
        })
        .unwrap_or_default();
        let channel = self.channel.clone();
        let sent = redis
            .run("invalidate_prefix", |mut c| async move {
                c.incr::<_, _, ()>(generation, 1).await?;
                let mut cursor = 0u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    if !keys.is_empty() {
                        c.del::<_, ()>(keys).await?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                c.publish::<_, _, ()>(channel, payload).await
            })
            .await;
        if sent.is_none() {
            metrics::counter!("aerugo_cache_invalidations_lost_total").increment(1);
            tracing::warn!(
                cache.name = cache,
                "could not drop shared cache entries; they expire within the TTL"
            );
        }
    }

    /// Deletes the shared entries (when the cache has a Redis tier; `gen_ttl` is how long their
    /// generation keys live) and tells every node, in one transaction.
    async fn announce(
        &self,
        cache: &'static str,
        keys: Option<&[String]>,
        shared: Option<Duration>,
    ) {
        let Some(redis) = &self.redis else {
            return;
        };
        let payload = match serde_json::to_vec(&Invalidation {
            c: cache.to_owned(),
            k: keys.map(<[String]>::to_vec),
        }) {
            Ok(p) => p,
            Err(_) => return,
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let (Some(keys), Some(gen_ttl)) = (keys, shared) {
            let ms = i64::try_from(gen_ttl.as_millis()).unwrap_or(i64::MAX);
            for k in keys {
                let generation = self.redis_gen_key(cache, k);
                pipe.incr(&generation, 1).ignore();
                pipe.pexpire(&generation, ms).ignore();
                pipe.del(self.redis_key(cache, k)).ignore();
            }
        }
        pipe.publish(&self.channel, payload).ignore();
        let sent = redis
            .run("invalidate", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if sent.is_none() {
            // Other nodes drop the entry when their TTL (short while the bus is down) ends.
            metrics::counter!("aerugo_cache_invalidations_lost_total").increment(1);
            tracing::warn!(
                cache.name = cache,
                "could not publish a cache invalidation; other nodes catch up within the TTL"
            );
        }
    }
}

/// The process's cache hub: the optional Redis tier and the invalidation bus.
#[derive(Clone)]
pub struct Caches {
    hub: Arc<Hub>,
    config: Arc<CacheConfig>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("redis", &self.hub.redis.is_some())
            .field("prefix", &self.hub.prefix)
            .finish()
    }
}

impl Caches {
    /// Builds the hub; with `redis_url` set, starts the invalidation subscriber (which keeps
    /// reconnecting). Redis need not be up: until it is, every lookup falls through to the loader.
    pub fn new(config: &CacheConfig) -> Result<Self, Error> {
        let redis = match &config.redis_url {
            None => None,
            Some(url) => Some(Redis {
                client: redis::Client::open(url.expose())
                    .map_err(|e| Error::InvalidUrl(e.to_string()))?,
                conn: tokio::sync::Mutex::new(None),
                timeout: Duration::from_millis(config.redis_timeout_ms),
                breaker: Breaker {
                    threshold: config.breaker_failures,
                    open_for: Duration::from_millis(config.breaker_open_ms),
                    failures: AtomicU32::new(0),
                    opened_at: Mutex::new(None),
                },
            }),
        };
        let hub = Arc::new(Hub {
            prefix: config.key_prefix.clone(),
            channel: format!("{}:invalidate", config.key_prefix),
            subscribed: AtomicBool::new(false),
            disconnected_ttl: Duration::from_secs(config.disconnected_ttl_seconds),
            locals: RwLock::new(Vec::new()),
            redis,
        });
        if let Some(redis) = &hub.redis {
            tokio::spawn(subscribe(hub.clone(), redis.client.clone()));
        }
        Ok(Self {
            hub,
            config: Arc::new(config.clone()),
        })
    }

    /// The settings the hub was built from (sizes and TTLs of the individual caches).
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// A cache named `name` (unique per process; also its Redis key segment) holding at most
    /// `capacity` units of `weigh`, entries living `ttl`; `shared` adds the Redis tier.
    pub fn tiered<V>(
        &self,
        name: &'static str,
        capacity: u64,
        weigh: fn(&V) -> u32,
        ttl: Duration,
        shared: bool,
    ) -> Tiered<V>
    where
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let local = Cache::builder()
            .max_capacity(capacity)
            .weigher(move |_k: &String, s: &Slot<V>| weigh(&s.value))
            .expire_after(SlotExpiry)
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    metrics::counter!("aerugo_cache_evictions_total", "cache" => name, "tier" => "local")
                        .increment(1);
                }
            })
            .build();
        let inner = Arc::new(TieredInner {
            name,
            local,
            generations: Generations::new(),
            hub: self.hub.clone(),
            ttl,
            shared: shared && self.hub.redis.is_some(),
            #[cfg(test)]
            after_load: super::pause::Pause::default(),
        });
        if let Ok(mut locals) = self.hub.locals.write() {
            locals.push(inner.clone());
        }
        Tiered { inner }
    }
}

/// A named action (e.g. clearing a cache kept outside this module) run on every node on
/// [`Caches::flush`] and after an invalidation-bus reconnect.
struct Hook {
    name: &'static str,
    run: Box<dyn Fn() + Send + Sync>,
}

impl Local for Hook {
    fn name(&self) -> &'static str {
        self.name
    }

    fn drop_keys<'a>(&'a self, _keys: &'a [String]) -> BoxFuture<'a, ()> {
        (self.run)();
        Box::pin(async {})
    }

    fn drop_all(&self) {
        (self.run)();
    }
}

impl Caches {
    /// Registers `run` under `name`: [`Caches::flush`] of that name runs it here and on every
    /// node. Used for node-local caches of things only the service knows how to clear.
    pub fn on_flush(&self, name: &'static str, run: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut locals) = self.hub.locals.write() {
            locals.push(Arc::new(Hook {
                name,
                run: Box::new(run),
            }));
        }
    }

    /// Runs the `name` hooks here now and on every other node through the bus.
    pub async fn flush(&self, name: &'static str) {
        for l in self.hub.locals() {
            if l.name() == name {
                l.drop_all();
            }
        }
        self.hub.announce(name, None, None).await;
    }

    /// Whether the invalidation subscription is live (tests wait for it before racing nodes).
    #[cfg(test)]
    pub(crate) fn bus_connected(&self) -> bool {
        self.hub.subscribed.load(Ordering::Acquire)
    }
}

/// Runs the invalidation subscription for the life of the process, reconnecting with backoff.
async fn subscribe(hub: Arc<Hub>, client: redis::Client) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connect = tokio::time::timeout(Duration::from_secs(2), async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&hub.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        if let Ok(Ok(mut ps)) = connect {
            // Whatever was published while we were away is lost: drop every local entry.
            hub.drop_all_locals();
            hub.subscribed.store(true, Ordering::Release);
            metrics::gauge!("aerugo_cache_bus_connected").set(1.0);
            tracing::info!("cache invalidation bus subscribed");
            backoff = Duration::from_millis(100);
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                hub.apply(msg.get_payload_bytes()).await;
            }
            hub.subscribed.store(false, Ordering::Release);
            metrics::gauge!("aerugo_cache_bus_connected").set(0.0);
            hub.drop_all_locals();
            tracing::warn!("cache invalidation bus lost; local entries flushed, TTLs shortened");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Generations of one cache on this node: one per stripe of keys (by hash) and one for the whole
/// cache. They only grow, so "nothing was invalidated since" is "no generation moved".
struct Generations {
    all: AtomicU64,
    stripes: Box<[AtomicU64]>,
    hasher: RandomState,
}

/// Stripes per cache: two keys share one with probability 1/4096, which only costs a reload.
const STRIPES: usize = 4096;

/// The generations in force when a value was read (or a caller started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    all: u64,
    stripe: u64,
}

impl Generations {
    fn new() -> Self {
        Self {
            all: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        let i = usize::try_from(self.hasher.hash_one(key) % STRIPES as u64).unwrap_or(0);
        &self.stripes[i]
    }

    fn stamp(&self, key: &str) -> Stamp {
        Stamp {
            all: self.all.load(Ordering::SeqCst),
            stripe: self.stripe(key).load(Ordering::SeqCst),
        }
    }

    fn bump(&self, keys: &[String]) {
        for k in keys {
            self.stripe(k).fetch_add(1, Ordering::SeqCst);
        }
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    ttl: Duration,
    /// The generations in force before the value was read.
    stamp: Stamp,
    /// False when Redis refused the value as older than an invalidation: then it is returned to
    /// the caller that loaded it, and to nobody else.
    current: bool,
}

impl<V> Slot<V> {
    /// Whether a caller that started at `start` may be served this entry: the value was read
    /// after every invalidation that caller could have seen.
    fn serves(&self, start: Stamp) -> bool {
        self.current && self.stamp.all >= start.all && self.stamp.stripe >= start.stripe
    }
}

struct SlotExpiry;

impl<V> Expiry<String, Slot<V>> for SlotExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Slot<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

struct TieredInner<V> {
    name: &'static str,
    local: Cache<String, Slot<V>>,
    generations: Generations,
    hub: Arc<Hub>,
    ttl: Duration,
    shared: bool,
    /// Holds a loader between its read and its insert (tests only).
    #[cfg(test)]
    after_load: super::pause::Pause,
}

impl<V> Local for TieredInner<V>
where
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn drop_keys<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, ()> {
        self.generations.bump(keys);
        Box::pin(async move {
            for k in keys {
                self.local.invalidate(k).await;
            }
        })
    }

    fn drop_all(&self) {
        self.generations.bump_all();
        self.local.invalidate_all();
    }
}

enum Miss<E> {
    Absent,
    Failed(E),
}

/// What a loader read from Redis before loading: the value, if any, with its remaining lifetime,
/// and the generations a value it stores must still find.
struct SharedRead<V> {
    value: Option<V>,
    remaining: Option<Duration>,
    key_gen: Option<String>,
    cache_gen: Option<String>,
}

/// Stores a value only if neither its key's generation nor its cache's moved since the loader
/// read them (an absent generation counts as "0").
const SET_IF_CURRENT: &str = r"
if (redis.call('GET', KEYS[2]) or '0') == ARGV[1]
    and (redis.call('GET', KEYS[3]) or '0') == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
    return 1
end
return 0
";

/// One cache: moka in front of (optionally) Redis in front of a loader.
pub struct Tiered<V> {
    inner: Arc<TieredInner<V>>,
}

impl<V> Clone for Tiered<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Tiered<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("name", &self.inner.name)
            .field("entries", &self.inner.local.entry_count())
            .finish()
    }
}

impl<V> Tiered<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The lifetime of an entry created now: shortened while the invalidation bus is down,
    /// because then this node may miss invalidations.
    fn ttl(&self) -> Duration {
        let hub = &self.inner.hub;
        if hub.redis.is_some() && !hub.subscribed.load(Ordering::Acquire) {
            self.inner.ttl.min(hub.disconnected_ttl)
        } else {
            self.inner.ttl
        }
    }

    /// How long a generation key outlives its last invalidation in Redis: far longer than any
    /// load can take, and than the values it guards live.
    fn gen_ttl(&self) -> Duration {
        (self.inner.ttl * 2).max(Duration::from_secs(600))
    }

    fn count(&self, tier: &'static str, result: &'static str) {
        metrics::counter!(
            "aerugo_cache_requests_total",
            "cache" => self.inner.name,
            "tier" => tier,
            "result" => result
        )
        .increment(1);
    }

    /// The value of `key`: from moka, else Redis, else `load` (whose `None` is not cached).
    /// Concurrent misses of one key on this node run `load` once and share its result.
    ///
    /// Never returns a value read before an invalidation of `key` that finished before this
    /// call started, nor lets such a value be served later (see the module's invariant).
    pub async fn get_or_load<E, Fut>(
        &self,
        key: &str,
        load: impl FnOnce() -> Fut,
    ) -> Result<Option<V>, E>
    where
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Display + From<SharedFailure> + Send + Sync + 'static,
    {
        let start = self.inner.generations.stamp(key);
        if let Some(slot) = self.inner.local.get(key).await {
            if slot.serves(start) {
                self.count("local", "hit");
                return Ok(Some(slot.value));
            }
            // Read before an invalidation that has happened since: drop it and load again.
            self.inner.local.invalidate(key).await;
        }
        self.count("local", "miss");
        let mut load = Some(load);
        for _ in 0..2 {
            let mut ran = false;
            let init = self.fill(key, &mut load, &mut ran);
            match self.inner.local.try_get_with(key.to_owned(), init).await {
                // Our own load started after `start`; another caller's may have started
                // before an invalidation we must see, and then we load again.
                Ok(slot) if ran || slot.serves(start) => return Ok(Some(slot.value)),
                Ok(_) => self.inner.local.invalidate(key).await,
                Err(shared) => {
                    return match Arc::try_unwrap(shared) {
                        Ok(Miss::Absent) => Ok(None),
                        Ok(Miss::Failed(e)) => Err(e),
                        Err(shared) => match &*shared {
                            Miss::Absent => Ok(None),
                            Miss::Failed(e) => Err(E::from(SharedFailure(e.to_string()))),
                        },
                    };
                }
            }
        }
        // Twice in a row we met a load that started before an invalidation (constant churn on
        // this key): load on our own, without caching.
        match load.take() {
            Some(load) => load().await,
            None => Err(E::from(SharedFailure("cache load did not run".into()))),
        }
    }

    /// The loader behind [`Tiered::get_or_load`]: takes the generations, then reads Redis, then
    /// the caller's `load`; sets `ran` so that its caller knows the result is its own.
    async fn fill<E, Fut>(
        &self,
        key: &str,
        load: &mut Option<impl FnOnce() -> Fut>,
        ran: &mut bool,
    ) -> Result<Slot<V>, Miss<E>>
    where
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        *ran = true;
        let stamp = self.inner.generations.stamp(key);
        let shared = if self.inner.shared {
            self.redis_read(key).await
        } else {
            None
        };
        if let Some(read) = &shared
            && let Some(value) = read.value.clone()
        {
            self.count("redis", "hit");
            // A lost invalidation leaves this entry stale for at most its Redis TTL, not that
            // plus a full local TTL.
            let ttl = read.remaining.map_or(self.ttl(), |r| r.min(self.ttl()));
            return Ok(Slot {
                value,
                ttl,
                stamp,
                current: true,
            });
        }
        if self.inner.shared {
            self.count("redis", "miss");
        }
        let Some(load) = load.take() else {
            return Err(Miss::Absent);
        };
        match load().await {
            Ok(Some(v)) => {
                #[cfg(test)]
                self.inner.after_load.point().await;
                let current = match &shared {
                    Some(read) => self.redis_set(key, &v, read).await,
                    None => true,
                };
                Ok(Slot {
                    value: v,
                    ttl: self.ttl(),
                    stamp,
                    current,
                })
            }
            Ok(None) => Err(Miss::Absent),
            Err(e) => Err(Miss::Failed(e)),
        }
    }

    /// The value, its remaining lifetime and the generations, in one round trip; `None` when
    /// Redis did not answer (then nothing is written to it either).
    async fn redis_read(&self, key: &str) -> Option<SharedRead<V>> {
        let hub = &self.inner.hub;
        let redis = hub.redis.as_ref()?;
        let value_key = hub.redis_key(self.inner.name, key);
        let mut pipe = redis::pipe();
        pipe.get(&value_key)
            .pttl(&value_key)
            .get(hub.redis_gen_key(self.inner.name, key))
            .get(hub.redis_cache_gen_key(self.inner.name));
        let (raw, pttl, key_gen, cache_gen): (
            Option<Vec<u8>>,
            i64,
            Option<String>,
            Option<String>,
        ) = redis
            .run("get", |mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let value = match raw.map(|raw| serde_json::from_slice(&raw)) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                metrics::counter!("aerugo_cache_redis_errors_total", "op" => "decode").increment(1);
                None
            }
        };
        Some(SharedRead {
            value,
            remaining: u64::try_from(pttl)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            key_gen,
            cache_gen,
        })
    }

    /// Stores `value` in Redis unless an invalidation came after `read`; false when Redis
    /// refused it as stale (true when stored or when Redis did not answer).
    async fn redis_set(&self, key: &str, value: &V, read: &SharedRead<V>) -> bool {
        let hub = &self.inner.hub;
        let Some(redis) = hub.redis.as_ref() else {
            return true;
        };
        let Ok(raw) = serde_json::to_vec(value) else {
            return true;
        };
        // EVAL with the script's text (a few hundred bytes), only on the miss path, after a
        // database load: no script cache to manage across Redis restarts.
        let mut eval = redis::cmd("EVAL");
        eval.arg(SET_IF_CURRENT)
            .arg(3)
            .arg(hub.redis_key(self.inner.name, key))
            .arg(hub.redis_gen_key(self.inner.name, key))
            .arg(hub.redis_cache_gen_key(self.inner.name))
            .arg(read.key_gen.as_deref().unwrap_or("0"))
            .arg(read.cache_gen.as_deref().unwrap_or("0"))
            .arg(raw)
            .arg(
                u64::try_from(self.inner.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        let stored = redis
            .run("set", |mut c| async move {
                eval.query_async::<i64>(&mut c).await
            })
            .await;
        stored != Some(0)
    }

    /// Drops `keys` here, in Redis and (through the bus) on every node. Call after the write
    /// that changed them has committed: a load that read before is never served afterwards.
    pub async fn invalidate(&self, keys: &[String]) {
        self.inner.generations.bump(keys);
        for k in keys {
            self.inner.local.invalidate(k).await;
        }
        let shared = self.inner.shared.then(|| self.gen_ttl());
        self.inner
            .hub
            .announce(self.inner.name, Some(keys), shared)
            .await;
    }

    /// Drops the entries whose key starts with `prefix` in Redis, and every entry of this cache
    /// here and on every node (the local tiers cannot enumerate keys cheaply; this is for rare
    /// events).
    pub async fn invalidate_prefix(&self, prefix: &str) {
        self.inner.generations.bump_all();
        self.inner.local.invalidate_all();
        if self.inner.shared {
            self.inner
                .hub
                .announce_prefix(self.inner.name, prefix)
                .await;
        } else {
            self.inner.hub.announce(self.inner.name, None, None).await;
        }
    }

    /// Drops every entry here and on every node (for caches without a Redis tier, whose keys
    /// a change cannot enumerate).
    pub async fn invalidate_all(&self) {
        self.inner.generations.bump_all();
        self.inner.local.invalidate_all();
        self.inner.hub.announce(self.inner.name, None, None).await;
    }

    /// The point between a loader's read and its insert, for tests that race it.
    #[cfg(test)]
    pub(crate) fn after_load(&self) -> &super::pause::Pause {
        &self.inner.after_load
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[derive(Debug)]
    struct TestError(String);

    impl Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl From<SharedFailure> for TestError {
        fn from(e: SharedFailure) -> Self {
            TestError(e.0)
        }
    }

    fn embedded() -> Caches {
        Caches::new(&CacheConfig::default()).expect("hub")
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let caches = embedded();
        let cache: Tiered<String> = caches.tiered("t", 100, |_| 1, Duration::from_secs(60), true);
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, loads) = (cache.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("k", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, TestError>(Some("v".to_owned()))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("load"), Some("v".into()));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn absent_and_failed_loads_are_not_cached_and_invalidation_drops() {
        let caches = embedded();
        let cache: Tiered<u32> = caches.tiered("t", 100, |_| 1, Duration::from_secs(60), false);
        let none = cache
            .get_or_load("k", || async { Ok::<_, TestError>(None) })
            .await
            .expect("load");
        assert_eq!(none, None);
        let failed = cache
            .get_or_load("k", || async {
                Err::<Option<u32>, _>(TestError("db".into()))
            })
            .await;
        assert!(failed.is_err());
        let v = cache
            .get_or_load("k", || async { Ok::<_, TestError>(Some(1)) })
            .await
            .expect("load");
        assert_eq!(v, Some(1));
        let cached = cache
            .get_or_load("k", || async { Ok::<_, TestError>(Some(2)) })
            .await
            .expect("load");
        assert_eq!(cached, Some(1), "the second lookup is a hit");
        cache.invalidate(&["k".to_owned()]).await;
        let reloaded = cache
            .get_or_load("k", || async { Ok::<_, TestError>(Some(3)) })
            .await
            .expect("load");
        assert_eq!(reloaded, Some(3));
    }

    #[test]
    fn breaker_opens_and_probes() {
        let b = Breaker {
            threshold: 2,
            open_for: Duration::from_millis(30),
            failures: AtomicU32::new(0),
            opened_at: Mutex::new(None),
        };
        assert!(b.allow());
        b.failure();
        assert!(b.allow());
        b.failure();
        assert!(!b.allow(), "open after two failures");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "one probe when the period is over");
        assert!(!b.allow(), "only one");
        b.success();
        assert!(b.allow());
    }
}
