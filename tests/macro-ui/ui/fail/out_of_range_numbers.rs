use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", backoff = 0.5, jitter = 1.0, concurrency = 0, rate_limit = 4294967296)]
async fn out_of_range(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
