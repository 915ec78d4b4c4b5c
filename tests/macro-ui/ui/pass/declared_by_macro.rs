//! Tasks written by a `macro_rules!` macro, with values passed in as fragments, and a task whose
//! return type is a `Result<T>` alias.
#![deny(warnings)]

use worker_runtime::prelude::*;

macro_rules! echo_task {
    ($name:ident, $topic:literal, $retries:expr) => {
        #[pulsar_io_task(topic = $topic, max_retries = $retries)]
        async fn $name(payload: String, ctx: TaskContext) -> Result<String, std::io::Error> {
            if ctx.attempt() > 10 {
                return Err(std::io::Error::other("too many attempts"));
            }
            Ok(payload)
        }
    };
}

echo_task!(echo, "q1/t/ns/echo", 7);

#[pulsar_io_task(topic = "q1/t/ns/sizes")]
async fn size(payload: Vec<u8>) -> std::io::Result<usize> {
    Ok(payload.len())
}

fn main() {
    let config = echo::config();
    assert_eq!(config.topic.to_string(), "q1/t/ns/echo");
    assert_eq!(config.retry.max_retries, 7);
    assert_eq!(size::task().name(), "size");
}
