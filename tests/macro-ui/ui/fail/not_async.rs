use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
fn blocking(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
