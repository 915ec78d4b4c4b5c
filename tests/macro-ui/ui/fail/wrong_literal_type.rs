use worker_runtime::prelude::*;

#[pulsar_io_task(
    topic = q1,
    max_retries = "3",
    backoff = "2",
    timeout = 1.5,
    concurrency = 2.0,
    consumer_type = shared,
)]
async fn wrong_types(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_db_task(topic = "q1/t/ns/a", permission_roles = "db_writer")]
async fn roles_not_array(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
