use worker_runtime::prelude::*;

#[pulsar_db_task(topic = "q1/t/ns/a", credit_type = "db_credits")]
async fn type_only(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_db_task(topic = "q1/t/ns/a", credit_amount = 3)]
async fn amount_only(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
