use worker_runtime::prelude::*;

#[pulsar_io_task]
async fn no_args(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(max_retries = 1)]
async fn no_topic(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
