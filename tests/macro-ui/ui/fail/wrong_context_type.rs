use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn two_payloads(payload: u32, other: u32) -> Result<(), TaskError> {
    let _ = (payload, other);
    Ok(())
}

fn main() {}
