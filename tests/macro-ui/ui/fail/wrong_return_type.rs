use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn returns_option(payload: u32) -> Option<u32> {
    Some(payload)
}

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn returns_nothing(payload: u32) {
    let _ = payload;
}

fn main() {}
