//! 16500 without a `RetryAfterMs` hint: Cosmos DB for MongoDB RU does not always include one
//! (server-side retry disabled, some gateway paths), and a client must still back off.

use crate::cosmos::CosmosError;

impl CosmosError {
    /// Error 16500 in Cosmos DB's text layout, with no `RetryAfterMs`.
    pub(crate) fn too_many_requests_unhinted(activity_id: &str) -> Self {
        let mut e = Self::too_many_requests(0, activity_id);
        e.errmsg = e.errmsg.replacen("RetryAfterMs=0, ", "", 1);
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unhinted_throttle_error_has_no_retry_after_ms() {
        let e = CosmosError::too_many_requests_unhinted("a-1");
        assert!(
            e.errmsg.starts_with("Error=16500, Details='"),
            "{}",
            e.errmsg
        );
        assert!(!e.errmsg.contains("RetryAfterMs"));
    }
}
