use worker_runtime::prelude::*;

#[pulsar_db_task(topic = "q1/t/ns/a", permission_roles = [])]
async fn no_roles(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_db_task(topic = "q1/t/ns/a", permission_roles = ["db_writer", "", admin, "db_writer"])]
async fn bad_roles(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
