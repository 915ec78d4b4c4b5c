//! The bridge's forwarding throughput against a raw loop doing the same reads and writes with the
//! same clients, in one process, run pairs interleaved (bridge first in even runs, raw first in odd
//! ones), on a redis-server and a Pulsar standalone of the bench's own.
//!
//! Cases, each draining N messages (`BENCH_BRIDGE_MESSAGES`, 20,000) filled beforehand:
//! - **list → pulsar**: a plain Valkey list of 256-byte JSON items to a Pulsar topic. Raw loop: take
//!   a batch with the same `LMOVE` script into a processing list, send every item with one
//!   pulsar-rs producer (all in flight, then every receipt awaited), `LREM` the batch in a pipeline.
//! - **stream → stream**: a Valkey stream topic to another. Raw loop: `XREADGROUP COUNT n`,
//!   `XADD` each entry's fields in a pipeline, `XACK` the batch.
//! - **celery → stream**: a Celery queue (kombu envelopes, as `send_task` writes them) to the
//!   stream topic of a Rust task. Raw loop: take a batch into a processing list, decode each
//!   envelope with the same codec, `XADD` the calls in a pipeline, `LREM` the batch.
//!
//! A side is done when its source holds nothing and nothing waits in its processing list or
//! pending entries. It prints messages per second per side, medians with [min–max] over
//! `BENCH_RUNS` (3) pairs, and bridge ÷ raw per pair. `BENCH_BRIDGE_CASES` narrows the cases
//! (`list_pulsar,stream_stream,celery_stream`). Before the Pulsar case, one unmeasured drain of
//! each side warms the broker's JVM up.
//!
//! ```text
//! cargo bench -p integration-tests --bench bridge_forwarding
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use integration_tests::brokers::{PulsarStandalone, RedisServer};
use redis::AsyncCommands as _;
use serde_json::json;
use worker_runtime::bridge::{Bridge, BridgeConfig};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};
use worker_runtime::celery::{self, Outgoing};
use worker_runtime::metrics::Metrics;
use worker_runtime::worker::CancellationToken;
use worker_runtime::{props, Broker, Message, Topic};

const TAKE_SCRIPT: &str = r#"
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not item then break end
  taken[i] = item
end
return taken
"#;

/// How many items the raw loops take per round: the bridge's default buffer.
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    ListPulsar,
    StreamStream,
    CeleryStream,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::ListPulsar => "list_pulsar",
            Case::StreamStream => "stream_stream",
            Case::CeleryStream => "celery_stream",
        }
    }
}

struct Env {
    redis: RedisServer,
    pulsar: Option<PulsarStandalone>,
    valkey: Arc<ValkeyBroker>,
    connection: redis::aio::MultiplexedConnection,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench() -> anyhow::Result<()> {
    let messages = env_usize("BENCH_BRIDGE_MESSAGES", 20_000);
    let runs = env_usize("BENCH_RUNS", 3);
    let wanted = std::env::var("BENCH_BRIDGE_CASES")
        .unwrap_or_else(|_| "list_pulsar,stream_stream,celery_stream".into());
    let cases: Vec<Case> = [Case::ListPulsar, Case::StreamStream, Case::CeleryStream]
        .into_iter()
        .filter(|c| wanted.split(',').any(|w| w.trim() == c.name()))
        .collect();
    let Some(redis) = RedisServer::start() else {
        anyhow::bail!("redis-server is needed");
    };
    let pulsar = if cases.contains(&Case::ListPulsar) {
        let started = tokio::task::spawn_blocking(|| {
            let server = PulsarStandalone::start()?;
            server.ensure_namespace_of("persistent://bench/bridge/any");
            Some(server)
        })
        .await?;
        Some(started.ok_or_else(|| anyhow::anyhow!("the Pulsar standalone is needed"))?)
    } else {
        None
    };
    let valkey = Arc::new(ValkeyBroker::connect(ValkeyOptions::new(redis.url())).await?);
    let connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let env = Env {
        redis,
        pulsar,
        valkey,
        connection,
    };
    println!("bridge forwarding: {messages} messages per drain, {runs} run pairs");
    for case in cases {
        if case == Case::ListPulsar {
            // One unmeasured drain of each side warms the broker's JVM up.
            for (bridge_side, tag) in [(true, "warm-b"), (false, "warm-r")] {
                let tag = format!("{}-{tag}", case.name());
                fill(&env, case, &tag, 5_000).await?;
                if bridge_side {
                    drain_with_bridge(&env, case, &tag, 5_000).await?;
                } else {
                    drain_raw(&env, case, &tag, 5_000).await?;
                }
            }
        }
        let mut bridge_rates = Vec::new();
        let mut raw_rates = Vec::new();
        for run in 0..runs {
            let order: [bool; 2] = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for bridge_side in order {
                let tag = format!(
                    "{}-{run}-{}",
                    case.name(),
                    if bridge_side { "b" } else { "r" }
                );
                fill(&env, case, &tag, messages).await?;
                let started = Instant::now();
                if bridge_side {
                    drain_with_bridge(&env, case, &tag, messages).await?;
                } else {
                    drain_raw(&env, case, &tag, messages).await?;
                }
                let rate = messages as f64 / started.elapsed().as_secs_f64();
                if bridge_side {
                    bridge_rates.push(rate);
                } else {
                    raw_rates.push(rate);
                }
            }
        }
        let ratios: Vec<f64> = bridge_rates
            .iter()
            .zip(&raw_rates)
            .map(|(b, r)| b / r)
            .collect();
        println!(
            "{:<14} bridge {} msgs/s  raw {} msgs/s  bridge/raw {}",
            case.name(),
            spread(&bridge_rates, 0),
            spread(&raw_rates, 0),
            spread(&ratios, 2)
        );
    }
    drop(env.redis);
    Ok(())
}

/// `median [min–max]`.
fn spread(values: &[f64], digits: usize) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    format!(
        "{median:.digits$} [{:.digits$}–{:.digits$}]",
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

fn source_stream(tag: &str) -> String {
    format!("q1/bench/bridge/in-{tag}")
}

fn payload(n: usize) -> String {
    // 256 bytes of JSON.
    let body = "x".repeat(256 - 30);
    format!("{{\"n\":{n:>8},\"body\":\"{body}\"}}")
}

async fn fill(env: &Env, case: Case, tag: &str, messages: usize) -> anyhow::Result<()> {
    match case {
        Case::ListPulsar | Case::CeleryStream => {
            let list = env.valkey.list_queue(&format!("list-{tag}"), "filler");
            for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
                let items: Vec<Vec<u8>> = chunk
                    .iter()
                    .map(|n| match case {
                        Case::CeleryStream => celery::encode(&Outgoing {
                            task: "bench.tasks.add",
                            id: &format!("c-{tag}-{n}"),
                            args: &json!([n, 1]),
                            kwargs: &json!({}),
                            queue: "celery",
                            eta: None,
                            origin: "bench",
                        }),
                        _ => payload(*n).into_bytes(),
                    })
                    .collect();
                let items: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
                list.push(&items).await?;
            }
        }
        Case::StreamStream => {
            let topic = Topic::parse(&source_stream(tag))?;
            for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
                let sends = chunk.iter().map(|n| {
                    let message = Message::new(payload(*n))
                        .with_property(props::MESSAGE_ID, format!("s-{n}"));
                    env.valkey.publish(&topic, message)
                });
                for result in join_all(sends).await {
                    result?;
                }
            }
        }
    }
    Ok(())
}

/// The bridge config of one case, reading `tag`'s source.
fn config(env: &Env, case: Case, tag: &str) -> anyhow::Result<BridgeConfig> {
    let pulsar_url = env.pulsar.as_ref().map(|p| p.url()).unwrap_or_default();
    let route = match case {
        Case::ListPulsar => format!(
            "source = {{ broker = \"cache\", list = \"list-{tag}\" }}\ntarget = {{ broker = \"events\", topic = \"persistent://bench/bridge/out-{tag}\" }}"
        ),
        Case::StreamStream => format!(
            "source = {{ broker = \"cache\", topic = \"{}\" }}\ntarget = {{ broker = \"cache\", topic = \"q1/bench/bridge/out-{tag}\" }}",
            source_stream(tag)
        ),
        Case::CeleryStream => format!(
            "source = {{ broker = \"cache\", celery_queue = \"list-{tag}\", tasks = {{ \"bench.tasks.add\" = \"q1/bench/bridge/out-{tag}\" }} }}\ntarget = {{ broker = \"cache\" }}"
        ),
    };
    let events = if case == Case::ListPulsar {
        format!("[bridge.brokers.events]\nbackend = \"pulsar\"\nurl = \"{pulsar_url}\"\n\n")
    } else {
        String::new()
    };
    let text = format!(
        "[bridge.brokers.cache]\nbackend = \"valkey\"\nurl = \"{}\"\n\n{events}[bridge.routes.r]\n{route}\n",
        env.redis.url()
    );
    Ok(BridgeConfig::parse(&text, "bench.toml")?)
}

async fn drain_with_bridge(
    env: &Env,
    case: Case,
    tag: &str,
    messages: usize,
) -> anyhow::Result<()> {
    let config = config(env, case, tag)?;
    let bridge = Bridge::from_config(&config, &[], "bench-bridge", &Metrics::new("bench")).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(bridge.run(stop.clone(), Duration::from_secs(10)));
    wait_drained(env, case, tag, "bench-bridge", "bridge-r", messages).await?;
    stop.cancel();
    running.await?;
    Ok(())
}

/// Waits until `tag`'s source and its reader's processing list or pending entries are empty.
async fn wait_drained(
    env: &Env,
    case: Case,
    tag: &str,
    reader: &str,
    group: &str,
    messages: usize,
) -> anyhow::Result<()> {
    let mut connection = env.connection.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: usize = match case {
            Case::ListPulsar | Case::CeleryStream => {
                let key = format!("list-{tag}");
                let waiting: usize = connection.llen(&key).await?;
                let processing: usize = connection
                    .llen(format!("{key}:processing:{reader}"))
                    .await?;
                waiting + processing
            }
            Case::StreamStream => {
                let stream = format!("wr:{{bench/bridge/in-{tag}}}");
                let groups: redis::Value = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query_async(&mut connection)
                    .await?;
                group_left(&groups, group).unwrap_or(messages)
            }
        };
        if left == 0 {
            return Ok(());
        }

        anyhow::ensure!(Instant::now() < deadline, "{} left after 600 s", left);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A group's `lag` plus `pending` from an `XINFO GROUPS` reply.
fn group_left(groups: &redis::Value, group: &str) -> Option<usize> {
    let redis::Value::Array(groups) = groups else {
        return None;
    };
    for entry in groups {
        let fields: Vec<(String, redis::Value)> = match entry {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|pair| match (&pair[0], pair.get(1)) {
                    (redis::Value::BulkString(name), Some(value)) => {
                        Some((String::from_utf8_lossy(name).into_owned(), value.clone()))
                    }
                    _ => None,
                })
                .collect(),
            redis::Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(name, value)| match name {
                    redis::Value::BulkString(name) => {
                        Some((String::from_utf8_lossy(name).into_owned(), value.clone()))
                    }
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let is_group =
            matches!(get("name"), Some(redis::Value::BulkString(name)) if name == group.as_bytes());
        if !is_group {
            continue;
        }
        let number = |v: Option<redis::Value>| match v {
            Some(redis::Value::Int(n)) => Some(usize::try_from(n).ok()?),
            _ => None,
        };
        return Some(number(get("lag"))? + number(get("pending"))?);
    }
    None
}

async fn drain_raw(env: &Env, case: Case, tag: &str, messages: usize) -> anyhow::Result<()> {
    match case {
        Case::ListPulsar => raw_list_to_pulsar(env, tag, messages).await,
        Case::StreamStream => raw_stream_to_stream(env, tag, messages).await,
        Case::CeleryStream => raw_celery_to_stream(env, tag, messages).await,
    }
}

async fn take(
    connection: &mut redis::aio::MultiplexedConnection,
    script: &redis::Script,
    key: &str,
    processing: &str,
) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok(script
        .key(key)
        .key(processing)
        .arg(BATCH)
        .invoke_async(connection)
        .await?)
}

async fn remove(
    connection: &mut redis::aio::MultiplexedConnection,
    processing: &str,
    items: &[Vec<u8>],
) -> anyhow::Result<()> {
    let mut pipe = redis::pipe();
    for item in items {
        pipe.cmd("LREM").arg(processing).arg(-1).arg(item).ignore();
    }
    pipe.query_async::<()>(connection).await?;
    Ok(())
}

async fn raw_list_to_pulsar(env: &Env, tag: &str, messages: usize) -> anyhow::Result<()> {
    let pulsar = env
        .pulsar
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no pulsar"))?;
    let client = pulsar::Pulsar::builder(pulsar.url(), pulsar::TokioExecutor)
        .build()
        .await?;
    let mut producer = client
        .producer()
        .with_topic(format!("persistent://bench/bridge/out-{tag}"))
        // As the backend's producers: wait for room in the connection's queue.
        .with_options(pulsar::ProducerOptions {
            block_queue_if_full: true,
            ..pulsar::ProducerOptions::default()
        })
        .build()
        .await?;
    let script = redis::Script::new(TAKE_SCRIPT);
    let mut connection = env.connection.clone();
    let key = format!("list-{tag}");
    let processing = format!("{key}:processing:raw");
    let mut forwarded = 0;
    while forwarded < messages {
        let items = take(&mut connection, &script, &key, &processing).await?;
        let mut receipts = Vec::with_capacity(items.len());
        for item in &items {
            receipts.push(producer.send_non_blocking(item.clone()).await?);
        }
        for receipt in receipts {
            receipt.await?;
        }
        remove(&mut connection, &processing, &items).await?;
        forwarded += items.len();
    }
    Ok(())
}

async fn raw_stream_to_stream(env: &Env, tag: &str, messages: usize) -> anyhow::Result<()> {
    let mut connection = env.connection.clone();
    let source = format!("wr:{{bench/bridge/in-{tag}}}");
    let target = format!("wr:{{bench/bridge/out-{tag}}}");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&source)
        .arg("raw")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut connection)
        .await?;
    let mut forwarded = 0;
    while forwarded < messages {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("raw")
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&source)
            .arg(">")
            .query_async(&mut connection)
            .await?;
        let entries: Vec<redis::streams::StreamId> =
            reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if entries.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for entry in &entries {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&target).arg("*");
            for (field, value) in &entry.map {
                let redis::Value::BulkString(bytes) = value else {
                    continue;
                };
                cmd.arg(field).arg(bytes);
            }
            pipe.add_command(cmd).ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let _: usize = redis::cmd("XACK")
            .arg(&source)
            .arg("raw")
            .arg(&ids)
            .query_async(&mut connection)
            .await?;
        forwarded += entries.len();
    }
    Ok(())
}

async fn raw_celery_to_stream(env: &Env, tag: &str, messages: usize) -> anyhow::Result<()> {
    let script = redis::Script::new(TAKE_SCRIPT);
    let mut connection = env.connection.clone();
    let key = format!("list-{tag}");
    let processing = format!("{key}:processing:raw");
    let target = format!("wr:{{bench/bridge/out-{tag}}}");
    let mut forwarded = 0;
    while forwarded < messages {
        let items = take(&mut connection, &script, &key, &processing).await?;
        let mut pipe = redis::pipe();
        for item in &items {
            let call = celery::decode(item)?;
            let props = json!({ props::MESSAGE_ID: call.id, celery::TASK_PROPERTY: call.task });
            pipe.cmd("XADD")
                .arg(&target)
                .arg("*")
                .arg("payload")
                .arg(call.payload())
                .arg("props")
                .arg(props.to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
        remove(&mut connection, &processing, &items).await?;
        forwarded += items.len();
    }
    Ok(())
}
