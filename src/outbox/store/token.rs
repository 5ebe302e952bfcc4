//! The fencing token of a claim, and the hold a write puts on its own entry: the leaf of the
//! store's modules (the stored form of a token is a UUID as BSON binary).

use chrono::{DateTime, Utc};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson};
use uuid::Uuid;

/// Identifies one claim; every change under the claim is conditional on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    /// A fresh token.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The stored form (`lease_token`).
    pub(super) fn bson(self) -> Bson {
        uuid_bson(&self.0)
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A claim a write makes on its own new entry (the push path): the entry is born held by
/// `token` until `until`, so no relay claims it while the writing process publishes it; if that
/// process dies, the entry is due at `until` like any other and the sweeper takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The pushing process's token; every later change by the push path is fenced on it.
    pub token: ClaimToken,
    /// When the hold runs out.
    pub until: DateTime<Utc>,
}

/// A UUID as BSON binary of the UUID subtype.
pub(super) fn uuid_bson(u: &Uuid) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Uuid,
        bytes: u.as_bytes().to_vec(),
    })
}
