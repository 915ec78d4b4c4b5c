use worker_runtime::prelude::*;
use worker_runtime::CircuitPolicy;

#[pulsar_io_task(
    topic = "q1/t/ns/guarded",
    circuit_failures = 5,
    circuit_failure_rate = 0.5,
    circuit_min_calls = 10,
    circuit_window = "2m",
    circuit_cooldown = "15s",
    circuit_probes = 2
)]
async fn guarded(payload: u32) -> Result<(), TaskError> {
    let _ = payload;
    Ok(())
}

fn main() {
    let circuit: Option<CircuitPolicy> = guarded::config().circuit;
    let circuit = circuit.expect("a breaker");
    assert_eq!(circuit.consecutive_failures, Some(5));
    assert_eq!(circuit.failure_rate, Some(0.5));
    assert_eq!(circuit.min_calls, 10);
    assert_eq!(circuit.window, std::time::Duration::from_secs(120));
    assert_eq!(circuit.cooldown, std::time::Duration::from_secs(15));
    assert_eq!(circuit.probes, 2);
}
