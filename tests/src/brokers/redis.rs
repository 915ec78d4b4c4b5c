//! A `redis-server` of the test's own, on a free loopback port, with append-only persistence so
//! that a restart keeps what it acknowledged.

use std::time::Duration;

use super::{require, which, BrokerProcess};

/// A running `redis-server` child process. Killed, and its data removed, when dropped.
pub struct RedisServer {
    process: BrokerProcess,
}

impl RedisServer {
    /// Starts one with `appendonly yes` and `appendfsync everysec`, or returns `None` (after a
    /// loud skip message) when `redis-server` is not installed; panics instead with
    /// `REQUIRE_BROKERS=1`.
    pub fn start() -> Option<Self> {
        Self::start_with("everysec")
    }

    /// Like [`Self::start`], with `appendfsync always`: every acknowledged write is on disk before
    /// the reply, as the restart tests need.
    pub fn start_fsync_always() -> Option<Self> {
        Self::start_with("always")
    }

    fn start_with(fsync: &str) -> Option<Self> {
        if !require("redis-server") {
            return None;
        }
        let program = which("redis-server")?;
        let port = super::free_port();
        let dir = BrokerProcess::scratch_dir("redis");
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--dir",
            &dir.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let process = BrokerProcess::start("redis", &program, args, port, dir);
        let server = RedisServer { process };
        server.wait_until_loaded();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.process.port())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// Kills it (SIGKILL). Its append-only file stays for [`Self::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and directory, and waits until it has loaded its data.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_until_loaded();
    }

    /// The port accepts before the data is loaded; wait for `PING` to answer `PONG`.
    fn wait_until_loaded(&self) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.process.port()));
            if let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut reply = [0u8; 64];
                if stream.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = stream.read(&mut reply) {
                        if reply[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server on port {} did not answer PING",
            self.process.port()
        );
    }
}
