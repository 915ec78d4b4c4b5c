use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", max_retries = -1)]
async fn negative_retries(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
