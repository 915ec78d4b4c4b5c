use worker_runtime::prelude::*;

struct NotAnError;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn odd_error(payload: u32) -> Result<(), NotAnError> {
    let _ = payload;
    Err(NotAnError)
}

fn main() {}
