//! Valkey: the framework worker on [`ValkeyBroker`] against a raw loop of the same `redis` crate on
//! the same `redis-server` — `XREADGROUP` a batch, decode each payload's JSON, run the handler,
//! `XACK` the batch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use integration_tests::brokers::RedisServer;
use redis::aio::MultiplexedConnection;
use redis::Value;
use worker_runtime::broker::valkey::{TopicKeys, ValkeyBroker, ValkeyOptions};
use worker_runtime::worker::CancellationToken;
use worker_runtime::{Broker, Topic};

use crate::probe::{Event, Handler};
use crate::{Consumer, Side, Spec};

/// The group the raw loop reads as.
const RAW_GROUP: &str = "raw";

pub struct Valkey {
    server: RedisServer,
    producer: Arc<ValkeyBroker>,
}

impl Valkey {
    /// Starts a private `redis-server` (append-only file, fsync every second), or `None` if it is
    /// not installed.
    pub async fn start() -> anyhow::Result<Option<Valkey>> {
        let Some(server) = RedisServer::start() else {
            return Ok(None);
        };
        let producer = Arc::new(ValkeyBroker::connect(ValkeyOptions::new(server.url())).await?);
        Ok(Some(Valkey { server, producer }))
    }

    async fn connection(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.server.url())?;
        // Longer than the raw loop's blocking reads wait on the server.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}

impl crate::Backend for Valkey {
    fn name(&self) -> &'static str {
        "valkey"
    }

    fn broker_pid(&self) -> u32 {
        self.server.pid().unwrap_or(0)
    }

    fn producer(&self) -> Arc<dyn Broker> {
        self.producer.clone()
    }

    async fn prepare(&self, side: Side, spec: &Spec, run: u64) -> anyhow::Result<Topic> {
        let mut connection = self.connection().await?;
        // Only one run's data at a time on the server.
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut connection)
            .await?;
        let topic = Topic::parse(&format!("q1/bench/valkey/r{run}"))?;
        // The group exists before the fill, so that the fill waits for it (the framework would
        // create the same group, from the start of the stream, when it subscribes).
        let group = match side {
            Side::Framework => spec.handler.name(),
            Side::Raw => RAW_GROUP,
        };
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(TopicKeys::of(&topic).stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut connection)
            .await?;
        Ok(topic)
    }

    async fn start(&self, side: Side, spec: &Spec, topic: &Topic) -> anyhow::Result<Consumer> {
        match side {
            Side::Framework => {
                let broker = ValkeyBroker::connect(ValkeyOptions::new(self.server.url())).await?;
                Consumer::framework(Arc::new(broker), spec, topic, "bench")
            }
            Side::Raw => {
                let connection = self.connection().await?;
                let stream = TopicKeys::of(topic).stream;
                let stop = CancellationToken::new();
                let handle = tokio::spawn(raw_loop(connection, stream, spec.clone(), stop.clone()));
                Ok(Consumer::new(stop, handle))
            }
        }
    }

    async fn unacked(&self, side: Side, spec: &Spec, topic: &Topic) -> anyhow::Result<u64> {
        let group = match side {
            Side::Framework => spec.handler.name(),
            Side::Raw => RAW_GROUP,
        };
        let mut connection = self.connection().await?;
        let reply: Value = redis::cmd("XPENDING")
            .arg(TopicKeys::of(topic).stream)
            .arg(group)
            .query_async(&mut connection)
            .await?;
        match reply {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(count)) => Ok(*count as u64),
                other => anyhow::bail!("unexpected XPENDING reply {other:?}"),
            },
            other => anyhow::bail!("unexpected XPENDING reply {other:?}"),
        }
    }
}

/// The raw consumer: read a batch, handle it (the 1 ms handler `concurrency` at a time), ack it,
/// until stopped.
async fn raw_loop(
    mut connection: MultiplexedConnection,
    stream: String,
    spec: Spec,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(RAW_GROUP)
        .arg("raw-1")
        .arg("COUNT")
        .arg(spec.raw_batch)
        .arg("BLOCK")
        .arg(500)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">");
    loop {
        let reply: Value = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            reply = read.query_async(&mut connection) => reply.context("XREADGROUP")?,
        };
        let entries = entries(reply)?;
        if entries.is_empty() {
            continue;
        }
        let mut ids = Vec::with_capacity(entries.len());
        let mut events = Vec::with_capacity(entries.len());
        for (id, payload) in entries {
            match serde_json::from_slice::<Event>(&payload) {
                Ok(event) => events.push(event),
                Err(error) => eprintln!("raw valkey loop: undecodable payload in {id}: {error}"),
            }
            ids.push(id);
        }
        match spec.handler {
            Handler::Noop => {
                for event in events {
                    Handler::Noop.run(event).await;
                }
            }
            Handler::Sleep1ms => {
                futures_util::stream::iter(events)
                    .for_each_concurrent(spec.concurrency, |event| Handler::Sleep1ms.run(event))
                    .await;
            }
        }
        redis::cmd("XACK")
            .arg(&stream)
            .arg(RAW_GROUP)
            .arg(&ids)
            .query_async::<i64>(&mut connection)
            .await
            .context("XACK")?;
    }
}

/// `(id, payload)` of each entry of an `XREADGROUP` reply (RESP2: `[[stream, [[id, [f, v, …]],
/// …]]]`), or none when the read timed out.
fn entries(reply: Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => anyhow::bail!("unexpected read reply {other:?}"),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            anyhow::bail!("a stream of the reply is not an array");
        };
        let Some(Value::Array(list)) = pair.pop() else {
            anyhow::bail!("a stream of the reply has no entries");
        };
        out.reserve(list.len());
        for entry in list {
            let Value::Array(mut entry) = entry else {
                anyhow::bail!("an entry is not an array");
            };
            let (Some(Value::Array(fields)), Some(Value::BulkString(id))) =
                (entry.pop(), entry.pop())
            else {
                anyhow::bail!("an entry is not [id, fields]");
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if let (Value::BulkString(name), Value::BulkString(value)) = (name, value) {
                    if name == b"payload" {
                        out.push((String::from_utf8(id)?, value));
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}
