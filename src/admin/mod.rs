//! The outbox status page: `GET /admin/outbox` shows the backlog, the oldest pending age, the
//! published throughput of the last minutes and the dead letters with their last errors;
//! `POST /admin/outbox` requeues or skips one dead letter and sends the browser back.
//!
//! Protected like the routes it sits beside (standalone mode's function key, in
//! `x-functions-key` or `?code=`). Against cross-site requests a POST must carry the page's
//! token (random per process, only readable by someone who could load the page) and must not
//! come from another site (`Sec-Fetch-Site`, else `Origin` against `Host`). The page holds no
//! secret: forms post back to the page's own URL, so a `?code=` key is never written into it.

mod page;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;

use crate::domain::EventId;
use crate::ops::{self, DeadLetters};
use crate::outbox::Storage;

/// The page's route.
pub const PATH: &str = "/admin/outbox";
/// Dead letters the page lists.
const DEAD_LETTERS_SHOWN: i64 = 50;
/// Minutes of throughput in the chart.
const CHART_MINUTES: u32 = 15;

/// The page's state: the storage it reads and changes, and its form token.
#[derive(Clone)]
pub struct OutboxPage {
    storage: Arc<Storage>,
    token: Arc<str>,
    /// Where browsers see the page (`/admin/outbox`, or the HTTP function's public route):
    /// where a form's answer sends them back to.
    public_path: Arc<str>,
}

impl std::fmt::Debug for OutboxPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxPage").finish_non_exhaustive()
    }
}

impl OutboxPage {
    /// The page over `storage`, with a fresh form token.
    #[must_use]
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            token: uuid::Uuid::new_v4().simple().to_string().into(),
            public_path: PATH.into(),
        }
    }

    /// The same page, seen by browsers at `path` (the Functions host's public route).
    #[must_use]
    pub fn at_public_path(mut self, path: &str) -> Self {
        self.public_path = path.into();
        self
    }

    /// `GET` and `POST /admin/outbox`.
    pub fn routes(self) -> Router {
        Router::new().route(PATH, get(show).post(act).with_state(self))
    }
}

async fn show(State(page): State<OutboxPage>, request: Request) -> Response {
    let notice = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "done")
            .map(|(_, v)| v.into_owned())
    });
    match render(&page, notice.as_deref()).await {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::telemetry::chain(&e), "The status page cannot read the outbox");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the outbox cannot be read now; try again",
            )
                .into_response()
        }
    }
}

async fn render(page: &OutboxPage, notice: Option<&str>) -> Result<String, crate::db::DbError> {
    let now = Utc::now();
    // The same status `handler outbox status` prints: one set of queries for both.
    let status = ops::status_of(&page.storage, DEAD_LETTERS_SHOWN, now).await?;
    let ready = page.storage.ready().await?;
    // Where published entries are deleted at once there is nothing to count.
    let per_minute = if status.published_kept {
        Some(ready.store.published_per_minute(now, CHART_MINUTES).await?)
    } else {
        None
    };
    Ok(page::render(&page::View {
        status: &status,
        per_minute: per_minute.as_deref(),
        now,
        token: &page.token,
        notice,
    }))
}

/// A request another site made the browser send.
fn cross_site(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            let bare = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            bare != host
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

async fn act(State(page): State<OutboxPage>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if cross_site(&parts.headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let Ok(body): Result<Bytes, _> = axum::body::to_bytes(body, 16 * 1024).await else {
        return (StatusCode::BAD_REQUEST, "unreadable form").into_response();
    };
    let field = |name: &str| {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let token = field("token").unwrap_or_default();
    if !same_token(token.as_bytes(), page.token.as_bytes()) {
        return (
            StatusCode::FORBIDDEN,
            "stale or missing form token: reload the page",
        )
            .into_response();
    }
    let Some(id) = field("id")
        .and_then(|i| uuid::Uuid::parse_str(&i).ok())
        .map(EventId::from_uuid)
    else {
        return (StatusCode::BAD_REQUEST, "no event id").into_response();
    };
    // Each form says whose dead letter it names (`of=stream` for the change-stream source's).
    let which = match field("of").as_deref() {
        Some("stream") => DeadLetters::Stream,
        _ => DeadLetters::Entries,
    };
    let done = match change(&page, field("op").as_deref(), which, id).await {
        Ok(message) => message,
        Err(response) => return *response,
    };
    // Back to the page with the same query (a `?code=` key included), plus the notice.
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| k != "done")
                .collect()
        })
        .unwrap_or_default();
    query.push(("done".into(), done));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("{}?{query}", page.public_path))],
    )
        .into_response()
}

async fn change(
    page: &OutboxPage,
    op: Option<&str>,
    which: DeadLetters,
    id: EventId,
) -> Result<String, Box<Response>> {
    let unavailable = |e: crate::db::DbError| {
        tracing::warn!(error = %crate::telemetry::chain(&e), "The status page cannot change the outbox");
        Box::new(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the outbox cannot be changed now; try again",
            )
                .into_response(),
        )
    };
    let (n, verb) = match op {
        Some("requeue") => (
            ops::requeue_in(&page.storage, which, Some(&[id]))
                .await
                .map_err(unavailable)?,
            "requeued",
        ),
        Some("skip") => (
            ops::skip_in(&page.storage, which, &[id])
                .await
                .map_err(unavailable)?,
            "skipped",
        ),
        _ => {
            return Err(Box::new(
                (StatusCode::BAD_REQUEST, "op must be requeue or skip").into_response(),
            ));
        }
    };
    Ok(if n == 1 {
        format!("{verb} {id}")
    } else {
        format!("{id} is no longer a dead letter; nothing {verb}")
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn requests_from_other_sites_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&h(&[
            ("origin", "https://evil.example"),
            ("host", "relay:7071")
        ])));
        assert!(!cross_site(&h(&[
            ("origin", "http://relay:7071"),
            ("host", "relay:7071")
        ])));
        assert!(
            !cross_site(&h(&[])),
            "no browser evidence: the token decides"
        );
    }
}
