use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn generic<T: serde::de::DeserializeOwned>(payload: T) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn with_lifetime<'a>(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
