//! The receiver over real loopback HTTP, driven by a raw HTTP/1.1 client so that every
//! byte on the wire (and its absence) is under the test's control.

mod binary;
mod boundaries;
mod contract;
mod control;
mod faults;
mod hyper_client;
mod recording;
mod support;
