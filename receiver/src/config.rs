//! Receiver settings: which topic schema to emulate, credentials, what to keep.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::ReceiverError;

/// Every path of the control API starts with this; the publish path may not.
pub(crate) const CONTROL_PREFIX: &str = "/_receiver/";

/// The input schema of the emulated custom topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// *Event Grid schema* (the default): `Content-Type: application/json`, events with
    /// exactly `id`, `subject`, `eventType`, `eventTime`, `dataVersion`, `data`.
    #[default]
    EventGrid,
    /// *CloudEvents v1.0* input schema: `Content-Type:
    /// application/cloudevents-batch+json`, structured-mode CloudEvents.
    CloudEvents,
}

impl Schema {
    /// The media type (without parameters) a request must carry for this schema.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::EventGrid => "application/json",
            Self::CloudEvents => "application/cloudevents-batch+json",
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EventGrid => "eventgrid",
            Self::CloudEvents => "cloudevents",
        })
    }
}

impl FromStr for Schema {
    type Err = ReceiverError;

    /// Parses `eventgrid` or `cloudevents` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "eventgrid" => Ok(Self::EventGrid),
            "cloudevents" => Ok(Self::CloudEvents),
            other => Err(ReceiverError::Config(format!(
                "schema must be eventgrid or cloudevents, not {other:?}"
            ))),
        }
    }
}

/// How much of each accepted event the receiver keeps in memory.
///
/// Counters ([`crate::Stats`]) are kept in every mode; they include the number of
/// distinct ids, so the set of ids seen is kept in every mode too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// Keep every event (raw JSON, id, subject, type) and every request record.
    #[default]
    All,
    /// Keep only the ids in arrival order, and every request record.
    Ids,
    /// Keep only counters: no events, no ids in order, no request records.
    None,
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Ids => "ids",
            Self::None => "none",
        })
    }
}

impl FromStr for Keep {
    type Err = ReceiverError;

    /// Parses `all`, `ids` or `none` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(Self::All),
            "ids" => Ok(Self::Ids),
            "none" => Ok(Self::None),
            other => Err(ReceiverError::Config(format!(
                "keep must be all, ids or none, not {other:?}"
            ))),
        }
    }
}

/// Everything a receiver needs to start; see [`crate::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// The topic access key expected in the `aeg-sas-key` header. Must not be empty.
    pub key: String,
    /// If set, `Authorization: Bearer <token>` with exactly this token is accepted too
    /// (emulating Microsoft Entra ID). If unset, bearer tokens are always refused.
    pub bearer_token: Option<String>,
    /// The emulated topic's input schema.
    pub schema: Schema,
    /// The publish path, e.g. `/api/events`. Must start with `/`, carry no query and not
    /// lie under `/_receiver/` (the control API).
    pub path: String,
    /// How much of each accepted event to keep in memory.
    pub keep: Keep,
    /// If set, every accepted event is appended to this file as one JSON line (its
    /// compact JSON), flushed once per request. The file is created if missing.
    pub record_path: Option<PathBuf>,
}

/// The key a receiver expects when none is configured.
pub const DEFAULT_KEY: &str = "local-dev-key";
/// The publish path a receiver serves when none is configured.
pub const DEFAULT_PATH: &str = "/api/events";

impl Default for ReceiverConfig {
    /// Key `local-dev-key`, no bearer token, Event Grid schema, path `/api/events`,
    /// keep everything, no record file.
    fn default() -> Self {
        Self {
            key: DEFAULT_KEY.to_owned(),
            bearer_token: None,
            schema: Schema::EventGrid,
            path: DEFAULT_PATH.to_owned(),
            keep: Keep::All,
            record_path: None,
        }
    }
}

impl ReceiverConfig {
    /// Checks the invariants documented on the fields.
    ///
    /// # Errors
    ///
    /// [`ReceiverError::Config`] naming the offending field.
    pub fn validate(&self) -> Result<(), ReceiverError> {
        if self.key.is_empty() {
            return Err(ReceiverError::Config("key must not be empty".to_owned()));
        }
        if self.bearer_token.as_deref() == Some("") {
            return Err(ReceiverError::Config(
                "bearer_token must not be empty when set".to_owned(),
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#']) {
            return Err(ReceiverError::Config(format!(
                "path must start with / and carry no query or fragment, not {:?}",
                self.path
            )));
        }
        if self.path == "/_receiver" || self.path.starts_with(CONTROL_PREFIX) {
            return Err(ReceiverError::Config(format!(
                "path {:?} collides with the control API under {}",
                self.path, CONTROL_PREFIX
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_documented_values() {
        let config = ReceiverConfig::default();
        config.validate().unwrap();
        assert_eq!(config.key, "local-dev-key");
        assert_eq!(config.path, "/api/events");
        assert_eq!(config.schema, Schema::EventGrid);
        assert_eq!(config.keep, Keep::All);
    }

    #[test]
    fn invalid_configs_are_refused() {
        for config in [
            ReceiverConfig {
                key: String::new(),
                ..Default::default()
            },
            ReceiverConfig {
                bearer_token: Some(String::new()),
                ..Default::default()
            },
            ReceiverConfig {
                path: "api/events".into(),
                ..Default::default()
            },
            ReceiverConfig {
                path: "/api/events?x=1".into(),
                ..Default::default()
            },
            ReceiverConfig {
                path: "/_receiver/events".into(),
                ..Default::default()
            },
        ] {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn schema_and_keep_parse_from_their_names() {
        assert_eq!("eventgrid".parse::<Schema>().unwrap(), Schema::EventGrid);
        assert_eq!(
            "CloudEvents".parse::<Schema>().unwrap(),
            Schema::CloudEvents
        );
        assert!("cloud".parse::<Schema>().is_err());
        assert_eq!("ids".parse::<Keep>().unwrap(), Keep::Ids);
        assert_eq!("none".parse::<Keep>().unwrap(), Keep::None);
        assert!("some".parse::<Keep>().is_err());
    }
}
