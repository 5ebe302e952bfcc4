//! The Event Grid checks: the endpoint's name resolves, the topic answers (over TLS for
//! `https://`), and it accepts the key or identity — without publishing anything.
//!
//! **The probe is an empty batch**, `[]`, sent by the relay's own publisher (same URL, headers,
//! credential, TLS and timeout). It is safe because it carries no event: whatever the server
//! does with it, nothing can be published or delivered to a subscriber. And it is informative
//! because Event Grid authenticates a request before it reads the body: a bad key or token is
//! answered `401`, a missing role (or an IP filter) `403`, a wrong path `404`, and only an
//! authenticated request reaches body validation, which refuses an empty batch with `400` (a
//! request must carry 1 to 5,000 events). The project's strict receiver (`receiver/`) checks in
//! the same order. So `400` means "reachable, and the credential is accepted".

use std::time::Duration;

use url::{Host, Url};

use super::Check;
use crate::config::{EventGridAuth, EventGridSettings};
use crate::publisher::{FailureKind, Outcome, PublishFailure, Publisher};

/// Longest wait for the endpoint's name to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the DNS check, then (if it passed) the probe.
pub(super) async fn checks(settings: &EventGridSettings) -> Vec<Check> {
    let endpoint = &settings.endpoint;
    let dns = dns(endpoint).await;
    if dns.verdict == super::Verdict::Fail {
        return vec![
            dns,
            Check::skip(
                "eventgrid.connection",
                "Event Grid connection",
                "skipped: the name does not resolve",
            ),
        ];
    }
    let mut out = vec![dns];
    out.extend(probe(settings).await);
    out
}

/// Where the endpoint points, for people: scheme, host and path (never a query string).
fn shown(endpoint: &Url) -> String {
    let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        endpoint.scheme(),
        endpoint.host_str().unwrap_or_default(),
        endpoint.path()
    )
}

async fn dns(endpoint: &Url) -> Check {
    const ID: &str = "eventgrid.dns";
    const TITLE: &str = "Event Grid DNS";
    let port = endpoint.port_or_known_default().unwrap_or(443);
    let name = match endpoint.host() {
        Some(Host::Domain(name)) => name.to_owned(),
        Some(Host::Ipv4(ip)) => {
            return Check::pass(ID, TITLE, format!("{ip} is an address; nothing to resolve"));
        }
        Some(Host::Ipv6(ip)) => {
            return Check::pass(ID, TITLE, format!("{ip} is an address; nothing to resolve"));
        }
        None => {
            return Check::fail(
                ID,
                TITLE,
                "EVENTGRID_TOPIC_ENDPOINT has no host",
                "set EVENTGRID_TOPIC_ENDPOINT to the topic's whole URL, https://<topic>.<region>-1.eventgrid.azure.net/api/events",
            );
        }
    };
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name.as_str(), port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            Check::pass(
                ID,
                TITLE,
                format!("{name} resolves to {}", addrs.join(", ")),
            )
        }
        Ok(Err(e)) => Check::fail(
            ID,
            TITLE,
            format!("{name} does not resolve: {e}"),
            "check the host in EVENTGRID_TOPIC_ENDPOINT (copy it from the topic's overview page); with a private endpoint, this machine needs the privatelink.eventgrid.azure.net DNS zone",
        ),
        Err(_) => Check::fail(
            ID,
            TITLE,
            format!("{name} did not resolve within {} s", DNS_TIMEOUT.as_secs()),
            "check this machine's DNS servers",
        ),
    }
}

/// The empty-batch probe; see the module's comment for why it is safe.
async fn probe(settings: &EventGridSettings) -> Vec<Check> {
    const ID: &str = "eventgrid.connection";
    const TITLE: &str = "Event Grid connection";
    let publisher = match Publisher::new(settings) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                ID,
                TITLE,
                format!(
                    "cannot build the HTTP client: {}",
                    crate::telemetry::chain(&e)
                ),
                "check EVENTGRID_TOPIC_KEY (it must be a valid header value)",
            )];
        }
    };
    let at = shown(&settings.endpoint);
    let tls = if settings.endpoint.scheme() == "https" {
        ", TLS certificate trusted"
    } else {
        ""
    };
    let outcome = publisher.send(b"[]".to_vec(), 0).await;
    let answered =
        |status: u16| Check::pass(ID, TITLE, format!("{at} answered HTTP {status}{tls}"));
    match outcome {
        Outcome::Rejected { failure } if failure.status == Some(400) => vec![
            answered(400),
            Check::pass(
                "eventgrid.credentials",
                "Event Grid credentials",
                format!(
                    "{} accepted: the topic refused the empty probe batch only as invalid content (400), which it checks after authentication",
                    credential(settings)
                ),
            ),
        ],
        Outcome::Published => vec![
            answered(200),
            Check::warn(
                "eventgrid.credentials",
                "Event Grid credentials",
                "the endpoint accepted an empty batch, which Event Grid refuses: it may not be an Event Grid topic",
                "check that EVENTGRID_TOPIC_ENDPOINT is the topic's .../api/events URL",
            ),
        ],
        Outcome::Halt { failure }
        | Outcome::Rejected { failure }
        | Outcome::Retry { failure, .. }
            if failure.status.is_some() =>
        {
            let status = failure.status.unwrap_or_default();
            vec![answered(status), refused(settings, &failure, status)]
        }
        Outcome::Halt { failure }
        | Outcome::Rejected { failure }
        | Outcome::Retry { failure, .. } => {
            vec![unanswered(settings, &failure, &at)]
        }
    }
}

fn credential(settings: &EventGridSettings) -> &'static str {
    match settings.auth {
        EventGridAuth::Key(_) => "the topic key (EVENTGRID_TOPIC_KEY) is",
        EventGridAuth::EntraId { .. } => "the Entra ID identity is",
    }
}

/// The topic answered, but not with the expected 400.
fn refused(settings: &EventGridSettings, failure: &PublishFailure, status: u16) -> Check {
    const ID: &str = "eventgrid.credentials";
    const TITLE: &str = "Event Grid credentials";
    let said = failure
        .code
        .as_deref()
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let key = matches!(settings.auth, EventGridAuth::Key(_));
    match status {
        401 if key => Check::fail(
            ID,
            TITLE,
            format!("the topic refused the key: HTTP 401{said}"),
            "set EVENTGRID_TOPIC_KEY to one of the topic's two access keys (portal: the topic → Access keys; or `az eventgrid topic key list`)",
        ),
        401 => Check::fail(
            ID,
            TITLE,
            format!("the topic refused the Entra ID token: HTTP 401{said}"),
            "check that the token is for https://eventgrid.azure.net and from the tenant of the topic; with a user-assigned identity, set EVENTGRID_CLIENT_ID to its client id",
        ),
        403 => Check::fail(
            ID,
            TITLE,
            format!("the topic refused access: HTTP 403{said}"),
            "grant the identity the \"EventGrid Data Sender\" role on the topic, and check the topic's networking (IP filter, public access) allows this machine",
        ),
        404 => Check::fail(
            ID,
            TITLE,
            format!("no topic at this path: HTTP 404{said}"),
            "EVENTGRID_TOPIC_ENDPOINT must be the whole URL ending in /api/events, as the topic's overview page shows it",
        ),
        408 | 429 | 500..=599 => Check::warn(
            ID,
            TITLE,
            format!(
                "the topic is busy or failing right now: HTTP {status}{said}; the credential could not be checked"
            ),
            "run the doctor again in a minute; check Azure status if it persists",
        ),
        _ => Check::fail(
            ID,
            TITLE,
            format!("unexpected answer to the probe: HTTP {status}{said}"),
            "check EVENTGRID_TOPIC_ENDPOINT and EVENTGRID_SCHEMA against the topic",
        ),
    }
}

/// No HTTP answer: no token, no connection, TLS refused, or a timeout.
fn unanswered(settings: &EventGridSettings, failure: &PublishFailure, at: &str) -> Check {
    const ID: &str = "eventgrid.connection";
    const TITLE: &str = "Event Grid connection";
    let message = &failure.message;
    let lower = message.to_ascii_lowercase();
    match failure.kind {
        FailureKind::Auth => Check::fail(
            "eventgrid.credentials",
            "Event Grid credentials",
            format!("no Entra ID token: {message}"),
            "on Azure, enable the Function App's managed identity (and set EVENTGRID_CLIENT_ID for a user-assigned one); locally, set EVENTGRID_CREDENTIAL=developer and sign in with `az login`, or set EVENTGRID_TOPIC_KEY",
        ),
        _ if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake") =>
        {
            Check::fail(
                ID,
                TITLE,
                format!("TLS with {at} failed: {message}"),
                "the endpoint's certificate is not trusted here: check the host name, and that no proxy intercepts TLS without its CA installed",
            )
        }
        FailureKind::Connect => Check::fail(
            ID,
            TITLE,
            format!("cannot connect to {at}: {message}"),
            "check the host and port in EVENTGRID_TOPIC_ENDPOINT, and that outbound HTTPS to it is allowed (firewall, private endpoint, VNet routes)",
        ),
        _ => Check::fail(
            ID,
            TITLE,
            format!(
                "{at} did not answer within EVENTGRID_PUBLISH_TIMEOUT_MS ({} ms): {message}",
                settings.publish_timeout.as_millis()
            ),
            "check the network path to the topic; raise EVENTGRID_PUBLISH_TIMEOUT_MS if the link is slow",
        ),
    }
}
