use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn nothing() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
