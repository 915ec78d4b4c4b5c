use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "persistent://t/ns/events", dlq_topic = "persistent://t/ns/events")]
async fn same_topic(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
