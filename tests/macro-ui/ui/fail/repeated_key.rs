use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", max_retries = 2, topic = "q1/t/ns/b")]
async fn twice(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", timeout = 5, task_timeout = 10)]
async fn alias(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
