//! A private task whose generated items are never used, one whose error type is the user's own,
//! and one removed by `#[cfg]`: no warning may come of any.
#![deny(warnings)]

use std::fmt;

use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "non-persistent://t/ns/pings")]
async fn ping(_payload: ()) -> Result<(), TaskError> {
    Ok(())
}

#[derive(Debug)]
struct Rejected;

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected")
    }
}

impl std::error::Error for Rejected {}

#[pulsar_io_task(topic = "q0/t/ns/checks", max_retries = 0)]
async fn check(value: i32) -> Result<String, Rejected> {
    if value < 0 {
        return Err(Rejected);
    }
    Ok(value.to_string())
}

fn main() {
    assert_eq!(check::task().name(), "check");
    assert_eq!(check::config().retry.max_retries, 0);
}

// A `#[cfg]` below the attribute removes the generated items along with the fn.
#[pulsar_io_task(topic = "q1/t/ns/never")]
#[cfg(any())]
async fn never_compiled(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}
