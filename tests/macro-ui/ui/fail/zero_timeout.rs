use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", timeout = 0)]
async fn zero_timeout(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", task_timeout = -30)]
async fn negative_timeout(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
