//! `handler outbox doctor`: a pre-flight over everything the relay depends on — the database
//! (`database.rs`), the change-stream source when configured (`stream.rs`), the Event Grid
//! topic (`eventgrid.rs`) and the timings of the settings (`timing.rs`). Each check says what it found and, when something is wrong, the fix.
//!
//! It changes nothing that matters: it never publishes an event (the topic gets an empty batch,
//! see `eventgrid.rs`), never writes an entry, and never creates an index (a missing index is
//! what it must report). The one write is the `auto` placement probe's transaction, which is
//! always aborted, and the collections that probe needs.
//!
//! No secret reaches its output: checks print hosts, never connection strings or keys, and
//! [`Report::redact`] removes every configured secret from the finished report besides.

mod database;
mod eventgrid;
mod stream;
mod timing;

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{EventGridAuth, Settings};

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Pass,
    /// Works, but worth a look.
    Warn,
    /// Broken: the relay will fail or lose time because of it.
    Fail,
    /// Not run (what it needs failed, or the configuration does not need it).
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "ok  ",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One check and its result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (`database.connection`, `eventgrid.credentials`, …).
    pub id: &'static str,
    /// What it looked at, for people.
    pub title: &'static str,
    /// What it found.
    pub verdict: Verdict,
    /// The finding, concretely.
    pub detail: String,
    /// What to do about it; set for `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(id: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            id,
            title,
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn skip(id: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Skip,
            ..Self::pass(id, title, detail)
        }
    }

    fn problem(
        verdict: Verdict,
        id: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            id,
            title,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(
        id: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::problem(Verdict::Fail, id, title, detail, fix)
    }

    fn warn(
        id: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::problem(Verdict::Warn, id, title, detail, fix)
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

/// The timer's schedule as the relay would run it (resolved by the caller, which knows the
/// function app's files).
#[derive(Debug, Clone)]
pub struct ScheduleFacts {
    /// The NCRONTAB expression.
    pub expression: String,
    /// Time between two consecutive runs, when it is regular.
    pub interval: Option<Duration>,
}

/// What the doctor checks besides the settings: facts from the function app's files.
#[derive(Debug, Clone)]
pub struct AppFacts {
    /// `functionTimeout` of `host.json`: `Ok(None)` when it is not set, `Err` with why it
    /// cannot be read.
    pub function_timeout: Result<Option<Duration>, String>,
    /// The drain's schedule, or why it cannot be resolved.
    pub schedule: Result<ScheduleFacts, String>,
}

/// Runs every check, in order: database (each step needs the one before), Event Grid, timings.
pub async fn run(settings: &Settings, app: &AppFacts) -> Report {
    let mut checks = database::checks(settings).await;
    let reached = checks
        .iter()
        .any(|c| c.id == "database.connection" && c.verdict == Verdict::Pass);
    if reached {
        checks.extend(stream::checks(settings).await);
    }
    checks.extend(eventgrid::checks(&settings.eventgrid).await);
    checks.extend(timing::checks(settings, app));
    let mut report = Report {
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    };
    report.redact(&secrets(settings));
    report
}

/// Every configured secret, as it could appear in a message: the connection string, its
/// password (as written and decoded) and the topic key.
fn secrets(settings: &Settings) -> Vec<String> {
    let uri = settings.mongodb.uri.expose_secret();
    let mut out = vec![uri.to_owned()];
    if let Some((userinfo, _)) = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password.to_owned());
        if let Ok(decoded) = urlencoding_decode(password) {
            out.push(decoded);
        }
    }
    if let EventGridAuth::Key(key) = &settings.eventgrid.auth {
        out.push(key.expose_secret().to_owned());
    }
    // Very short "secrets" would redact ordinary words; no real key or password is that short.
    out.retain(|s| s.len() >= 4);
    out
}

/// Percent-decoding of a connection string's password.
fn urlencoding_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

impl Report {
    /// Replaces every occurrence of a secret in the report's text with `<redacted>`.
    pub fn redact(&mut self, secrets: &[String]) {
        let clean = |s: &mut String| {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "<redacted>");
                }
            }
        };
        for c in &mut self.checks {
            clean(&mut c.detail);
            if let Some(fix) = &mut c.fix {
                clean(fix);
            }
        }
    }

    /// The report as text for a terminal: one line per check, the fix under it.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "[{}] {}: {}\n",
                c.verdict.label(),
                c.title,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("       fix: {fix}\n"));
            }
        }
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "\n{} passed, {} warnings, {} failed{}\n",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail),
            if self.ok {
                ""
            } else {
                ": fix the failures above"
            }
        ));
        out
    }
}

/// A duration for people: `90 s`, `1500 ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_everywhere_in_a_report() {
        let mut r = Report {
            ok: false,
            checks: vec![Check::fail(
                "a",
                "A",
                "key s3cr3t-key and p%40ss",
                "use s3cr3t-key",
            )],
        };
        r.redact(&["s3cr3t-key".into(), "p%40ss".into()]);
        let text = r.render();
        assert!(
            !text.contains("s3cr3t") && !text.contains("p%40ss"),
            "{text}"
        );
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn passwords_are_decoded_like_the_driver_does() {
        assert_eq!(urlencoding_decode("p%40ss%2Fw").unwrap(), "p@ss/w");
        assert_eq!(urlencoding_decode("plain%").unwrap(), "plain%");
    }
}
