use worker_runtime::prelude::*;

#[pulsar_io_task(topic "q1/t/ns/a")]
async fn missing_equals(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/a" max_retries = 3)]
async fn missing_comma(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

// A syntax error in the arguments does not hide the problems of the fn.
#[pulsar_io_task(topic = )]
fn missing_value(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
