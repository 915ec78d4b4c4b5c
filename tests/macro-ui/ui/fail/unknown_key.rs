use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/events", max_retry = 3)]
async fn typo(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/events", colour = "blue")]
async fn nonsense(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
