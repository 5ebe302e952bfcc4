//! How to reach the topic: `EVENTGRID_*`.

use std::num::NonZeroU32;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{ConfigError, Env, Limit};

/// `EVENTGRID_PUBLISH_TIMEOUT_MS`: the longest a Functions invocation may run on the
/// Consumption plan; a request still unanswered after that will not be.
const MAX_PUBLISH_TIMEOUT: Limit = Limit {
    max: Duration::from_secs(600),
    said: "600000 milliseconds (10 minutes)",
};

/// The input schema of the topic (a property of the topic in Azure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSchema {
    /// Event Grid schema (`application/json`), the default.
    EventGrid,
    /// CloudEvents 1.0 (`application/cloudevents-batch+json; charset=utf-8`).
    CloudEvents,
}

/// How to authenticate to the topic.
#[derive(Debug, Clone)]
pub enum EventGridAuth {
    /// The topic access key, sent as `aeg-sas-key`.
    Key(SecretString),
    /// Microsoft Entra ID: a bearer token for `https://eventgrid.azure.net/.default`.
    EntraId {
        /// Which credential gets the token.
        credential: CredentialKind,
        /// Client id of a user-assigned managed identity (`EVENTGRID_CLIENT_ID`).
        client_id: Option<String>,
    },
}

/// Where Entra ID tokens come from (`EVENTGRID_CREDENTIAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The Function App's managed identity (App Service / IMDS endpoint).
    ManagedIdentity,
    /// The developer's signed-in Azure CLI / Azure Developer CLI, for local runs.
    Developer,
}

/// How to reach the Event Grid topic.
#[derive(Debug, Clone)]
pub struct EventGridSettings {
    /// The whole topic endpoint (`https://…/api/events`), without `api-version`.
    pub endpoint: Url,
    /// Key or Entra ID.
    pub auth: EventGridAuth,
    /// Event Grid or CloudEvents schema.
    pub schema: EventSchema,
    /// CloudEvents `source` prefix; an event's source is `<prefix>/<collection>`.
    pub source: String,
    /// Timeout of one publish request.
    pub publish_timeout: Duration,
    /// Quick retries of a transiently failed request inside one run, before the failure is
    /// recorded on the entries.
    pub publish_retries: u32,
    /// `EVENTGRID_MAX_EVENTS_PER_SEC`: the most events this process sends per second, over
    /// all its paths; unset means no limit of our own.
    pub max_events_per_sec: Option<NonZeroU32>,
}

impl EventGridSettings {
    /// Reads `EVENTGRID_*`.
    ///
    /// Without `EVENTGRID_TOPIC_KEY`, Microsoft Entra ID is used; the managed identity
    /// credential then reads the endpoint the platform provides (`IDENTITY_ENDPOINT` /
    /// `IDENTITY_HEADER` on App Service, or IMDS) itself.
    ///
    /// # Errors
    /// A missing endpoint, a URL that is not https (plain http is accepted only for loopback
    /// hosts), a bad timeout (or one over 10 minutes), schema or credential name.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.required("EVENTGRID_TOPIC_ENDPOINT")?;
        let endpoint = parse_endpoint(&raw)?;
        let auth = auth_from_env(env)?;
        let schema = schema_from_env(env)?;
        let publish_retries: u32 =
            env.parse_or("EVENTGRID_PUBLISH_RETRIES", 3, "a whole number from 0 to 3")?;
        if publish_retries > 3 {
            return Err(ConfigError::new(
                "EVENTGRID_PUBLISH_RETRIES",
                "must be at most 3 (Event Grid's guidance); persisted backoff handles the rest",
            ));
        }
        let source = env.string_or("EVENTGRID_SOURCE", "/outbox-relay");
        if source.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::new(
                "EVENTGRID_SOURCE",
                "must be a URI reference without spaces",
            ));
        }
        Ok(Self {
            endpoint,
            auth,
            schema,
            source: source.trim_end_matches('/').to_owned(),
            publish_timeout: env.millis_within(
                "EVENTGRID_PUBLISH_TIMEOUT_MS",
                30_000,
                MAX_PUBLISH_TIMEOUT,
            )?,
            publish_retries,
            max_events_per_sec: env.parse_optional(
                "EVENTGRID_MAX_EVENTS_PER_SEC",
                "a whole number of events per second from 1",
            )?,
        })
    }
}

/// Key or Entra ID: `EVENTGRID_TOPIC_KEY`, else `EVENTGRID_CREDENTIAL` and
/// `EVENTGRID_CLIENT_ID`.
fn auth_from_env(env: &Env) -> Result<EventGridAuth, ConfigError> {
    if let Some(key) = env.get("EVENTGRID_TOPIC_KEY") {
        if key.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "EVENTGRID_TOPIC_KEY",
                "contains control characters",
            ));
        }
        return Ok(EventGridAuth::Key(SecretString::from(key)));
    }
    let credential = match env
        .string_or("EVENTGRID_CREDENTIAL", "managed-identity")
        .to_ascii_lowercase()
        .as_str()
    {
        "managed-identity" | "managed_identity" => CredentialKind::ManagedIdentity,
        "developer" => CredentialKind::Developer,
        other => {
            return Err(ConfigError::new(
                "EVENTGRID_CREDENTIAL",
                format!("must be managed-identity or developer, got {other:?}"),
            ));
        }
    };
    Ok(EventGridAuth::EntraId {
        credential,
        client_id: env.get("EVENTGRID_CLIENT_ID"),
    })
}

/// `EVENTGRID_SCHEMA`.
fn schema_from_env(env: &Env) -> Result<EventSchema, ConfigError> {
    match env
        .string_or("EVENTGRID_SCHEMA", "eventgrid")
        .to_ascii_lowercase()
        .as_str()
    {
        "eventgrid" | "event-grid" => Ok(EventSchema::EventGrid),
        "cloudevents" | "cloudevents-1.0" => Ok(EventSchema::CloudEvents),
        other => Err(ConfigError::new(
            "EVENTGRID_SCHEMA",
            format!("must be eventgrid or cloudevents, got {other:?}"),
        )),
    }
}

fn parse_endpoint(raw: &str) -> Result<Url, ConfigError> {
    const NAME: &str = "EVENTGRID_TOPIC_ENDPOINT";
    let url =
        Url::parse(raw).map_err(|e| ConfigError::new(NAME, format!("is not a valid URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            NAME,
            "must not carry credentials; use EVENTGRID_TOPIC_KEY",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(ConfigError::new(
                NAME,
                "must use https (plain http is allowed only for loopback hosts)",
            ));
        }
        other => {
            return Err(ConfigError::new(
                NAME,
                format!("must be an https URL, got scheme {other:?}"),
            ));
        }
    }
    if url.fragment().is_some() {
        return Err(ConfigError::new(NAME, "must not have a #fragment"));
    }
    if url.query_pairs().any(|(k, _)| k == "api-version") {
        return Err(ConfigError::new(
            NAME,
            "must not carry api-version; the publisher adds api-version=2018-01-01",
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_allowed_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:7072/api/events",
            "http://localhost:1/api/events",
            "http://[::1]:9/api/events",
        ] {
            assert!(parse_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://topic.westeurope-1.eventgrid.azure.net/api/events",
            "ftp://127.0.0.1/api/events",
            "not a url",
            "https://user:pw@t.eventgrid.azure.net/api/events",
            "https://t.eventgrid.azure.net/api/events?api-version=2018-01-01",
        ] {
            let e = parse_endpoint(bad).unwrap_err();
            assert_eq!(e.setting, "EVENTGRID_TOPIC_ENDPOINT", "{bad}");
        }
    }

    #[test]
    fn existing_query_parameters_are_kept() {
        let url = parse_endpoint("https://t.eventgrid.azure.net/api/events?x=1").unwrap();
        assert_eq!(url.query(), Some("x=1"));
    }
}
