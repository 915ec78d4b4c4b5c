use worker_runtime::prelude::*;

// A cooldown with nothing that opens the circuit, and a rate outside (0, 1].
#[pulsar_io_task(topic = "q1/t/ns/a", circuit_cooldown = "10s")]
async fn cooldown_only(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/b", circuit_failure_rate = 1.5, circuit_probes = 0)]
async fn bad_rate(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

#[pulsar_io_task(topic = "q1/t/ns/c", circuit_failures = 5, circuit_window = "1m")]
async fn window_without_rate(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {}
