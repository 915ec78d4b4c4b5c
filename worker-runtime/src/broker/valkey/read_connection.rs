//! The connection a consumer reads its stream on: its own, since a blocking read holds a
//! connection for as long as it waits.
//!
//! Over plain TCP the consumer speaks to the server itself and reads replies with [`resp`]:
//! one command in flight at a time, the reply's bytes read into one buffer and its entries cut
//! out of it. Over TLS or a Unix socket it goes through a redis-rs connection instead, and the
//! entries come out of redis-rs's values.
//!
//! A read dropped or failed on the way leaves the connection in the middle of a reply: the
//! connection then refuses further reads with a connection error, and its owner opens a new one.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, RedisConnectionInfo, RedisError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use worker_core::BrokerError;

use super::resp::{self, StreamEntry};
use super::{bad_reply, codec, raw_reply, with_timeout, Shared};

/// How much room a read makes in the buffer at least before reading from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// A consumer's connection for `XREADGROUP`. See the [module docs](self).
pub(super) struct ReadConnection(Kind);

enum Kind {
    Direct(Direct),
    Client(MultiplexedConnection),
}

impl ReadConnection {
    /// Opens a connection to the server of `shared`, logged in and on its database.
    pub(super) async fn open(shared: &Shared) -> Result<Self, BrokerError> {
        let info = shared.client.get_connection_info();
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let limit = shared.options.connect_timeout * 2;
                let opening = Direct::open(host, *port, info.redis_settings());
                Ok(ReadConnection(Kind::Direct(
                    with_timeout("connect", limit, opening).await?,
                )))
            }
            _ => Ok(ReadConnection(Kind::Client(
                shared.dedicated_connection().await?,
            ))),
        }
    }

    /// Sends `cmd` (an `XREADGROUP`) and returns the entries of its reply, within `limit`.
    pub(super) async fn read(
        &mut self,
        cmd: &redis::Cmd,
        limit: Duration,
    ) -> Result<Vec<StreamEntry>, BrokerError> {
        match &mut self.0 {
            Kind::Direct(direct) => {
                let reply = with_timeout("receive", limit, direct.request(cmd)).await?;
                resp::read_entries(reply).map_err(|e| bad_reply("receive", e))
            }
            Kind::Client(connection) => {
                let reply = with_timeout("receive", limit, raw_reply(connection, cmd)).await?;
                let entries = codec::read_reply(reply).map_err(|e| bad_reply("receive", e))?;
                Ok(entries
                    .into_iter()
                    .map(|entry| StreamEntry {
                        id: Bytes::from(entry.id),
                        fields: entry.fields.map(|fields| {
                            fields
                                .into_iter()
                                .map(|(name, value)| (Bytes::from(name), Bytes::from(value)))
                                .collect()
                        }),
                    })
                    .collect())
            }
        }
    }
}

/// A plain TCP connection spoken to directly.
struct Direct {
    stream: TcpStream,
    /// What the server sent and was not read yet.
    buffer: BytesMut,
    /// A request was sent whose reply was not read whole: the next bytes are not the reply of
    /// the next request.
    midway: bool,
}

impl Direct {
    /// Connects, logs in if the URL has credentials, and selects its database.
    async fn open(
        host: &str,
        port: u16,
        settings: &RedisConnectionInfo,
    ) -> Result<Self, RedisError> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let mut direct = Direct {
            stream,
            buffer: BytesMut::new(),
            midway: false,
        };
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            direct.request(&auth).await?;
        }
        if settings.db() != 0 {
            direct
                .request(redis::cmd("SELECT").arg(settings.db()))
                .await?;
        }
        Ok(direct)
    }

    /// Sends `cmd` and reads its whole reply; an error reply is an error.
    async fn request(&mut self, cmd: &redis::Cmd) -> Result<Bytes, RedisError> {
        if self.midway {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "an earlier read on this connection was left unfinished",
            )
            .into());
        }
        // Until the reply is read whole: also if this future is dropped on the way.
        self.midway = true;
        self.stream.write_all(&cmd.get_packed_command()).await?;
        let reply = self.reply().await?;
        self.midway = false;
        if resp::is_error(&reply) {
            return Err(match redis::parse_redis_value(&reply)? {
                redis::Value::ServerError(error) => error.into(),
                other => {
                    let detail = format!("an error reply read as {other:?}");
                    io::Error::new(io::ErrorKind::InvalidData, detail).into()
                }
            });
        }
        Ok(reply)
    }

    /// Reads until the buffer holds a whole reply, and takes it out.
    async fn reply(&mut self) -> Result<Bytes, RedisError> {
        loop {
            let complete = resp::reply_len(&self.buffer)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(length) = complete {
                return Ok(self.buffer.split_to(length).freeze());
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )
                .into());
            }
        }
    }
}
