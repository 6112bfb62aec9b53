//! The durable work queue and leases, written once over the [`Db`] seam for both backends.
//!
//! One table, `work_items`, unique on (topic, key). Enqueueing happens inside the caller's write
//! transaction, so work exists exactly when the write that caused it committed. Claims, completion
//! and failure are short transactions of their own (READ COMMITTED on PostgreSQL, where claimers
//! skip each other's rows with `FOR UPDATE SKIP LOCKED`; the single writer on SQLite).
//!
//! - An enqueue that meets a waiting item replaces its payload (the key names the work, the newest
//!   payload describes it) and keeps the earlier due time; one that meets a claimed item also bumps
//!   its version, so the claimer's completion (which deletes only the version it claimed) leaves it
//!   to run again: no change is lost to de-duplication.
//! - A claim is a lease until `claimed_until`; a claimer that dies loses nothing, its items come
//!   back when the lease lapses.
//! - A failure records the error and either makes the item due again at a later time or, after the
//!   consumer's bound on attempts, buries it (a dead letter, visible and requeueable).
//!
//! Times are passed in by the caller (database time from [`super::sql::database_now`], or a
//! test's manual clock); no statement reads the clock itself.

use super::sql::{Db, Engine, SqlResult, SqlRow, Val};

/// Work to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWork {
    /// The consumer.
    pub topic: String,
    /// What the work is about; one item per (topic, key).
    pub key: String,
    /// What the consumer needs (JSON).
    pub payload: String,
    /// How long after the enqueue the item becomes due, in milliseconds.
    pub delay_ms: i64,
}

/// A claimed item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    /// The consumer.
    pub topic: String,
    /// What the work is about.
    pub key: String,
    /// What the consumer needs (JSON).
    pub payload: String,
    /// The version claimed; completion removes the item only if it is still this version.
    pub version: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
}

/// A dead letter: an item that failed too often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuriedItem {
    /// The consumer.
    pub topic: String,
    /// What the work is about.
    pub key: String,
    /// Its payload.
    pub payload: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was buried (ms).
    pub buried_at: i64,
}

/// The state of one topic, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStats {
    /// The consumer.
    pub topic: String,
    /// Items waiting or claimed (not buried).
    pub depth: i64,
    /// Age in milliseconds of the oldest such item (by enqueue time); 0 when none.
    pub oldest_age_ms: i64,
    /// Buried items.
    pub buried: i64,
}

/// Enqueues `items` at `now` in the caller's transaction.
pub(crate) async fn enqueue<D: Db>(db: &mut D, items: &[NewWork], now: i64) -> SqlResult<()> {
    for item in items {
        db.exec(
            "INSERT INTO work_items
                 (topic, item_key, payload, version, available_at, enqueued_at, attempts)
             VALUES ($1, $2, $3, 1, $4, $5, 0)
             ON CONFLICT (topic, item_key) DO UPDATE SET
                 payload = excluded.payload,
                 version = work_items.version + 1,
                 available_at = CASE
                     WHEN work_items.buried_at IS NOT NULL THEN excluded.available_at
                     WHEN excluded.available_at < work_items.available_at
                         THEN excluded.available_at
                     ELSE work_items.available_at END,
                 attempts = CASE WHEN work_items.buried_at IS NOT NULL THEN 0
                     ELSE work_items.attempts END,
                 buried_at = NULL",
            &[
                item.topic.as_str().into(),
                item.key.as_str().into(),
                item.payload.as_str().into(),
                now.saturating_add(item.delay_ms).into(),
                now.into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Claims at most `limit` due items of `topic` for `holder` until `now + lease_ms`.
pub(crate) async fn claim<D: Db>(
    db: &mut D,
    topic: &str,
    holder: &str,
    now: i64,
    lease_ms: i64,
    limit: u32,
) -> SqlResult<Vec<WorkItem>> {
    // PostgreSQL/CockroachDB: concurrent claimers lock disjoint rows and skip the others'.
    // SQLite: the single writer already serializes claimers.
    let lock = match db.engine() {
        Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    let sql = format!(
        "UPDATE work_items SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1
         WHERE topic = $3 AND item_key IN (
             SELECT item_key FROM work_items
             WHERE topic = $3 AND buried_at IS NULL AND available_at <= $4
               AND (claimed_until IS NULL OR claimed_until <= $4)
             ORDER BY available_at LIMIT $5{lock})
         RETURNING topic, item_key, payload, version, attempts"
    );
    let rows = db
        .query(
            &sql,
            &[
                holder.into(),
                now.saturating_add(lease_ms).into(),
                topic.into(),
                now.into(),
                i64::from(limit).into(),
            ],
        )
        .await?;
    rows.iter().map(work_item).collect()
}

fn work_item(r: &SqlRow) -> SqlResult<WorkItem> {
    Ok(WorkItem {
        topic: r.text(0)?,
        key: r.text(1)?,
        payload: r.text(2)?,
        version: r.int(3)?,
        attempts: r.int(4)?,
    })
}

/// Completes a claimed item: deletes it if it is still the version claimed by `holder`, else
/// (re-armed meanwhile) releases the claim so the newer work runs. `true` when it was deleted.
pub(crate) async fn complete<D: Db>(db: &mut D, item: &WorkItem, holder: &str) -> SqlResult<bool> {
    let key: [Val; 3] = [
        item.topic.as_str().into(),
        item.key.as_str().into(),
        holder.into(),
    ];
    let deleted = db
        .exec(
            "DELETE FROM work_items
             WHERE topic = $1 AND item_key = $2 AND claimed_by = $3 AND version = $4",
            &[
                key[0].clone(),
                key[1].clone(),
                key[2].clone(),
                item.version.into(),
            ],
        )
        .await?;
    if deleted > 0 {
        return Ok(true);
    }
    db.exec(
        "UPDATE work_items SET claimed_by = NULL, claimed_until = NULL, attempts = 0
         WHERE topic = $1 AND item_key = $2 AND claimed_by = $3",
        &key,
    )
    .await?;
    Ok(false)
}

/// Records a failed attempt: the item is due again at `retry_at`, or buried at `now` when
/// `retry_at` is `None`. Only `holder`'s claim is touched.
pub(crate) async fn fail<D: Db>(
    db: &mut D,
    item: &WorkItem,
    holder: &str,
    now: i64,
    error: &str,
    retry_at: Option<i64>,
) -> SqlResult<()> {
    let error: String = error.chars().take(2000).collect();
    match retry_at {
        Some(at) => {
            db.exec(
                "UPDATE work_items SET claimed_by = NULL, claimed_until = NULL,
                     available_at = $4, last_error = $5
                 WHERE topic = $1 AND item_key = $2 AND claimed_by = $3",
                &[
                    item.topic.as_str().into(),
                    item.key.as_str().into(),
                    holder.into(),
                    at.into(),
                    error.into(),
                ],
            )
            .await?;
        }
        None => {
            db.exec(
                "UPDATE work_items SET claimed_by = NULL, claimed_until = NULL,
                     buried_at = $4, last_error = $5
                 WHERE topic = $1 AND item_key = $2 AND claimed_by = $3",
                &[
                    item.topic.as_str().into(),
                    item.key.as_str().into(),
                    holder.into(),
                    now.into(),
                    error.into(),
                ],
            )
            .await?;
        }
    }
    Ok(())
}

/// Depth, age of the oldest item and buried count per topic that has items.
pub(crate) async fn stats<D: Db>(db: &mut D, now: i64) -> SqlResult<Vec<TopicStats>> {
    let rows = db
        .query(
            "SELECT topic,
                 COUNT(CASE WHEN buried_at IS NULL THEN 1 END),
                 MIN(CASE WHEN buried_at IS NULL THEN enqueued_at END),
                 COUNT(buried_at)
             FROM work_items GROUP BY topic ORDER BY topic",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TopicStats {
                topic: r.text(0)?,
                depth: r.opt_int(1)?.unwrap_or(0),
                oldest_age_ms: r.opt_int(2)?.map_or(0, |t| now.saturating_sub(t).max(0)),
                buried: r.opt_int(3)?.unwrap_or(0),
            })
        })
        .collect()
}

/// Buried items, by (topic, key) after `after`, at most `limit`; of one topic when given.
pub(crate) async fn buried<D: Db>(
    db: &mut D,
    topic: Option<&str>,
    after: Option<(&str, &str)>,
    limit: u32,
) -> SqlResult<Vec<BuriedItem>> {
    let (after_topic, after_key) = after.unwrap_or(("", ""));
    let rows = db
        .query(
            "SELECT topic, item_key, payload, attempts, last_error, buried_at FROM work_items
             WHERE buried_at IS NOT NULL AND ($1 = '' OR topic = $1)
               AND (topic > $2 OR (topic = $2 AND item_key > $3))
             ORDER BY topic, item_key LIMIT $4",
            &[
                topic.unwrap_or("").into(),
                after_topic.into(),
                after_key.into(),
                i64::from(limit).into(),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(BuriedItem {
                topic: r.text(0)?,
                key: r.text(1)?,
                payload: r.text(2)?,
                attempts: r.int(3)?,
                last_error: r.opt_text(4)?,
                buried_at: r.int(5)?,
            })
        })
        .collect()
}

/// Makes a buried item due at `now` with its attempts reset; `false` when no such dead letter.
pub(crate) async fn requeue<D: Db>(
    db: &mut D,
    topic: &str,
    key: &str,
    now: i64,
) -> SqlResult<bool> {
    let n = db
        .exec(
            "UPDATE work_items SET buried_at = NULL, attempts = 0, available_at = $3,
                 version = version + 1
             WHERE topic = $1 AND item_key = $2 AND buried_at IS NOT NULL",
            &[topic.into(), key.into(), now.into()],
        )
        .await?;
    Ok(n > 0)
}

/// Takes the lease `name` for `holder` until `now + ttl_ms` when it is free, expired or already
/// `holder`'s; `true` when `holder` holds it afterwards.
pub(crate) async fn acquire_lease<D: Db>(
    db: &mut D,
    name: &str,
    holder: &str,
    now: i64,
    ttl_ms: i64,
) -> SqlResult<bool> {
    let n = db
        .exec(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE leases.expires_at <= $4 OR leases.holder = excluded.holder",
            &[
                name.into(),
                holder.into(),
                now.saturating_add(ttl_ms).into(),
                now.into(),
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Gives up `holder`'s lease `name` (on shutdown), so another node need not wait for it to lapse.
pub(crate) async fn release_lease<D: Db>(db: &mut D, name: &str, holder: &str) -> SqlResult<()> {
    db.exec(
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        &[name.into(), holder.into()],
    )
    .await?;
    Ok(())
}

/// Deletes change records older than `before`, at most `limit`; how many went.
pub(crate) async fn prune_changes<D: Db>(db: &mut D, before: i64, limit: u32) -> SqlResult<u64> {
    db.exec(
        "DELETE FROM changes WHERE id IN (
             SELECT id FROM changes WHERE recorded_at < $1 ORDER BY recorded_at LIMIT $2)",
        &[before.into(), i64::from(limit).into()],
    )
    .await
}

/// One queue, lease or change-log operation: the backends run every one through a single entry
/// point ([`super::MetaStore::queue`]), so none of them is written twice.
#[derive(Clone, Debug)]
pub enum Op {
    /// The database's clock.
    Now,
    /// [`enqueue`] outside a write (a redelivery, a test).
    Enqueue {
        /// Items.
        items: Vec<NewWork>,
        /// Current time (ms).
        now: i64,
    },
    /// [`claim`].
    Claim {
        /// Topic.
        topic: String,
        /// Claimer (node id).
        holder: String,
        /// Current time (ms).
        now: i64,
        /// Claim lease (ms).
        lease_ms: i64,
        /// Most items.
        limit: u32,
    },
    /// [`complete`].
    Complete {
        /// The claimed item.
        item: WorkItem,
        /// Claimer.
        holder: String,
    },
    /// [`fail`].
    Fail {
        /// The claimed item.
        item: WorkItem,
        /// Claimer.
        holder: String,
        /// Current time (ms).
        now: i64,
        /// What went wrong.
        error: String,
        /// When to retry; `None` buries the item.
        retry_at: Option<i64>,
    },
    /// [`stats`].
    Stats {
        /// Current time (ms).
        now: i64,
    },
    /// [`buried`].
    Buried {
        /// Only this topic.
        topic: Option<String>,
        /// After this (topic, key).
        after: Option<(String, String)>,
        /// Most items.
        limit: u32,
    },
    /// [`requeue`].
    Requeue {
        /// Topic.
        topic: String,
        /// Key.
        key: String,
        /// Current time (ms).
        now: i64,
    },
    /// [`acquire_lease`].
    AcquireLease {
        /// Lease name.
        name: String,
        /// Holder (node id).
        holder: String,
        /// Current time (ms).
        now: i64,
        /// Lease length (ms).
        ttl_ms: i64,
    },
    /// [`release_lease`].
    ReleaseLease {
        /// Lease name.
        name: String,
        /// Holder.
        holder: String,
    },
    /// [`prune_changes`].
    PruneChanges {
        /// Older than this (ms).
        before: i64,
        /// Most records.
        limit: u32,
    },
    /// The newest change records (tests, diagnostics).
    RecentChanges {
        /// Most records.
        limit: u32,
    },
}

/// The answer to an [`Op`].
#[derive(Clone, Debug)]
pub enum Out {
    /// Nothing to say.
    Done,
    /// A yes/no answer.
    Bool(bool),
    /// A number (time, count).
    Int(i64),
    /// Claimed items.
    Items(Vec<WorkItem>),
    /// Per-topic state.
    Stats(Vec<TopicStats>),
    /// Dead letters.
    Buried(Vec<BuriedItem>),
    /// Change records.
    Changes(Vec<super::changes::Change>),
}

/// The kind of transaction an [`Op`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpMode {
    /// Read only.
    Read,
    /// A short queue transaction (READ COMMITTED on PostgreSQL).
    Queue,
    /// SERIALIZABLE (leases: exactly one winner).
    Write,
}

impl Op {
    /// Its transaction kind.
    pub(crate) fn mode(&self) -> OpMode {
        match self {
            Op::Now | Op::Stats { .. } | Op::Buried { .. } | Op::RecentChanges { .. } => {
                OpMode::Read
            }
            Op::Enqueue { .. }
            | Op::Claim { .. }
            | Op::Complete { .. }
            | Op::Fail { .. }
            | Op::Requeue { .. }
            | Op::PruneChanges { .. } => OpMode::Queue,
            Op::AcquireLease { .. } | Op::ReleaseLease { .. } => OpMode::Write,
        }
    }

    /// Its name in metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Now => "db_now",
            Op::Enqueue { .. } => "enqueue_work",
            Op::Claim { .. } => "claim_work",
            Op::Complete { .. } => "complete_work",
            Op::Fail { .. } => "fail_work",
            Op::Stats { .. } => "queue_stats",
            Op::Buried { .. } => "buried_work",
            Op::Requeue { .. } => "requeue_work",
            Op::AcquireLease { .. } => "try_acquire_lease",
            Op::ReleaseLease { .. } => "release_lease",
            Op::PruneChanges { .. } => "prune_changes",
            Op::RecentChanges { .. } => "recent_changes",
        }
    }
}

/// Whether `name` is an [`Op`]'s name: queries of the background jobs, counted apart from the
/// requests' (`aerugo_db_queue_queries_total`).
pub(crate) fn is_background_op(name: &str) -> bool {
    matches!(
        name,
        "db_now"
            | "enqueue_work"
            | "claim_work"
            | "complete_work"
            | "fail_work"
            | "queue_stats"
            | "buried_work"
            | "requeue_work"
            | "try_acquire_lease"
            | "release_lease"
            | "prune_changes"
            | "recent_changes"
    )
}

/// Runs `op` in the transaction `db`.
pub(crate) async fn run<D: Db>(db: &mut D, op: &Op) -> SqlResult<Out> {
    Ok(match op {
        Op::Now => Out::Int(super::sql::database_now(db).await?),
        Op::Enqueue { items, now } => {
            enqueue(db, items, *now).await?;
            Out::Done
        }
        Op::Claim {
            topic,
            holder,
            now,
            lease_ms,
            limit,
        } => Out::Items(claim(db, topic, holder, *now, *lease_ms, *limit).await?),
        Op::Complete { item, holder } => Out::Bool(complete(db, item, holder).await?),
        Op::Fail {
            item,
            holder,
            now,
            error,
            retry_at,
        } => {
            fail(db, item, holder, *now, error, *retry_at).await?;
            Out::Done
        }
        Op::Stats { now } => Out::Stats(stats(db, *now).await?),
        Op::Buried {
            topic,
            after,
            limit,
        } => Out::Buried(
            buried(
                db,
                topic.as_deref(),
                after.as_ref().map(|(t, k)| (t.as_str(), k.as_str())),
                *limit,
            )
            .await?,
        ),
        Op::Requeue { topic, key, now } => Out::Bool(requeue(db, topic, key, *now).await?),
        Op::AcquireLease {
            name,
            holder,
            now,
            ttl_ms,
        } => Out::Bool(acquire_lease(db, name, holder, *now, *ttl_ms).await?),
        Op::ReleaseLease { name, holder } => {
            release_lease(db, name, holder).await?;
            Out::Done
        }
        Op::PruneChanges { before, limit } => {
            Out::Int(i64::try_from(prune_changes(db, *before, *limit).await?).unwrap_or(i64::MAX))
        }
        Op::RecentChanges { limit } => Out::Changes(super::changes::recent(db, *limit).await?),
    })
}
