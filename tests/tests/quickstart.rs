//! The newcomer's path: the quickstart binary, run as a user runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::brokers::free_port;
use integration_tests::processes::{example_binary, http_get, metric_sum, ChildGuard};

#[test]
fn the_demo_shows_every_outcome_and_exits_by_itself() {
    let mut child = ChildGuard::spawn(
        Command::new(example_binary("quickstart"))
            .arg("--demo")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = child
        .wait_for_exit(Duration::from_secs(120))
        .expect("the demo exits by itself");
    let mut stdout = String::new();
    if let Some(mut out) = child.0.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read the demo's output");
    }
    println!("{stdout}");
    assert!(status.success(), "the demo failed: {status}");
    for expected in [
        "ingest_data    received 24, succeeded 13, retried  8, dead-lettered 3",
        "write_records  received  3, succeeded  1, retried  0, dead-lettered 2",
        "decode_error          after 1 attempt(s)",
        "retries_exhausted     after 4 attempt(s): event 5 failed on attempt 4",
        "retries_exhausted     after 4 attempt(s): timed out after 1s",
        "insufficient_credits  after 1 attempt(s)",
        "forbidden             after 1 attempt(s)",
        "on attempt 3",
        "alice  10 → 8",
        "bob     1 → 1",
    ] {
        assert!(stdout.contains(expected), "the summary lacks {expected:?}");
    }
}

#[test]
fn as_a_worker_it_serves_metrics_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let mut child = ChildGuard::spawn(
        Command::new(example_binary("quickstart"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--consumer-name",
                "qs-test",
            ])
            .args(["--log-format", "json", "--shutdown-grace", "5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ok = 0.0;
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(port, "/metrics") {
            ok = metric_sum(
                &body,
                "worker_messages_total",
                &["consumer=\"qs-test\"", "outcome=\"ok\""],
            );
            if ok >= 14.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok >= 14.0, "the demo traffic was handled ({ok} ok so far)");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));

    child.terminate();
    let status = child
        .wait_for_exit(Duration::from_secs(30))
        .expect("the worker stops after SIGTERM");
    assert!(status.success(), "a graceful stop exits 0, got {status}");
}
