use worker_runtime::prelude::*;

struct NotDecodable {
    id: u64,
}

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn opaque(payload: NotDecodable) -> Result<(), TaskError> {
    let _ = payload.id;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn borrowed(payload: &str) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
