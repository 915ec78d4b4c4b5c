use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", retry_delay = "5s", max_delay = "2s")]
async fn cap_below_first(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", retry_delay = "20m")]
async fn first_above_default_cap(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
