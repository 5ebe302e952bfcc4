//! Authentication to the topic: the access key, or a Microsoft Entra ID token.
//!
//! Tokens (scope `https://eventgrid.azure.net/.default`) come from `azure_identity`: the
//! managed identity (system-assigned, or user-assigned via `EVENTGRID_CLIENT_ID`), or the
//! developer's Azure CLI / Azure Developer CLI sign-in for local runs. A token is cached and
//! replaced five minutes before it expires. After a 401 the credential is built anew (its own
//! cache would hand back the refused token) and one fresh token is fetched; a second 401 is a
//! configuration error.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;

use crate::config::{CredentialKind, EventGridAuth};

/// The audience of Event Grid data-plane tokens.
pub const SCOPE: &str = "https://eventgrid.azure.net/.default";
/// Replace a cached token this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Why no credential could be presented.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key is not a valid header value.
    #[error("EVENTGRID_TOPIC_KEY cannot be sent as an HTTP header value")]
    InvalidKey,
    /// The credential could not be built or gave no token.
    #[error("cannot get a Microsoft Entra ID token for Event Grid: {0}")]
    Token(String),
}

/// How requests are authenticated.
pub(crate) enum Auth {
    /// `aeg-sas-key`.
    Key(HeaderValue),
    /// `Authorization: Bearer`.
    Entra(EntraAuth),
}

impl Auth {
    pub(crate) fn new(settings: &EventGridAuth) -> Result<Self, AuthError> {
        Ok(match settings {
            EventGridAuth::Key(key) => {
                let mut v = HeaderValue::from_str(key.expose_secret())
                    .map_err(|_| AuthError::InvalidKey)?;
                v.set_sensitive(true);
                Self::Key(v)
            }
            EventGridAuth::EntraId {
                credential,
                client_id,
            } => Self::Entra(EntraAuth {
                kind: *credential,
                client_id: client_id.clone(),
                state: tokio::sync::Mutex::new(TokenState::default()),
            }),
        })
    }
}

#[derive(Default)]
struct TokenState {
    credential: Option<Arc<dyn TokenCredential>>,
    token: Option<(HeaderValue, azure_core::time::OffsetDateTime)>,
}

/// A cached Entra ID token and the credential that makes it.
pub(crate) struct EntraAuth {
    kind: CredentialKind,
    client_id: Option<String>,
    /// One fetch at a time; callers wait for it rather than all asking the endpoint.
    state: tokio::sync::Mutex<TokenState>,
}

impl EntraAuth {
    fn credential(&self) -> Result<Arc<dyn TokenCredential>, AuthError> {
        let err = |e: azure_core::Error| AuthError::Token(e.to_string());
        Ok(match self.kind {
            CredentialKind::ManagedIdentity => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: self.client_id.clone().map(UserAssignedId::ClientId),
                    ..ManagedIdentityCredentialOptions::default()
                };
                ManagedIdentityCredential::new(Some(options)).map_err(err)?
            }
            CredentialKind::Developer => DeveloperToolsCredential::new(None).map_err(err)?,
        })
    }

    /// The `Authorization` header: the cached token while it has more than five minutes
    /// left, else a new one. `fresh` forces a new credential and token (after a 401).
    pub(crate) async fn header(&self, fresh: bool) -> Result<HeaderValue, AuthError> {
        let mut state = self.state.lock().await;
        let now = azure_core::time::OffsetDateTime::now_utc();
        if !fresh
            && let Some((header, expires_on)) = &state.token
            && (*expires_on - now).whole_seconds()
                > i64::try_from(REFRESH_BEFORE.as_secs()).unwrap_or(300)
        {
            return Ok(header.clone());
        }
        if fresh || state.credential.is_none() {
            state.credential = Some(self.credential()?);
        }
        let credential = state
            .credential
            .clone()
            .ok_or_else(|| AuthError::Token("no credential".into()))?;
        let token = credential
            .get_token(&[SCOPE], None)
            .await
            .map_err(|e| AuthError::Token(crate::telemetry::chain(&e)))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
            .map_err(|_| AuthError::Token("the token is not a valid header value".into()))?;
        header.set_sensitive(true);
        state.token = Some((header.clone(), token.expires_on));
        tracing::debug!(expires_on = %token.expires_on, "Got a Microsoft Entra ID token for Event Grid");
        Ok(header)
    }
}
