//! End-to-end tests on real parts: a real mongod replica set (started by `make test`), the
//! project's Event Grid receiver over loopback HTTP, and the real `handler` binary driven the
//! way the Azure Functions host drives it.

#![expect(
    unreachable_pub,
    reason = "test support is a private module tree; `pub` marks what tests may use"
)]
#![expect(
    clippy::unwrap_used,
    reason = "test support panics with the location on failure, which is what a test wants"
)]

mod support;

mod auth_schema;
mod change_stream;
mod change_stream_ops;
mod change_stream_ru;
mod cli;
mod cosmos;
mod doctor;
mod embedded;
mod envelope;
mod lifecycle;
mod make_run;
mod metrics;
mod openapi;
mod ops;
mod ordering;
mod overload;
mod push;
mod read_document;
mod relay;
mod replay;
mod retention;
mod settings_sync;
mod sharded;
mod shutdown;
mod standalone;
mod status_browser;
mod status_page;
mod store;
mod test_databases;
mod write_document;
