//! The connection a consumer reads its stream on: its own, since a blocking read holds a
//! connection for as long as it waits.
//!
//! Over plain TCP the consumer speaks to the server itself and reads replies with [`resp`]:
//! one command in flight at a time, the reply's bytes read into a buffer, copied out of it whole
//! (one allocation of the reply's size, which the deliveries' payloads then share) and its
//! entries cut out of that copy. Over TLS or a Unix socket it goes through a redis-rs connection
//! instead, and the entries come out of redis-rs's values.
//!
//! On the direct connection a read dropped or failed on the way leaves it in the middle of a
//! reply: it then refuses further reads with a connection error, and its owner opens a new one.

use std::io;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, RedisConnectionInfo, RedisError};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use worker_core::BrokerError;

use super::resp::{self, ReplyScan, StreamEntry};
use super::{bad_reply, codec, raw_reply, with_timeout, Shared};

/// How much room a read makes in the buffer at least before reading from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// A consumer's connection for `XREADGROUP`. See the [module docs](self).
pub(super) struct ReadConnection(Kind);

enum Kind {
    Direct(Direct<TcpStream>),
    RedisRs(MultiplexedConnection),
}

impl ReadConnection {
    /// Opens a connection to the server of `shared`, logged in and on its database.
    pub(super) async fn open(shared: &Shared) -> Result<Self, BrokerError> {
        let info = shared.client.get_connection_info();
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let limit = shared.options.connect_timeout * 2;
                let opening = async {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Direct::open(stream, info.redis_settings()).await
                };
                Ok(ReadConnection(Kind::Direct(
                    with_timeout("connect", limit, opening).await?,
                )))
            }
            _ => Ok(ReadConnection(Kind::RedisRs(
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
            Kind::RedisRs(connection) => {
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

/// A connection spoken to directly (plain TCP; any byte stream in the tests).
struct Direct<S> {
    stream: S,
    /// What the server sent and was not taken out yet.
    buffer: BytesMut,
    /// How far the reply at the start of the buffer was scanned.
    scan: ReplyScan,
    /// A request was sent whose reply was not read whole: the next bytes are not the reply of
    /// the next request.
    midway: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Direct<S> {
    /// Logs in on `stream` if the URL has a password, and selects the URL's database.
    async fn open(stream: S, settings: &RedisConnectionInfo) -> Result<Self, RedisError> {
        let mut direct = Direct {
            stream,
            buffer: BytesMut::new(),
            scan: ReplyScan::default(),
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

    /// Reads until the buffer holds a whole reply, and takes it out as a copy: payloads held
    /// long after their read keep only their reply's bytes alive, not the read buffer, which is
    /// used again.
    async fn reply(&mut self) -> Result<Bytes, RedisError> {
        loop {
            let complete = self
                .scan
                .complete(&self.buffer)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(length) = complete {
                let reply = Bytes::copy_from_slice(&self.buffer[..length]);
                self.buffer.advance(length);
                return Ok(reply);
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use tokio::io::{duplex, DuplexStream};

    use super::*;

    const READ: &[u8] =
        b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$7\r\npayload\r\n$2\r\nhi\r\n";

    fn xreadgroup() -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("s")
            .arg(">");
        cmd
    }

    /// Reads what the client sent since the last call.
    async fn sent(server: &mut DuplexStream) -> Vec<u8> {
        let mut buffer = vec![0; 4096];
        let read = server.read(&mut buffer).await.expect("read the request");
        buffer.truncate(read);
        buffer
    }

    async fn connected() -> (Direct<DuplexStream>, DuplexStream) {
        let (client, server) = duplex(1 << 20);
        let direct = Direct::open(client, &RedisConnectionInfo::default())
            .await
            .expect("nothing to send");
        (direct, server)
    }

    #[tokio::test]
    async fn opening_logs_in_as_the_user_and_selects_the_database() {
        let (client, mut server) = duplex(1 << 20);
        let settings = RedisConnectionInfo::default()
            .set_username("reader")
            .set_password("pass")
            .set_db(3);
        let opening = tokio::spawn(async move { Direct::open(client, &settings).await.is_ok() });
        assert_eq!(
            sent(&mut server).await,
            b"*3\r\n$4\r\nAUTH\r\n$6\r\nreader\r\n$4\r\npass\r\n"
        );
        server.write_all(b"+OK\r\n").await.expect("reply");
        assert_eq!(
            sent(&mut server).await,
            b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
        );
        server.write_all(b"+OK\r\n").await.expect("reply");
        assert!(opening.await.expect("open"));
    }

    #[tokio::test]
    async fn a_refused_login_is_the_servers_error() {
        let (client, mut server) = duplex(1 << 20);
        let settings = RedisConnectionInfo::default().set_password("wrong");
        let opening = tokio::spawn(async move { Direct::open(client, &settings).await.err() });
        sent(&mut server).await;
        server
            .write_all(b"-WRONGPASS invalid username-password pair\r\n")
            .await
            .expect("reply");
        let error = opening.await.expect("open").expect("refused");
        assert_eq!(error.code(), Some("WRONGPASS"));
    }

    #[tokio::test]
    async fn a_reply_that_comes_a_byte_at_a_time_is_read_whole() {
        let (mut direct, mut server) = connected().await;
        let serving = tokio::spawn(async move {
            sent(&mut server).await;
            for byte in READ {
                server.write_all(&[*byte]).await.expect("reply");
                tokio::task::yield_now().await;
            }
            server
        });
        let reply = direct.request(&xreadgroup()).await.expect("reply");
        assert_eq!(&reply[..], READ);
        let entries = resp::read_entries(reply).expect("entries");
        assert_eq!(entries.len(), 1);
        drop(serving.await.expect("server"));
    }

    #[tokio::test]
    async fn replies_sent_together_are_read_one_by_one() {
        let (mut direct, mut server) = connected().await;
        server
            .write_all(&[READ, b"*-1\r\n"].concat())
            .await
            .expect("replies");
        assert_eq!(
            &direct.request(&xreadgroup()).await.expect("first")[..],
            READ
        );
        assert_eq!(
            &direct.request(&xreadgroup()).await.expect("second")[..],
            b"*-1\r\n"
        );
    }

    #[tokio::test]
    async fn a_server_error_is_an_error_with_its_code_and_the_connection_goes_on() {
        let (mut direct, mut server) = connected().await;
        server
            .write_all(b"-NOGROUP No such key 's'\r\n*-1\r\n")
            .await
            .expect("replies");
        let error = direct.request(&xreadgroup()).await.expect_err("an error");
        assert_eq!(error.code(), Some("NOGROUP"));
        assert_eq!(
            &direct.request(&xreadgroup()).await.expect("next")[..],
            b"*-1\r\n"
        );
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_reply_leaves_the_connection_unusable() {
        let (mut direct, mut server) = connected().await;
        server.write_all(&READ[..10]).await.expect("half a reply");
        assert!(direct.request(&xreadgroup()).now_or_never().is_none());
        server.write_all(&READ[10..]).await.expect("the rest");
        let error = direct.request(&xreadgroup()).await.expect_err("refused");
        assert!(error.is_io_error(), "{error}");
    }

    #[tokio::test]
    async fn a_closed_connection_or_bytes_that_are_no_reply_are_io_errors() {
        let (mut direct, server) = connected().await;
        drop(server);
        let error = direct.request(&xreadgroup()).await.expect_err("closed");
        assert!(error.is_io_error(), "{error}");

        let (mut direct, mut server) = connected().await;
        server.write_all(b"HTTP/1.1 400\r\n").await.expect("junk");
        let error = direct.request(&xreadgroup()).await.expect_err("junk");
        assert!(error.is_io_error(), "{error}");
    }
}
