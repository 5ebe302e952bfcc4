//! `OUTBOX_PLACEMENT=embedded`: how many pending events a document may carry, and the largest
//! document the server stores (what a document with its pending events must fit in).

use super::{ConfigError, Env};

/// Pending events a document may hold by default: a hot document while the topic is down
/// stops taking writes (503) after this many rather than growing towards the server's limit.
pub(super) const DEFAULT_MAX_PENDING: u32 = 100;

/// The `embedded` placement's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// `OUTBOX_EMBEDDED_MAX_PENDING`: pending events one document may hold (1–10,000).
    pub max_pending: u32,
    /// `OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES`: the largest stored document; `None` lets the
    /// placement use the server's (the collection's `maxContentLength` where Cosmos DB RU's
    /// `GetCollection` says, else 2 MB on a Cosmos DB RU host, else 16 MiB).
    pub max_document_bytes: Option<usize>,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        Self {
            max_pending: DEFAULT_MAX_PENDING,
            max_document_bytes: None,
        }
    }
}

impl EmbeddedSettings {
    /// Reads `OUTBOX_EMBEDDED_*`.
    ///
    /// # Errors
    /// A value that is not a number in range, naming the setting.
    pub(super) fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_pending: u32 = env.parse_or(
            "OUTBOX_EMBEDDED_MAX_PENDING",
            DEFAULT_MAX_PENDING,
            "a whole number from 1 to 10000",
        )?;
        if !(1..=10_000).contains(&max_pending) {
            return Err(ConfigError::new(
                "OUTBOX_EMBEDDED_MAX_PENDING",
                format!("must be from 1 to 10000, got {max_pending}"),
            ));
        }
        let max_document_bytes = match env.get("OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES") {
            None => None,
            Some(raw) => Some(
                raw.parse::<usize>()
                    .ok()
                    .filter(|n| (1024..=16 * 1024 * 1024).contains(n))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES",
                            format!("must be a number of bytes from 1024 to 16777216, got {raw:?}"),
                        )
                    })?,
            ),
        };
        Ok(Self {
            max_pending,
            max_document_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<EmbeddedSettings, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EmbeddedSettings::from_env(&Env::from_map(map))
    }

    #[test]
    fn bounds_have_defaults_and_checks() {
        assert_eq!(read(&[]).unwrap(), EmbeddedSettings::default());
        let s = read(&[
            ("OUTBOX_EMBEDDED_MAX_PENDING", "3"),
            ("OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES", "2097152"),
        ])
        .unwrap();
        assert_eq!((s.max_pending, s.max_document_bytes), (3, Some(2_097_152)));
        for (name, bad) in [
            ("OUTBOX_EMBEDDED_MAX_PENDING", "0"),
            ("OUTBOX_EMBEDDED_MAX_PENDING", "10001"),
            ("OUTBOX_EMBEDDED_MAX_PENDING", "many"),
            ("OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES", "10"),
            ("OUTBOX_EMBEDDED_MAX_DOCUMENT_BYTES", "17000000"),
        ] {
            let e = read(&[(name, bad)]).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
