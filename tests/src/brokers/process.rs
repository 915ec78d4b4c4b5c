//! A child broker process that is killed when its guard drops, and the port helpers it needs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; a tiny race remains, acceptable in tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local address").port()
}

/// Waits until something accepts connections on `127.0.0.1:port`, or `limit` passes.
pub fn wait_for_port(port: u16, limit: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A broker running as a child process, with its own scratch directory. Killed on drop.
pub struct BrokerProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl BrokerProcess {
    /// Starts `program args…` (which must listen on `port`) and waits until the port accepts
    /// connections. `dir` is a fresh scratch directory the process may write to.
    pub fn start(name: &str, program: &Path, args: Vec<String>, port: u16, dir: PathBuf) -> Self {
        let mut process = BrokerProcess {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            port,
            dir,
            child: None,
        };
        process.restart();
        process
    }

    /// A fresh scratch directory under the system temp dir, unique to this process and call.
    pub fn scratch_dir(name: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wr-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        dir
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while it runs (for reading its resource use).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the process (SIGKILL) and waits for it to exit. Data it persisted stays in its directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully (SIGTERM), waiting up to `limit` for it to exit before killing it.
    pub fn terminate(&mut self, limit: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same arguments (after [`Self::kill`]) and waits for its port.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.name)))
            .expect("create the broker's log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(15)),
            "{} did not listen on port {} within 15 s; see {}",
            self.name,
            self.port,
            self.dir.display()
        );
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
