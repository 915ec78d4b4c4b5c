use worker_runtime::prelude::*;

#[pulsar_io_task(topic = "q1/t/ns/a")]
async fn three(payload: u32, ctx: TaskContext, extra: bool, more: u8) -> Result<(), TaskError> {
    let _ = (payload, ctx, extra, more);
    Ok(())
}

fn main() {}
