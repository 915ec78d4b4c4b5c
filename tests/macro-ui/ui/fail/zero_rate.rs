use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", rate_limit = 0)]
async fn zero_rate(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", rate_limit = -5)]
async fn negative_rate(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
