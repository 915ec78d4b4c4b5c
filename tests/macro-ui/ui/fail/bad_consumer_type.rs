use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", consumer_type = "round_robin", initial_position = "newest")]
async fn bad_enums(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
