use worker_runtime::prelude::*;

struct Opaque;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn opaque_output(payload: u32) -> Result<Opaque, TaskError> {
    let _ = payload;
    Ok(Opaque)
}

fn main() {}
