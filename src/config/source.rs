//! Where events come from: `OUTBOX_SOURCE`.

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
/// would ever be published).
pub(super) fn fit(source: EventSource, relay: &mut RelaySettings) -> Result<(), ConfigError> {
    if source == EventSource::ChangeStream {
        if !relay.tail {
            return Err(ConfigError::new(
                "OUTBOX_TAIL",
                "must be on with OUTBOX_SOURCE=change-stream: the change stream is read by the tail",
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
    fn the_change_stream_needs_the_tail_and_turns_the_push_path_off() {
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
        assert_eq!(
            load(&[("OUTBOX_SOURCE", "cdc")]).0.unwrap_err().setting,
            "OUTBOX_SOURCE"
        );
    }
}
