//! A `redis-server` of the test's own, on a free loopback port, with append-only persistence so
//! that a restart keeps what it acknowledged.

use std::time::Duration;

use super::{require, which, BrokerProcess};

/// A running `redis-server` child process. Killed, and its data removed, when dropped.
pub struct RedisServer {
    process: BrokerProcess,
    tls: bool,
    password: Option<String>,
}

impl RedisServer {
    /// Starts one with `appendonly yes`, `appendfsync everysec` and no automatic rewrites of the
    /// append-only file, or returns `None` (after a loud skip message) when `redis-server` is not
    /// installed; panics instead with `REQUIRE_BROKERS=1`.
    pub fn start() -> Option<Self> {
        Self::start_with("everysec", None, false)
    }

    /// Like [`Self::start`], with `appendfsync always`: every acknowledged write is on disk before
    /// the reply, as the restart tests need.
    pub fn start_fsync_always() -> Option<Self> {
        Self::start_with("always", None, false)
    }

    /// Like [`Self::start`], but speaking only TLS (with a certificate for 127.0.0.1 signed by a
    /// throwaway authority, both made with the `openssl` tool, which must be installed too) and
    /// requiring `password`.
    pub fn start_tls_with_password(password: &str) -> Option<Self> {
        if !require("openssl") {
            return None;
        }
        Self::start_with("everysec", Some(password), true)
    }

    /// Like [`Self::start`], requiring `password` of the default user (plain TCP).
    pub fn start_with_password(password: &str) -> Option<Self> {
        Self::start_with("everysec", Some(password), false)
    }

    fn start_with(fsync: &str, password: Option<&str>, tls: bool) -> Option<Self> {
        if !require("redis-server") {
            return None;
        }
        let program = which("redis-server")?;
        let port = super::free_port();
        let dir = BrokerProcess::scratch_dir("redis");
        let mut args: Vec<String> = Vec::new();
        if tls {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            make_certificates(&dir);
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ]);
            args.extend(["--tls-auth-clients".into(), "no".into()]);
            args.extend(["--tls-cert-file".into(), cert.display().to_string()]);
            args.extend(["--tls-key-file".into(), key.display().to_string()]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        if let Some(password) = password {
            args.extend(["--requirepass".into(), password.to_owned()]);
        }
        args.extend(
            [
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
                // No background rewrites of the append-only file: their fork competes for the CPU
                // at moments nobody chose, which blurs benchmarks and slows tests.
                "--auto-aof-rewrite-percentage",
                "0",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(str::to_owned),
        );
        let process = BrokerProcess::start("redis", &program, args, port, dir);
        let server = RedisServer {
            process,
            tls,
            password: password.map(str::to_owned),
        };
        server.wait_until_loaded();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>`, with a password `redis://:<password>@127.0.0.1:<port>`, or
    /// with TLS and a password `rediss://:<password>@127.0.0.1:<port>/#insecure` (the
    /// certificate is self-signed).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        let tail = if self.tls { "/#insecure" } else { "" };
        format!("{scheme}://{auth}127.0.0.1:{}{tail}", self.process.port())
    }

    /// The certificate authority (PEM) that signed a TLS server's certificate.
    pub fn tls_ca_certificate(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| self.process.dir().join("ca.pem"))
    }

    /// Runs one command through `redis-cli` (plain servers only) and returns its output, or
    /// `None` when `redis-cli` is not installed. For tests that tamper with the server's data.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let program = which("redis-cli")?;
        let mut command = std::process::Command::new(program);
        command.args(["-h", "127.0.0.1", "-p", &self.process.port().to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let output = command.args(args).output().expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
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

    /// The port accepts before the data is loaded; wait for `PING` to answer `PONG` (or ask for
    /// the password, which it does only once loaded). A TLS server has no data to load.
    fn wait_until_loaded(&self) {
        if self.tls {
            return;
        }
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
                        if reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH") {
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

/// Writes `ca.pem` (a throwaway certificate authority) and `cert.pem` + `key.pem` (a server
/// certificate for 127.0.0.1 that it signed) into `dir`.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .expect("write the certificate extensions");
    run(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    ]
    .into_iter()
    .chain([
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ])
    .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
    ]
    .into_iter()
    .chain(["-keyout", "key.pem", "-out", "server.csr"])
    .collect::<Vec<_>>());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
    ]
    .into_iter()
    .chain([
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ])
    .collect::<Vec<_>>());
}
