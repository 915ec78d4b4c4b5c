use worker_runtime::prelude::*;

#[pulsar_io_task(
    topic = "q1/t/ns/a",
    permission_roles = ["db_writer"],
    credit_type = "db_credits",
    credit_amount = 1,
)]
async fn io_with_db_keys(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
