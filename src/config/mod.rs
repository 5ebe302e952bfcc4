//! Settings: the only code that reads the environment.
//!
//! Every setting is an upper snake case name with an area prefix, exactly as it appears in
//! `local.settings.json` and in the Function App's application settings. Values become typed
//! (`Duration`, `NonZeroU32`, `Url`, enums) here and nowhere else; a bad value stops start-up
//! with a [`ConfigError`] that names the setting, and missing required settings stop it with
//! one [`SettingsError::Missing`] that names them all. The loaders take a lookup function, so tests
//! pass a map instead of mutating the process environment.
//!
//! One file per area: `mongo.rs` (where the data lives), `eventgrid.rs` (the topic),
//! `relay.rs` (draining), `metrics.rs` (exporters: the standard `OTEL_*` names); here the reader, the standalone and event type settings, and
//! [`Settings`], which reads them all.
//!
//! | Setting | Default | Meaning |
//! |---|---|---|
//! | `FUNCTIONS_CUSTOMHANDLER_PORT` | — (required in functions mode) | port the Functions host told us to listen on |
//! | `FUNCTIONS_APP_ROOT_PATH` | current directory | app root (where `OutboxTimer/function.json` lives) |
//! | `STANDALONE_PORT` | `7071` | port of `handler serve` (`--port` wins) |
//! | `STANDALONE_BIND` | `127.0.0.1` | address of `handler serve` (non-loopback needs a key) |
//! | `STANDALONE_FUNCTION_KEY` | — | key `handler serve` requires (`x-functions-key` or `?code=`) (secret) |
//! | `MONGODB_URI` | — (required) | connection string (secret) |
//! | `MONGODB_DATABASE` | `outbox` | database |
//! | `MONGODB_COLLECTION` | `documents` | collection of the business documents |
//! | `MONGODB_WRITE_TIMEOUT_MS` | `10000` | budget of one document write, transaction retries included |
//! | `MONGODB_MAX_CONCURRENT_WRITES` | `16` | writes running against the database at once; 16 times as many may wait, the rest get 503 at once |
//! | `MONGODB_SHARD_KEY` | — | shard key field of a sharded collection (copied onto entries) |
//! | `OUTBOX_COLLECTION` | `outbox` | collection of the outbox entries (`separate` placement) |
//! | `OUTBOX_PLACEMENT` | `auto` | `separate`, `colocated` (entries in the documents' collection), `embedded` (events in each document) or `auto` |
//! | `OUTBOX_EMBEDDED_MAX_PENDING` | `100` | `embedded`: pending events one document may hold (beyond: 503) |
//! | `OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES` | the server's | `embedded`: largest stored document (beyond: 413) |
//! | `OUTBOX_IDEMPOTENCY_HOURS` | `24` | how long an `Idempotency-Key` is remembered |
//! | `OUTBOX_SOURCE` | `outbox` | `change-stream`: publish one event per change to `MONGODB_COLLECTION` by anyone, from a change stream |
//! | `OUTBOX_CHANGE_STREAM_TARGET` | `auto` | whose change-stream rules apply: `mongodb`, `documentdb`, `cosmos-ru` or `auto` (host name, else the server) |
//! | `OUTBOX_ORDERING` | `none` | `subject`: never publish before an older unpublished entry of the same subject |
//! | `OUTBOX_EVENT_TYPE_PREFIX` | `CosmosDB` | event types `<prefix>.DocumentCreated/Replaced/Deleted` |
//! | `OUTBOX_EVENT_TYPE` | — | one fixed `eventType` for every change instead (e.g. `CosmosDB.DocumentChanged`) |
//! | `OUTBOX_SCHEDULE` | `schedule` of `OutboxTimer/function.json` | NCRONTAB of the standalone drain |
//! | `OUTBOX_BATCH_SIZE` | `1000` | entries claimed at a time (1–5,000) |
//! | `OUTBOX_PUBLISH_CONCURRENCY` | `4` | claimed batches published at once by one run |
//! | `OUTBOX_LEASE_SECS` | `60` | how long a claim lasts (at most a day) |
//! | `OUTBOX_MAX_ATTEMPTS` | `10` | failed publishes before an entry is dead-lettered |
//! | `OUTBOX_TIME_BUDGET_SECS` | `120` | time one drain may take (well under `functionTimeout`; at most a day) |
//! | `OUTBOX_INITIAL_BACKOFF_MS` | `1000` | first persisted retry delay (at most a day) |
//! | `OUTBOX_MAX_BACKOFF_SECS` | `300` | longest persisted retry delay (at most a week) |
//! | `OUTBOX_RETENTION_HOURS` | `168` | how long published entries are kept (TTL, or the relay's deletes); `0`: deleted once published (about a third less database CPU per pushed event; nothing to replay or chart) |
//! | `EVENTGRID_TOPIC_ENDPOINT` | — (required) | the whole `…/api/events` URL |
//! | `EVENTGRID_TOPIC_KEY` | — | topic access key (secret), sent as `aeg-sas-key`; without it, Entra ID |
//! | `EVENTGRID_CREDENTIAL` | `managed-identity` | Entra ID credential: `managed-identity` or `developer` (Azure CLI / azd) |
//! | `EVENTGRID_CLIENT_ID` | — | client id of a user-assigned managed identity |
//! | `EVENTGRID_SCHEMA` | `eventgrid` | the topic's input schema: `eventgrid` or `cloudevents` |
//! | `EVENTGRID_SOURCE` | `/outbox-relay` | CloudEvents `source` prefix (`<prefix>/<collection>`) |
//! | `EVENTGRID_PUBLISH_TIMEOUT_MS` | `30000` | timeout of one publish request (at most 10 minutes) |
//! | `EVENTGRID_PUBLISH_RETRIES` | `3` | quick retries of a failed request inside one run (0–3) |
//! | `RUST_LOG` | `info` | log filter |

mod embedded;
mod eventgrid;
mod metrics;
mod mongo;
mod relay;
mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use self::embedded::EmbeddedSettings;
pub use self::eventgrid::{CredentialKind, EventGridAuth, EventGridSettings, EventSchema};
pub use self::metrics::{MetricsSettings, OtlpSettings};
pub use self::mongo::{MongoSettings, PlacementSetting};
pub use self::relay::{LEASE_MARGIN_DIVISOR, RelaySettings};
pub use self::source::{EventSource, StreamTarget};
use crate::domain::EventTypes;

/// The largest batch Event Grid accepts in one request.
pub const MAX_BATCH_SIZE: u32 = 5_000;

/// A setting that is missing or cannot be used. The message names the setting and never
/// contains its value when the value is a secret.
#[derive(Debug, thiserror::Error)]
#[error("setting {setting}: {reason}")]
pub struct ConfigError {
    /// Name of the setting, e.g. `OUTBOX_BATCH_SIZE`.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Why [`Settings::from_env`] cannot give settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Required settings are not set: every one of them, so that a first start reports them
    /// all at once rather than one per attempt.
    #[error("{} not set: {}", if .0.len() == 1 { "a required setting is" } else { "required settings are" }, .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A setting has a value that cannot be used (the first one found).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The settings [`Settings::from_env`] cannot do without, whatever the mode (`handler serve`
/// and the Functions host alike).
pub const REQUIRED: [&str; 2] = ["MONGODB_URI", "EVENTGRID_TOPIC_ENDPOINT"];

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// Reads settings by name. [`Env::process`] reads the process environment; tests use
/// [`Env::from_map`].
pub struct Env {
    lookup: Box<Lookup>,
}

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Env {
    /// The process environment.
    #[must_use]
    pub fn process() -> Self {
        Self {
            #[expect(
                clippy::disallowed_methods,
                reason = "the config module is the one place that reads the environment"
            )]
            lookup: Box::new(|name| std::env::var(name).ok()),
        }
    }

    /// A fixed set of settings (tests, tools).
    #[must_use]
    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self {
            lookup: Box::new(move |name| map.get(name).cloned()),
        }
    }

    /// The value of `name`, with surrounding whitespace removed; empty counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    fn string_or(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    fn parse_or<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| ConfigError::new(name, format!("must be {what}, got {raw:?}"))),
        }
    }

    /// An optional setting parsed as `T`; unset is `None`.
    fn parse_optional<T: std::str::FromStr>(
        &self,
        name: &'static str,
        what: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.get(name)
            .map(|raw| {
                raw.parse()
                    .map_err(|_| ConfigError::new(name, format!("must be {what}, got {raw:?}")))
            })
            .transpose()
    }

    /// An on/off setting: `on`/`off` (also `true`/`false`, `1`/`0`), case-insensitive.
    fn switch_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("on" | "true" | "1") => Ok(true),
            Some("off" | "false" | "0") => Ok(false),
            Some(other) => Err(ConfigError::new(
                name,
                format!("must be on or off, got {other:?}"),
            )),
        }
    }

    fn millis_or(&self, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse_or(name, default_ms, "a whole number of milliseconds")?;
        positive(name, Duration::from_millis(ms))
    }

    fn secs_or(&self, name: &'static str, default_secs: u64) -> Result<Duration, ConfigError> {
        let secs: u64 = self.parse_or(name, default_secs, "a whole number of seconds")?;
        positive(name, Duration::from_secs(secs))
    }

    /// [`Self::millis_or`], at most `max`.
    fn millis_within(
        &self,
        name: &'static str,
        default_ms: u64,
        max: Limit,
    ) -> Result<Duration, ConfigError> {
        max.check(name, self.millis_or(name, default_ms)?)
    }

    /// [`Self::secs_or`], at most `max`.
    fn secs_within(
        &self,
        name: &'static str,
        default_secs: u64,
        max: Limit,
    ) -> Result<Duration, ConfigError> {
        max.check(name, self.secs_or(name, default_secs)?)
    }
}

/// The longest value a duration setting may have, so that no deadline or retry time computed
/// from it can overflow, and a typo (an extra zero or three) stops start-up instead of
/// hiding entries for years.
#[derive(Debug, Clone, Copy)]
struct Limit {
    max: Duration,
    /// The maximum as the setting's unit says it, and in words.
    said: &'static str,
}

impl Limit {
    fn check(self, name: &'static str, d: Duration) -> Result<Duration, ConfigError> {
        if d > self.max {
            Err(ConfigError::new(
                name,
                format!("must be at most {}", self.said),
            ))
        } else {
            Ok(d)
        }
    }
}

/// A whole number of hours between 1 and what a MongoDB TTL index can hold
/// (`expireAfterSeconds` is a 32-bit number of seconds).
fn ttl_hours(env: &Env, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    positive(name, ttl_hours_or_zero(env, name, default)?)
}

/// [`ttl_hours`], zero allowed (for a setting where zero means "keep nothing").
fn ttl_hours_or_zero(env: &Env, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    const MAX_HOURS: u64 = i32::MAX as u64 / 3600;
    let hours: u64 = env.parse_or(name, default, "a whole number of hours")?;
    if hours > MAX_HOURS {
        return Err(ConfigError::new(
            name,
            format!("must be at most {MAX_HOURS} hours (the longest TTL MongoDB keeps)"),
        ));
    }
    Ok(Duration::from_secs(hours * 3600))
}

fn positive(name: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(name, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// Everything the handler needs besides the listening port.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Database settings.
    pub mongodb: MongoSettings,
    /// Topic settings.
    pub eventgrid: EventGridSettings,
    /// Relay settings.
    pub relay: RelaySettings,
    /// How events are typed.
    pub event_types: EventTypes,
    /// NCRONTAB expression of the standalone drain, if set explicitly.
    pub schedule: Option<String>,
    /// Port of standalone mode.
    pub standalone_port: u16,
    /// Address of standalone mode.
    pub standalone_bind: std::net::IpAddr,
    /// Key standalone mode requires from callers, if any.
    pub standalone_key: Option<SecretString>,
    /// App root: where `host.json` and the function folders are.
    pub app_root: PathBuf,
    /// Where metrics go.
    pub metrics: MetricsSettings,
}

impl Settings {
    /// Reads every setting.
    ///
    /// # Errors
    /// [`SettingsError::Missing`] naming every [`REQUIRED`] setting that is not set, else
    /// [`SettingsError::Invalid`] for the first bad value.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let missing: Vec<&'static str> = REQUIRED
            .into_iter()
            .filter(|name| env.get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(SettingsError::Missing(missing));
        }
        Ok(Self::from_complete_env(env)?)
    }

    /// [`Settings::from_env`] once every required setting is known to be set.
    fn from_complete_env(env: &Env) -> Result<Self, ConfigError> {
        let mongodb = MongoSettings::from_env(env)?;
        let eventgrid = EventGridSettings::from_env(env)?;
        let mut relay = RelaySettings::from_env(env, eventgrid.publish_timeout)?;
        source::fit(mongodb.source, &mut relay)?;
        let event_types = match env.get("OUTBOX_EVENT_TYPE") {
            Some(fixed) => EventTypes::Fixed(event_type_part("OUTBOX_EVENT_TYPE", fixed)?),
            None => EventTypes::PerOperation {
                prefix: event_type_part(
                    "OUTBOX_EVENT_TYPE_PREFIX",
                    env.string_or("OUTBOX_EVENT_TYPE_PREFIX", "CosmosDB"),
                )?,
            },
        };
        let standalone_port =
            env.parse_or("STANDALONE_PORT", 7071_u16, "a port number (0–65535)")?;
        let standalone_bind = env.parse_or(
            "STANDALONE_BIND",
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            "an IP address",
        )?;
        let standalone_key = env.get("STANDALONE_FUNCTION_KEY").map(SecretString::from);
        if standalone_key.is_none() && !standalone_bind.is_loopback() {
            return Err(ConfigError::new(
                "STANDALONE_BIND",
                "is not a loopback address, so STANDALONE_FUNCTION_KEY must be set: handler serve refuses to accept unauthenticated writes from the network",
            ));
        }
        let app_root = env
            .get("FUNCTIONS_APP_ROOT_PATH")
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        Ok(Self {
            mongodb,
            eventgrid,
            relay,
            event_types,
            schedule: env.get("OUTBOX_SCHEDULE"),
            standalone_port,
            standalone_bind,
            standalone_key,
            app_root,
            metrics: MetricsSettings::from_env(env)?,
        })
    }

    /// The value of an app setting named in a `%NAME%` placeholder of `function.json`, the
    /// way the Functions host resolves it. Only settings this program knows are resolved.
    #[must_use]
    pub fn app_setting(&self, name: &str) -> Option<String> {
        match name {
            "OUTBOX_SCHEDULE" => self.schedule.clone(),
            _ => None,
        }
    }
}

fn event_type_part(setting: &'static str, value: String) -> Result<String, ConfigError> {
    if value.len() > 200 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::new(
            setting,
            "must be at most 200 characters without spaces or control characters",
        ));
    }
    Ok(value)
}

/// The port the Functions host gave us (`FUNCTIONS_CUSTOMHANDLER_PORT`).
///
/// # Errors
/// Missing or not a port number: the handler must then exit non-zero so the host notices.
pub fn functions_port(env: &Env) -> Result<u16, ConfigError> {
    const NAME: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
    let raw = env
        .get(NAME)
        .or_else(|| env.get("FUNCTIONS_HTTPWORKER_PORT"))
        .ok_or_else(|| {
            ConfigError::new(
                NAME,
                "is not set: the Azure Functions host sets it when it starts the handler; use `handler serve` to run without the host",
            )
        })?;
    match raw.parse::<u16>() {
        Ok(0) | Err(_) => Err(ConfigError::new(
            NAME,
            format!("must be a port number from 1 to 65535, got {raw:?}"),
        )),
        Ok(port) => Ok(port),
    }
}

/// The log filter (`RUST_LOG`), else `default`.
#[must_use]
pub fn log_filter(env: &Env, default: &str) -> String {
    env.string_or("RUST_LOG", default)
}

/// Shows a secret's length but never its content: for diagnostics.
#[must_use]
pub fn describe_secret(secret: &SecretString) -> String {
    format!("<{} characters, redacted>", secret.expose_secret().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    const BASE: &[(&str, &str)] = &[
        ("MONGODB_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0"),
        (
            "EVENTGRID_TOPIC_ENDPOINT",
            "https://t.westeurope-1.eventgrid.azure.net/api/events",
        ),
        ("EVENTGRID_TOPIC_KEY", "k3y"),
    ];

    fn with(extra: &[(&str, &str)]) -> Env {
        let mut v: Vec<(&str, &str)> = BASE.to_vec();
        v.extend_from_slice(extra);
        env(&v)
    }

    fn err(extra: &[(&'static str, &'static str)]) -> ConfigError {
        invalid(Settings::from_env(&with(extra)))
    }

    #[test]
    fn a_retention_of_zero_hours_means_published_entries_are_not_kept() {
        let kept = |extra: &[(&str, &str)]| {
            Settings::from_env(&with(extra))
                .unwrap()
                .mongodb
                .keeps_published()
        };
        assert!(kept(&[]), "kept for 168 hours by default");
        assert!(kept(&[("OUTBOX_RETENTION_HOURS", "1")]));
        assert!(!kept(&[("OUTBOX_RETENTION_HOURS", "0")]));
        assert_eq!(
            err(&[("OUTBOX_IDEMPOTENCY_HOURS", "0")]).setting,
            "OUTBOX_IDEMPOTENCY_HOURS"
        );
    }

    /// The bad value a load stopped at.
    fn invalid(loaded: Result<Settings, SettingsError>) -> ConfigError {
        match loaded {
            Err(SettingsError::Invalid(e)) => e,
            other => panic!("expected a bad value, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_when_only_required_settings_are_set() {
        let s = Settings::from_env(&with(&[])).unwrap();
        assert_eq!(s.mongodb.database, "outbox");
        assert_eq!(s.mongodb.collection, "documents");
        assert_eq!(s.mongodb.outbox_collection, "outbox");
        assert_eq!(s.relay.batch_size.get(), 1000);
        assert_eq!(s.relay.lease, Duration::from_secs(60));
        assert_eq!(s.relay.time_budget, Duration::from_secs(120));
        assert_eq!(s.eventgrid.publish_timeout, Duration::from_secs(30));
        assert_eq!(
            s.event_types,
            EventTypes::PerOperation {
                prefix: "CosmosDB".into()
            }
        );
        assert_eq!(s.mongodb.placement, PlacementSetting::Auto);
        assert_eq!(s.mongodb.idempotency_ttl, Duration::from_secs(24 * 3600));
        assert!(s.standalone_bind.is_loopback());
        assert_eq!(s.standalone_port, 7071);
        assert!(s.schedule.is_none());
    }

    #[test]
    fn missing_required_settings_are_named() {
        for name in REQUIRED {
            let pairs: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != name).collect();
            let e = Settings::from_env(&env(&pairs)).unwrap_err();
            assert!(
                matches!(&e, SettingsError::Missing(m) if m == &[name]),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!("a required setting is not set: {name}")
            );
        }
    }

    #[test]
    fn every_missing_required_setting_is_named_at_once() {
        // A blank value counts as unset; a bad value elsewhere waits until they are set.
        let e = Settings::from_env(&env(&[("MONGODB_URI", "  "), ("OUTBOX_BATCH_SIZE", "0")]))
            .unwrap_err();
        assert!(
            matches!(&e, SettingsError::Missing(m) if m == &REQUIRED),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "required settings are not set: MONGODB_URI, EVENTGRID_TOPIC_ENDPOINT"
        );
    }

    #[test]
    fn bad_numbers_name_their_setting() {
        for (name, value) in [
            ("OUTBOX_BATCH_SIZE", "0"),
            ("OUTBOX_BATCH_SIZE", "5001"),
            ("OUTBOX_BATCH_SIZE", "many"),
            ("OUTBOX_LEASE_SECS", "-1"),
            ("OUTBOX_LEASE_SECS", "0"),
            ("OUTBOX_MAX_ATTEMPTS", "0"),
            ("OUTBOX_TIME_BUDGET_SECS", "1.5"),
            ("OUTBOX_INITIAL_BACKOFF_MS", "x"),
            ("OUTBOX_MAX_BACKOFF_SECS", "0"),
            ("EVENTGRID_PUBLISH_TIMEOUT_MS", "soon"),
            ("STANDALONE_PORT", "70000"),
            ("OUTBOX_RETENTION_HOURS", "-1"),
            ("OUTBOX_RETENTION_HOURS", "596524"),
            ("OUTBOX_RETENTION_HOURS", "18446744073709551615"),
            ("OUTBOX_PUBLISH_CONCURRENCY", "65"),
            ("MONGODB_WRITE_TIMEOUT_MS", "0"),
            ("MONGODB_MAX_CONCURRENT_WRITES", "0"),
            ("MONGODB_MAX_CONCURRENT_WRITES", "10001"),
            ("MONGODB_MAX_CONCURRENT_WRITES", "lots"),
            ("EVENTGRID_PUBLISH_RETRIES", "4"),
            ("OUTBOX_PLACEMENT", "beside"),
            ("MONGODB_SHARD_KEY", "a.b"),
            ("MONGODB_SHARD_KEY", "_id"),
            ("OUTBOX_IDEMPOTENCY_HOURS", "0"),
            ("OUTBOX_IDEMPOTENCY_HOURS", "9999999"),
            ("OUTBOX_EVENT_TYPE_PREFIX", "has space"),
            ("STANDALONE_BIND", "0.0.0.0"),
            ("STANDALONE_BIND", "localhost:80"),
            ("EVENTGRID_SCHEMA", "xml"),
            ("OUTBOX_ORDERING", "strict"),
        ] {
            let e = err(&[(name, value)]);
            assert_eq!(e.setting, name, "{name}={value}: {e}");
        }
    }

    #[test]
    fn without_a_key_entra_id_is_used() {
        let pairs: Vec<_> = BASE
            .iter()
            .copied()
            .filter(|(k, _)| *k != "EVENTGRID_TOPIC_KEY")
            .chain([
                ("EVENTGRID_CLIENT_ID", "cid"),
                ("EVENTGRID_SCHEMA", "cloudevents"),
            ])
            .collect();
        let s = Settings::from_env(&env(&pairs)).unwrap();
        assert!(matches!(
            s.eventgrid.auth,
            EventGridAuth::EntraId { credential: CredentialKind::ManagedIdentity, client_id: Some(ref c) } if c == "cid"
        ));
        assert_eq!(s.eventgrid.schema, EventSchema::CloudEvents);
        let bad: Vec<_> = pairs
            .iter()
            .copied()
            .chain([("EVENTGRID_CREDENTIAL", "password")])
            .collect();
        let e = invalid(Settings::from_env(&env(&bad)));
        assert_eq!(e.setting, "EVENTGRID_CREDENTIAL");
        let with_key = Settings::from_env(&with(&[])).unwrap();
        assert!(matches!(with_key.eventgrid.auth, EventGridAuth::Key(_)));
        assert_eq!(with_key.eventgrid.schema, EventSchema::EventGrid);
    }

    #[test]
    fn a_fixed_event_type_replaces_the_per_operation_ones() {
        let s = Settings::from_env(&with(&[("OUTBOX_EVENT_TYPE", "CosmosDB.DocumentChanged")]))
            .unwrap();
        assert_eq!(
            s.event_types,
            EventTypes::Fixed("CosmosDB.DocumentChanged".into())
        );
    }

    #[test]
    fn a_network_address_needs_a_function_key() {
        let s = Settings::from_env(&with(&[
            ("STANDALONE_BIND", "0.0.0.0"),
            ("STANDALONE_FUNCTION_KEY", "k"),
        ]))
        .unwrap();
        assert!(!s.standalone_bind.is_loopback());
        assert!(!format!("{s:?}").contains("\"k\""));
    }

    #[test]
    fn lease_must_outlive_a_publish() {
        let e = err(&[
            ("EVENTGRID_PUBLISH_TIMEOUT_MS", "40000"),
            ("OUTBOX_LEASE_SECS", "60"),
        ]);
        assert_eq!(e.setting, "OUTBOX_LEASE_SECS");
    }

    #[test]
    fn durations_have_upper_bounds() {
        // (setting, the largest accepted value, the smallest refused one, what else the
        // largest needs to pass the other checks)
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(&str, &str, &str, Pairs)] = &[
            (
                "OUTBOX_LEASE_SECS",
                "86400",
                "86401",
                &[("OUTBOX_TIME_BUDGET_SECS", "86400")],
            ),
            ("OUTBOX_TIME_BUDGET_SECS", "86400", "86401", &[]),
            (
                "OUTBOX_INITIAL_BACKOFF_MS",
                "86400000",
                "86400001",
                &[("OUTBOX_MAX_BACKOFF_SECS", "86400")],
            ),
            ("OUTBOX_MAX_BACKOFF_SECS", "604800", "604801", &[]),
            (
                "EVENTGRID_PUBLISH_TIMEOUT_MS",
                "600000",
                "600001",
                &[
                    ("OUTBOX_LEASE_SECS", "1200"),
                    ("OUTBOX_TIME_BUDGET_SECS", "3600"),
                ],
            ),
        ];
        for &(name, max, over, others) in cases {
            let mut ok: Vec<(&str, &str)> = others.to_vec();
            ok.push((name, max));
            let s = Settings::from_env(&with(&ok));
            assert!(s.is_ok(), "{name}={max}: {:?}", s.err());
            for bad in [over, "18446744073709551615"] {
                let mut pairs: Vec<(&str, &str)> = others.to_vec();
                pairs.push((name, bad));
                let e = invalid(Settings::from_env(&with(&pairs)));
                assert_eq!(e.setting, name, "{name}={bad}: {e}");
                assert!(e.reason.starts_with("must be at most"), "{name}={bad}: {e}");
            }
        }
    }

    #[test]
    fn a_budget_too_short_for_one_publish_is_refused_naming_both_settings() {
        // The defect this guards: a 20 s budget with the default 30 s publish timeout let
        // every run claim nothing and still answer 200.
        let e = err(&[("OUTBOX_TIME_BUDGET_SECS", "20")]);
        assert_eq!(e.setting, "OUTBOX_TIME_BUDGET_SECS");
        assert!(e.reason.contains("EVENTGRID_PUBLISH_TIMEOUT_MS"), "{e}");
        // 30 s publish + 6 s (a tenth of the 60 s lease) is the floor.
        assert!(Settings::from_env(&with(&[("OUTBOX_TIME_BUDGET_SECS", "36")])).is_err());
        assert!(Settings::from_env(&with(&[("OUTBOX_TIME_BUDGET_SECS", "37")])).is_ok());
        assert!(
            Settings::from_env(&with(&[
                ("OUTBOX_TIME_BUDGET_SECS", "20"),
                ("EVENTGRID_PUBLISH_TIMEOUT_MS", "5000"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn push_tail_linger_poll_and_rate_have_defaults_and_checks() {
        let s = Settings::from_env(&with(&[])).unwrap();
        assert!(s.relay.push && s.relay.tail && s.relay.watch);
        assert_eq!(s.relay.linger, Duration::from_millis(5));
        assert_eq!(s.relay.poll, Duration::from_secs(1));
        assert_eq!(
            s.relay.write_wait,
            Duration::ZERO,
            "writes never wait by default"
        );
        assert_eq!(s.eventgrid.max_events_per_sec, None);
        let e = err(&[("OUTBOX_PUSH", "off"), ("OUTBOX_WRITE_WAIT_MS", "50")]);
        assert_eq!(e.setting, "OUTBOX_WRITE_WAIT_MS");
        assert!(e.reason.contains("OUTBOX_PUSH=on"), "{e}");
        let s = Settings::from_env(&with(&[
            ("OUTBOX_PUSH", "OFF"),
            ("OUTBOX_TAIL", "false"),
            ("OUTBOX_TAIL_WATCH", "Off"),
            ("OUTBOX_LINGER_MS", "0"),
            ("EVENTGRID_MAX_EVENTS_PER_SEC", "5000"),
        ]))
        .unwrap();
        assert!(!s.relay.push && !s.relay.tail && !s.relay.watch);
        assert_eq!(s.relay.linger, Duration::ZERO);
        assert_eq!(s.eventgrid.max_events_per_sec.map(|n| n.get()), Some(5000));
        for (name, bad) in [
            ("OUTBOX_PUSH", "yes please"),
            ("OUTBOX_TAIL_WATCH", "sometimes"),
            ("OUTBOX_LINGER_MS", "1001"),
            ("OUTBOX_POLL_MS", "0"),
            ("EVENTGRID_MAX_EVENTS_PER_SEC", "0"),
            ("OUTBOX_WRITE_WAIT_MS", "10001"),
        ] {
            let e = err(&[(name, bad)]);
            assert_eq!(e.setting, name, "{name}={bad}: {e}");
        }
    }

    #[test]
    fn backoff_bounds_must_be_ordered() {
        let e = err(&[
            ("OUTBOX_INITIAL_BACKOFF_MS", "5000"),
            ("OUTBOX_MAX_BACKOFF_SECS", "2"),
        ]);
        assert_eq!(e.setting, "OUTBOX_INITIAL_BACKOFF_MS");
    }

    #[test]
    fn a_malformed_connection_string_is_rejected_without_echoing_it() {
        let e = err(&[("MONGODB_URI", "mongodb://user:hunter2@/bad/")]);
        assert_eq!(e.setting, "MONGODB_URI");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn collections_must_differ() {
        let e = err(&[("OUTBOX_COLLECTION", "documents")]);
        assert_eq!(e.setting, "OUTBOX_COLLECTION");
    }

    #[test]
    fn database_names_with_forbidden_characters_are_rejected() {
        let e = err(&[("MONGODB_DATABASE", "a/b")]);
        assert_eq!(e.setting, "MONGODB_DATABASE");
    }

    #[test]
    fn functions_port_is_required_and_numeric() {
        assert_eq!(
            functions_port(&env(&[])).unwrap_err().setting,
            "FUNCTIONS_CUSTOMHANDLER_PORT"
        );
        for bad in ["", "x", "0", "65536", "-3"] {
            let got = functions_port(&env(&[("FUNCTIONS_CUSTOMHANDLER_PORT", bad)]));
            assert!(got.is_err(), "{bad:?}");
        }
        assert_eq!(
            functions_port(&env(&[("FUNCTIONS_CUSTOMHANDLER_PORT", " 8080 ")])).unwrap(),
            8080
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Settings::from_env(&with(&[(
            "MONGODB_URI",
            "mongodb://admin:s3cr3t@127.0.0.1:27017/?replicaSet=rs0",
        )]))
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(!dbg.contains("k3y"), "{dbg}");
    }
}
