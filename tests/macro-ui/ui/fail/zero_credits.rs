use worker_runtime::prelude::*;

#[pulsar_db_task(topic = "q1/t/ns/a", credit_type = "db_credits", credit_amount = 0)]
async fn zero_credits(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_db_task(topic = "q1/t/ns/a", credit_type = "db_credits", credit_amount = -2)]
async fn negative_credits(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
