use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", timeout = "10 parsecs", retry_delay = "1.5s", max_delay = "")]
async fn bad_durations(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
