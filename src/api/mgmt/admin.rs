//! Site administration of the work queue: `/admin/work/…` lists dead letters (items that failed
//! `jobs.max_attempts` times) and makes one due again.
//!
//! Invariant: site admins only (the service checks; everyone else gets 403). A view shows what an
//! operator needs to judge an item (topic, key, attempts, last error, when it was buried, its
//! payload) and none of the queue's internals (versions, claims, due times).

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{ApiError, Authed, JsonBody, Page, PageQuery, QueryParams, rfc3339};
use crate::api::ApiState;
use crate::service::BuriedItem;

/// A dead letter as listed.
#[derive(Debug, Serialize)]
pub(crate) struct BuriedWorkView {
    /// The consumer (e.g. `discard-objects`).
    topic: String,
    /// What the work is about; unique within the topic.
    key: String,
    /// Attempts made.
    attempts: i64,
    /// The error of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    /// RFC 3339.
    buried_at: String,
    /// What the consumer was given (JSON text).
    payload: String,
}

impl From<BuriedItem> for BuriedWorkView {
    fn from(b: BuriedItem) -> Self {
        BuriedWorkView {
            topic: b.topic,
            key: b.key,
            attempts: b.attempts,
            last_error: b.last_error,
            buried_at: rfc3339(b.buried_at),
            payload: b.payload,
        }
    }
}

/// The sort key of a dead letter, and the `last` cursor: `<topic>/<key>` (topics hold no `/`).
fn cursor(v: &BuriedWorkView) -> String {
    format!("{}/{}", v.topic, v.key)
}

/// `GET /admin/work/buried` query.
#[derive(Debug, Deserialize)]
pub(crate) struct BuriedQuery {
    topic: Option<String>,
    n: Option<u32>,
    last: Option<String>,
}

/// `GET /api/v1/admin/work/buried?topic=&n=&last=`: dead letters in (topic, key) order, of one
/// topic or all; `last` is `<topic>/<key>` of the previous page's last item.
pub(super) async fn list_buried_work(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<BuriedQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(
        &state.registry,
        PageQuery {
            n: q.n,
            last: q.last,
        },
    )?;
    let after = match page.after() {
        None => None,
        Some(last) => {
            let (topic, key) = last
                .split_once('/')
                .ok_or_else(|| ApiError::invalid("last must be <topic>/<key>"))?;
            Some((topic.to_owned(), key.to_owned()))
        }
    };
    let topic = q.topic.filter(|t| !t.is_empty());
    let items = state
        .registry
        .buried_work(&caller, topic.as_deref(), after, page.fetch())
        .await?;
    let views = items.into_iter().map(BuriedWorkView::from).collect();
    Ok(page.render(&uri, views, cursor))
}

/// `POST /admin/work/requeue` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequeueRequest {
    topic: String,
    key: String,
}

/// `POST /api/v1/admin/work/requeue`: makes a dead letter due again with its attempts reset
/// (404 when there is no dead letter under that topic and key).
pub(super) async fn requeue_work(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    JsonBody(req): JsonBody<RequeueRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .requeue_work(&caller, &req.topic, &req.key)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
