//! A local Event Grid receiver per test, in-process, on its own port.

pub use eventgrid_receiver::{FailRule, Fault, ReceiverConfig, RunningReceiver};

pub const KEY: &str = eventgrid_receiver::DEFAULT_KEY;

pub async fn start() -> RunningReceiver {
    eventgrid_receiver::start_local(ReceiverConfig::default())
        .await
        .expect("start the receiver")
}

/// Settings that point a handler or relay at `receiver`.
pub fn app_settings(receiver: &RunningReceiver) -> Vec<(String, String)> {
    vec![
        ("EVENTGRID_TOPIC_ENDPOINT".into(), receiver.endpoint()),
        ("EVENTGRID_TOPIC_KEY".into(), KEY.into()),
    ]
}
