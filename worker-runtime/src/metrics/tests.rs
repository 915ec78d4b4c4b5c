use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use worker_core::DeadLetterReason;

use super::*;

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line `{line}` in:\n{text}"
    );
}

#[test]
fn counters_are_exact_and_labelled_with_task_and_consumer() {
    let metrics = Metrics::new("host-1");
    let t = metrics.task("ingest", "persistent://a/b/c");
    t.received(5);
    t.ok();
    t.ok();
    t.retried();
    t.dead_lettered(DeadLetterReason::DecodeError);
    t.dead_lettered(DeadLetterReason::RetriesExhausted);
    t.dead_lettered(DeadLetterReason::Forbidden);
    t.timed_out();
    t.panicked();
    t.panicked();
    let text = metrics.encode();
    let l = r#"task="ingest",consumer="host-1""#;
    assert_has(&text, &format!("worker_messages_received_total{{{l}}} 5"));
    assert_has(
        &text,
        &format!(r#"worker_messages_total{{{l},outcome="ok"}} 2"#),
    );
    assert_has(
        &text,
        &format!(r#"worker_messages_total{{{l},outcome="retried"}} 1"#),
    );
    assert_has(
        &text,
        &format!(r#"worker_messages_total{{{l},outcome="dead_lettered"}} 2"#),
    );
    assert_has(
        &text,
        &format!(r#"worker_messages_total{{{l},outcome="forbidden"}} 1"#),
    );
    assert_has(
        &text,
        &format!(r#"worker_dead_letters_total{{{l},reason="decode_error"}} 1"#),
    );
    assert_has(
        &text,
        &format!(r#"worker_dead_letters_total{{{l},reason="forbidden"}} 1"#),
    );
    assert_has(&text, &format!("worker_timeouts_total{{{l}}} 1"));
    assert_has(&text, &format!("worker_panics_total{{{l}}} 2"));
    assert_has(
        &text,
        r#"worker_task_info{task="ingest",topic="persistent://a/b/c",consumer="host-1"} 1"#,
    );
    assert_has(&text, "# TYPE worker_messages_total counter");
    assert_has(&text, "# TYPE worker_handler_duration_seconds histogram");
}

#[test]
fn every_reason_is_pre_registered_at_zero() {
    let metrics = Metrics::new("c");
    let _ = metrics.task("t", "q1/a/b/c");
    let text = metrics.encode();
    for reason in DeadLetterReason::ALL {
        assert_has(
            &text,
            &format!(
                r#"worker_dead_letters_total{{task="t",consumer="c",reason="{}"}} 0"#,
                reason.as_str()
            ),
        );
    }
}

#[test]
fn reason_order_matches_the_core_list() {
    let metrics = Metrics::new("c");
    let t = metrics.task("t", "q1/a/b/c");
    for (i, reason) in DeadLetterReason::ALL.into_iter().enumerate() {
        for _ in 0..=i {
            t.dead_lettered(reason);
        }
    }
    let text = metrics.encode();
    for (i, reason) in DeadLetterReason::ALL.into_iter().enumerate() {
        let line = format!(
            r#"worker_dead_letters_total{{task="t",consumer="c",reason="{}"}} {}"#,
            reason.as_str(),
            i + 1
        );
        assert_has(&text, &line);
    }
}

#[test]
fn histograms_gauges_and_credits() {
    let metrics = Metrics::new("c");
    let t = metrics.task("t", "q1/a/b/c");
    t.handler_duration(Duration::from_millis(3));
    t.handler_duration(Duration::from_millis(250));
    t.handler_duration(Duration::from_secs(1000));
    t.attempt(1);
    t.attempt(1);
    t.attempt(4);
    t.rate_limit_wait(Duration::from_millis(1500));
    t.rate_limit_wait(Duration::ZERO);
    t.credits_charged("db_credits", 2);
    t.credits_charged("db_credits", 3);
    t.credits_charged("api_calls", 1);
    let first = t.in_flight();
    let second = t.in_flight();
    drop(first);
    let text = metrics.encode();
    let d = "worker_handler_duration_seconds";
    assert_has(&text, &format!(r#"{d}_bucket{{task="t",le="0.0025"}} 0"#));
    assert_has(&text, &format!(r#"{d}_bucket{{task="t",le="0.005"}} 1"#));
    assert_has(&text, &format!(r#"{d}_bucket{{task="t",le="0.25"}} 2"#));
    assert_has(&text, &format!(r#"{d}_bucket{{task="t",le="300"}} 2"#));
    assert_has(&text, &format!(r#"{d}_bucket{{task="t",le="+Inf"}} 3"#));
    assert_has(&text, &format!(r#"{d}_sum{{task="t"}} 1000.253"#));
    assert_has(&text, &format!(r#"{d}_count{{task="t"}} 3"#));
    assert_has(&text, r#"worker_attempts_bucket{task="t",le="1"} 2"#);
    assert_has(&text, r#"worker_attempts_bucket{task="t",le="3"} 2"#);
    assert_has(&text, r#"worker_attempts_bucket{task="t",le="5"} 3"#);
    assert_has(&text, r#"worker_attempts_sum{task="t"} 6"#);
    assert_has(&text, r#"worker_in_flight{task="t"} 1"#);
    assert_has(
        &text,
        r#"worker_rate_limit_wait_seconds_total{task="t"} 1.5"#,
    );
    assert_has(&text, r#"worker_rate_limit_waits_total{task="t"} 1"#);
    assert_has(
        &text,
        r#"worker_credits_charged_total{task="t",credit_type="db_credits"} 5"#,
    );
    assert_has(
        &text,
        r#"worker_credits_charged_total{task="t",credit_type="api_calls"} 1"#,
    );
    drop(second);
    assert_has(&metrics.encode(), r#"worker_in_flight{task="t"} 0"#);
}

#[test]
fn task_registration_is_idempotent_and_labels_are_escaped() {
    let metrics = Metrics::new("we\"ird\\name");
    let a = metrics.task("t", "q1/a/b/c");
    let b = metrics.task("t", "q1/x/y/z");
    a.ok();
    b.ok();
    let text = metrics.encode();
    assert_has(
        &text,
        r#"worker_messages_total{task="t",consumer="we\"ird\\name",outcome="ok"} 2"#,
    );
    assert_eq!(text.matches("worker_task_info{").count(), 1);
    assert!(text.contains(r#"topic="q1/a/b/c""#));
}

#[test]
fn readiness_is_exposed() {
    let metrics = Metrics::new("c");
    assert!(!metrics.is_ready());
    assert_has(&metrics.encode(), r#"worker_ready{consumer="c"} 0"#);
    metrics.set_ready(true);
    assert!(metrics.is_ready());
    assert_has(&metrics.encode(), r#"worker_ready{consumer="c"} 1"#);
}

#[test]
fn every_sample_line_is_well_formed() {
    let metrics = Metrics::new("c");
    let t = metrics.task("t", "q1/a/b/c");
    t.handler_duration(Duration::from_micros(7));
    t.credits_charged("x", 1);
    for line in metrics.encode().lines() {
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP worker_") || line.starts_with("# TYPE worker_"));
            continue;
        }
        let (_, value) = line.rsplit_once(' ').expect("a sample has a value");
        assert!(value.parse::<f64>().is_ok(), "bad value in `{line}`");
    }
}

/// Sends one HTTP/1.1 request and returns the status line and the body.
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn http_endpoints_answer_and_stop_on_cancel() {
    let metrics = Metrics::new("c");
    metrics.task("t", "q1/a/b/c").ok();
    let server = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(metrics.clone(), shutdown.clone()));

    let (status, head, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    assert!(body.contains(r#"worker_messages_total{task="t",consumer="c",outcome="ok"} 1"#));

    let (status, _, body) = get(addr, "GET", "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    let (status, _, _) = get(addr, "GET", "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    metrics.set_ready(true);
    let (status, _, _) = get(addr, "GET", "/readyz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    let (status, _, _) = get(addr, "GET", "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, head, _) = get(addr, "POST", "/metrics").await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(head.to_ascii_lowercase().contains("allow: get, head"));

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), serving).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}
