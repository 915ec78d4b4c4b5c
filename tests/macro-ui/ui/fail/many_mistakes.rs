use worker_runtime::prelude::*;

// Every mistake in one attribute and its fn is reported in one compile.
#[pulsar_db_task(
    topic = "q1/t/ns",
    max_retries = -2,
    timeout = 0,
    rate_window = "1m",
    backoff = 0.5,
    consumer_type = "sharded",
    credit_type = "db_credits",
    max_retries = 4,
    colour = "red",
)]
fn everything_wrong<T>(payload: T, ctx: TaskContext, extra: u8) -> Option<()> {
    let _ = (payload, ctx, extra);
    None
}

fn main() {}
