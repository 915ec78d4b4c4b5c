use std::rc::Rc;

use worker_runtime::prelude::*;

async fn pause() {}

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn holds_rc(payload: u32) -> Result<(), TaskError> {
    let shared = Rc::new(payload);
    pause().await;
    let _ = shared;
    Ok(())
}

fn main() {}
