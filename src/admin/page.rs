//! The status page's HTML: server-rendered, no script, readable on a phone.

use chrono::{DateTime, Utc};

use crate::ops::Status;
use crate::outbox::stream::StreamStatus;

/// What the page shows.
pub(super) struct View<'a> {
    /// What `handler outbox status` reports.
    pub(super) status: &'a Status,
    /// Published per minute, oldest first; `None` where published entries are not kept
    /// (`OUTBOX_RETENTION_HOURS=0`).
    pub(super) per_minute: Option<&'a [u64]>,
    pub(super) now: DateTime<Utc>,
    /// The token every form must send back.
    pub(super) token: &'a str,
    /// The outcome of the last action, shown once.
    pub(super) notice: Option<&'a str>,
}

/// Escapes text for HTML element content and quoted attributes.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:16px/1.4 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem}\
h1{font-size:1.4rem}.cards{display:flex;flex-wrap:wrap;gap:.5rem}\
.card{border:1px solid #ccc;border-radius:.5rem;padding:.5rem 1rem;min-width:8rem}\
.card b{display:block;font-size:1.6rem}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top;word-break:break-all}\
form{display:inline}button{font-size:1rem;padding:.3rem .8rem;margin:.1rem;white-space:nowrap}\
td:last-child{width:1%;white-space:nowrap}\
.notice{background:#e7f5e7;padding:.5rem;border-radius:.3rem}svg{width:100%;height:auto;max-height:7rem}";

/// The whole page.
pub(super) fn render(v: &View<'_>) -> String {
    let c = &v.status.counts;
    let oldest = c.oldest_pending_created_at.map_or_else(
        || "none".to_owned(),
        |t| format!("{} s", (v.now - t).num_seconds().max(0)),
    );
    let card = |label: &str, value: String| {
        format!(
            "<div class=\"card\">{}<b>{}</b></div>",
            esc(label),
            esc(&value)
        )
    };
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Outbox status</title><style>{STYLE}</style></head><body>\
         <h1>Outbox <small>{}</small></h1>",
        esc(&v.status.entries_collection)
    );
    if let Some(n) = v.notice {
        html.push_str(&format!("<p class=\"notice\" id=\"notice\">{}</p>", esc(n)));
    }
    html.push_str("<div class=\"cards\">");
    html.push_str(&card("pending", c.pending.to_string()));
    html.push_str(&card("due now", c.due.to_string()));
    html.push_str(&card("oldest pending", oldest));
    html.push_str(&card("dead letters", c.dead.to_string()));
    match v.per_minute {
        Some(per_minute) => {
            html.push_str(&card("published", c.published.to_string()));
            html.push_str("</div>");
            html.push_str(&chart(per_minute));
        }
        None => {
            html.push_str(&card("published", "not kept".to_owned()));
            html.push_str("</div>");
            html.push_str(
                "<h2>Published per minute</h2><p id=\"not-kept\">Published entries are deleted once \
                 Event Grid accepts them (<code>OUTBOX_RETENTION_HOURS=0</code>): there is nothing \
                 to count. The relay's metrics count what it publishes.</p>",
            );
        }
    }
    html.push_str(&dead_letters(v));
    if let Some(stream) = &v.status.change_stream {
        html.push_str(&change_stream(stream, v.token, v.now));
    }
    html.push_str(&format!(
        "<p><small>As of {} · reload for fresh figures</small></p></body></html>",
        v.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    html
}

/// Published per minute as bars.
fn chart(per_minute: &[u64]) -> String {
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let n = per_minute.len().max(1);
    let (w, h) = (300_u64, 80_u64);
    let bar = w / n as u64;
    let mut svg = format!(
        "<h2>Published per minute (last {n})</h2><svg viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"published per minute\">",
        h + 12
    );
    for (i, count) in per_minute.iter().enumerate() {
        let height = count * h / max;
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#4a7\"><title>{count}</title></rect>",
            i as u64 * bar + 1,
            h - height,
            bar.saturating_sub(2).max(1)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"0\" y=\"{}\" font-size=\"10\">max {max}/min</text></svg>",
        h + 11
    ));
    svg
}

/// A form that posts `op` on dead letter `id` (of the stream's when `of` says so) back to
/// this page.
fn form(token: &str, of: Option<&str>, op: &str, label: &str, id: &str) -> String {
    // `action` left out: the form posts to this page's own URL, query string included
    // (so a `?code=` key is sent back without being written into the page).
    let of = of.map_or_else(String::new, |of| {
        format!("<input type=\"hidden\" name=\"of\" value=\"{}\">", esc(of))
    });
    format!(
        "<form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{}\">{of}\
         <input type=\"hidden\" name=\"op\" value=\"{op}\"><input type=\"hidden\" name=\"id\" value=\"{}\">\
         <button type=\"submit\" id=\"{op}-{}\">{label}</button></form>",
        esc(token),
        esc(id),
        esc(id)
    )
}

/// The change-stream source (`OUTBOX_SOURCE=change-stream`): where the stream stands, who
/// reads it, and its dead letters with their buttons.
fn change_stream(s: &StreamStatus, token: &str, now: DateTime<Utc>) -> String {
    let at = |t: Option<DateTime<Utc>>| {
        t.map_or_else(
            || "none".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let card = |id: &str, label: &str, value: String| {
        format!(
            "<div class=\"card\" id=\"{id}\">{}<b>{}</b></div>",
            esc(label),
            esc(&value)
        )
    };
    let position = if s.has_position {
        at(s.position_time)
    } else {
        "none yet".to_owned()
    };
    let lease = match s.lease_until {
        Some(until) if s.lease_live => format!(
            "live until {} ({} s)",
            at(Some(until)),
            (until - now).num_seconds().max(0)
        ),
        Some(until) => format!("expired at {}", at(Some(until))),
        None => "none".to_owned(),
    };
    let mut out = format!(
        "<h2>Change stream <small>{}</small></h2><div class=\"cards\">",
        esc(&s.collection)
    );
    out.push_str(&card("stream-position", "last published change", position));
    out.push_str(&card(
        "stream-lag",
        "lag",
        s.lag_seconds
            .map_or_else(|| "none".to_owned(), |l| format!("{l} s")),
    ));
    out.push_str(&card(
        "stream-reader",
        "reader",
        s.reader.clone().unwrap_or_else(|| "none".to_owned()),
    ));
    out.push_str(&card("stream-lease", "lease", lease));
    out.push_str(&card(
        "stream-dead",
        "dead letters",
        format!(
            "{} ({} requeued, {} skipped)",
            s.dead, s.requeued, s.skipped
        ),
    ));
    out.push_str("</div>");
    if s.dead_letters.is_empty() {
        out.push_str("<h3>Dead-lettered changes</h3><p>None.</p>");
        return out;
    }
    out.push_str(
        "<h3>Dead-lettered changes</h3><table><thead><tr><th>Event</th><th>Reason</th><th></th></tr></thead><tbody>",
    );
    for d in &s.dead_letters {
        let status = d.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
        let actions = if d.state == "dead" {
            format!(
                "{}{}",
                form(token, Some("stream"), "requeue", "Requeue", &d.id),
                form(token, Some("stream"), "skip", "Skip", &d.id)
            )
        } else {
            // Requeued: the reader publishes it before reading on.
            format!("<small>{}</small>", esc(&d.state))
        };
        out.push_str(&format!(
            "<tr id=\"stream-dead-{}\"><td>{}<br><small>{} · {}</small></td><td>{}{}</td><td>{actions}</td></tr>",
            esc(&d.id),
            esc(&d.id),
            esc(&d.subject),
            esc(&d.state),
            esc(&status),
            esc(&d.reason),
        ));
    }
    out.push_str("</tbody></table>");
    out
}

fn dead_letters(v: &View<'_>) -> String {
    if v.status.dead_letters.is_empty() {
        return "<h2>Dead letters</h2><p>None.</p>".to_owned();
    }
    let mut out = String::from(
        "<h2>Dead letters</h2><table><thead><tr><th>Event</th><th>Last error</th><th></th></tr></thead><tbody>",
    );
    for d in &v.status.dead_letters {
        let id = d.id.to_string();
        let status = d.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
        let form = |op: &str, label: &str| form(v.token, None, op, label, &id);
        out.push_str(&format!(
            "<tr id=\"dead-{}\"><td>{}<br><small>{} · {} attempts</small></td><td>{}{}</td><td>{}{}</td></tr>",
            esc(&id),
            esc(&id),
            esc(&d.subject),
            d.attempts,
            esc(&status),
            esc(&d.reason),
            form("requeue", "Requeue"),
            form("skip", "Skip")
        ));
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_entries_cannot_become_markup() {
        assert_eq!(
            esc("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
