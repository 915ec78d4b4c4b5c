use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "kafka://t/ns/events")]
async fn unknown_form(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "persistent://t/events")]
async fn two_segments(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", dlq_topic = "q1/t/ns/bad name")]
async fn bad_dlq(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
