//! Domain types: validated input and the events it produces. No I/O.

pub mod change;
pub mod document;
pub mod event;
pub mod stream_change;

pub use change::{EventTypes, Operation, Revision};
pub use document::{DocumentId, InputError, NewDocument};
pub use event::{EventId, MAX_EVENT_BYTES, OutboxEvent};
