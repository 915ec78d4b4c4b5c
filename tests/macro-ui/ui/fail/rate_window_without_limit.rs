use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a", rate_window = 60)]
async fn window_only(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
