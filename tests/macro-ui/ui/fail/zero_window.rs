use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", rate_limit = 10, rate_window = 0)]
async fn zero_window(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a", rate_limit = 10, rate_window = "0ms")]
async fn zero_window_text(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
