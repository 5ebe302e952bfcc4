//! Where events come from: `OUTBOX_SOURCE`, and for a change stream whose rules apply:
//! `OUTBOX_CHANGE_STREAM_TARGET`.

use super::{ConfigError, Env, RelaySettings};

/// What the relay publishes events for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// The transactional outbox: the HTTP function writes an entry beside each document, and
    /// the relay publishes the entries.
    Outbox,
    /// A change stream on `MONGODB_COLLECTION`: one event per change by anyone (the HTTP
    /// function then writes only the document), resumed from a checkpoint.
    ChangeStream,
}

impl std::str::FromStr for EventSource {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "outbox" => Ok(Self::Outbox),
            "change-stream" | "changestream" | "change_stream" => Ok(Self::ChangeStream),
            _ => Err(()),
        }
    }
}

/// The kind of server a change stream is read from: each has its own rules (facts and
/// sources in the README's "Change-stream source" table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTarget {
    /// MongoDB replica sets and Atlas: every operation type, deletes included.
    MongoDb,
    /// Azure DocumentDB (Cosmos DB for MongoDB vCore): deletes emitted, no update description,
    /// no pre-images, a 400 MB history.
    DocumentDb,
    /// Cosmos DB for MongoDB RU: one mandatory pipeline, no `operationType`, no deletes, order
    /// per shard key only, throttled pages come back empty.
    CosmosRu,
}

impl StreamTarget {
    /// The setting's value naming this target.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MongoDb => "mongodb",
            Self::DocumentDb => "documentdb",
            Self::CosmosRu => "cosmos-ru",
        }
    }

    /// The target a host name says, if it says one: `*.mongo.cosmos.azure.com` is Cosmos DB
    /// for MongoDB RU, `*.mongocluster.cosmos.azure.com` Azure DocumentDB (vCore).
    #[must_use]
    pub fn of_host(host: &str) -> Option<Self> {
        let host = host
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host.ends_with(".mongo.cosmos.azure.com") {
            Some(Self::CosmosRu)
        } else if host.ends_with(".mongocluster.cosmos.azure.com") {
            Some(Self::DocumentDb)
        } else {
            None
        }
    }

    /// The target the hosts of a connection string say (the first host that says one).
    #[must_use]
    pub fn of_uri(uri: &str) -> Option<Self> {
        let cs = mongodb::options::ConnectionString::parse(uri).ok()?;
        let hosts: Vec<String> = match cs.host_info {
            mongodb::options::HostInfo::HostIdentifiers(hosts) => {
                hosts.iter().map(ToString::to_string).collect()
            }
            mongodb::options::HostInfo::DnsRecord(name) => vec![name],
            _ => Vec::new(),
        };
        hosts.iter().find_map(|h| Self::of_host(h))
    }
}

impl std::str::FromStr for StreamTarget {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "mongodb" | "mongo" | "atlas" => Ok(Self::MongoDb),
            "documentdb" | "vcore" | "cosmos-vcore" => Ok(Self::DocumentDb),
            "cosmos-ru" | "cosmosru" | "ru" => Ok(Self::CosmosRu),
            _ => Err(()),
        }
    }
}

/// `OUTBOX_CHANGE_STREAM_TARGET`: a fixed target, or `None` for `auto` (decided at start-up
/// from the host name, else by asking the server).
///
/// # Errors
/// An unknown value, or a fixed target the connection string's host contradicts (a stream
/// opened by the wrong rules is refused or loses events; the URI is never quoted: it is
/// secret).
pub(super) fn target_from_env(env: &Env, uri: &str) -> Result<Option<StreamTarget>, ConfigError> {
    const NAME: &str = "OUTBOX_CHANGE_STREAM_TARGET";
    let Some(raw) = env.get(NAME) else {
        return Ok(None);
    };
    if raw.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let target: StreamTarget = raw.parse().map_err(|()| {
        ConfigError::new(
            NAME,
            format!("must be auto, mongodb, documentdb or cosmos-ru, got {raw:?}"),
        )
    })?;
    match StreamTarget::of_uri(uri) {
        Some(host) if host != target => Err(ConfigError::new(
            NAME,
            format!(
                "is {} but MONGODB_URI names a {} host, whose change streams follow other rules: set {} or auto",
                target.as_str(),
                host.as_str(),
                host.as_str()
            ),
        )),
        _ => Ok(Some(target)),
    }
}

/// Reads `OUTBOX_SOURCE` (the operator commands need it too, to find the dead letters).
///
/// # Errors
/// An unknown value.
pub(super) fn from_env(env: &Env) -> Result<EventSource, ConfigError> {
    env.parse_or(
        "OUTBOX_SOURCE",
        EventSource::Outbox,
        "outbox or change-stream",
    )
}

/// Fits the relay to the source: a change stream is read continuously (the tail), and there is
/// nothing for the push path to push, since writes insert no entry.
///
/// # Errors
/// `change-stream` with `OUTBOX_TAIL=off` (a one-off drain has no stream to read, so nothing
/// would ever be published), or with `OUTBOX_TAIL_WATCH=off` (that source is a change stream;
/// the setting would do nothing).
pub(super) fn fit(source: EventSource, relay: &mut RelaySettings) -> Result<(), ConfigError> {
    if source == EventSource::ChangeStream {
        if !relay.tail {
            return Err(ConfigError::new(
                "OUTBOX_TAIL",
                "must be on with OUTBOX_SOURCE=change-stream: the change stream is read by the tail",
            ));
        }
        if !relay.watch {
            return Err(ConfigError::new(
                "OUTBOX_TAIL_WATCH",
                "must be on with OUTBOX_SOURCE=change-stream: that source is read from a change stream, whatever this setting says",
            ));
        }
        relay.push = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_auto_unless_set_and_a_contradicting_host_stops_start_up() {
        let env = |pairs: &[(&str, &str)]| {
            Env::from_map(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let local = "mongodb://127.0.0.1:27017/?replicaSet=rs0";
        let ru = "mongodb://a:secret@acct.mongo.cosmos.azure.com:10255/?ssl=true";
        let vcore = "mongodb+srv://u:secret@c.mongocluster.cosmos.azure.com/";
        assert_eq!(target_from_env(&env(&[]), local).unwrap(), None);
        let set =
            |v: &str, uri: &str| target_from_env(&env(&[("OUTBOX_CHANGE_STREAM_TARGET", v)]), uri);
        assert_eq!(set("AUTO", ru).unwrap(), None);
        assert_eq!(
            set("cosmos-ru", local).unwrap(),
            Some(StreamTarget::CosmosRu)
        );
        assert_eq!(
            set("documentdb", vcore).unwrap(),
            Some(StreamTarget::DocumentDb)
        );
        assert_eq!(set("mongodb", local).unwrap(), Some(StreamTarget::MongoDb));
        let e = set("mongodb", ru).unwrap_err();
        assert_eq!(e.setting, "OUTBOX_CHANGE_STREAM_TARGET");
        assert!(
            e.reason.contains("cosmos-ru host") && !e.reason.contains("secret"),
            "{e}"
        );
        assert!(set("cosmos-ru", vcore).is_err());
        assert!(
            set("cosmos", local)
                .unwrap_err()
                .reason
                .contains("\"cosmos\"")
        );
        assert_eq!(StreamTarget::of_uri(ru), Some(StreamTarget::CosmosRu));
        assert_eq!(StreamTarget::of_uri(vcore), Some(StreamTarget::DocumentDb));
        assert_eq!(StreamTarget::of_uri(local), None);
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("outbox".parse(), Ok(EventSource::Outbox));
        assert_eq!("Change-Stream".parse(), Ok(EventSource::ChangeStream));
        assert_eq!("cdc".parse::<EventSource>(), Err(()));
    }

    fn load(pairs: &[(&str, &str)]) -> (Result<EventSource, ConfigError>, RelaySettings) {
        let env = Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let mut relay =
            RelaySettings::from_env(&env, std::time::Duration::from_secs(1)).expect("relay");
        let source = from_env(&env).and_then(|s| fit(s, &mut relay).map(|()| s));
        (source, relay)
    }

    #[test]
    fn the_change_stream_needs_the_tail_and_its_watch_and_turns_the_push_path_off() {
        let (source, relay) = load(&[]);
        assert_eq!(source.unwrap(), EventSource::Outbox);
        assert!(relay.push);
        let (source, relay) = load(&[("OUTBOX_SOURCE", "change-stream")]);
        assert_eq!(source.unwrap(), EventSource::ChangeStream);
        assert!(relay.tail && !relay.push);
        let e = load(&[("OUTBOX_SOURCE", "change-stream"), ("OUTBOX_TAIL", "off")])
            .0
            .unwrap_err();
        assert_eq!(e.setting, "OUTBOX_TAIL");
        let e = load(&[
            ("OUTBOX_SOURCE", "change-stream"),
            ("OUTBOX_TAIL_WATCH", "off"),
        ])
        .0
        .unwrap_err();
        assert_eq!(e.setting, "OUTBOX_TAIL_WATCH");
        assert_eq!(
            load(&[("OUTBOX_SOURCE", "cdc")]).0.unwrap_err().setting,
            "OUTBOX_SOURCE"
        );
    }
}
