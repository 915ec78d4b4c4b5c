//! A private PostgreSQL (Debian's `postgresql` package): `initdb` into a scratch directory and the
//! server on a free loopback port, trust authentication, stopped and removed on drop. Never the
//! machine's own cluster. Run as root, the server runs as the `postgres` user, which owns the
//! scratch directory (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require, which, BrokerProcess};

/// A PostgreSQL server child process. Stopped on drop.
pub struct Postgres {
    process: BrokerProcess,
    bin: PathBuf,
}

/// The folder of PostgreSQL's programs: on `PATH`, or Debian's versioned folder.
fn bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        return initdb
            .canonicalize()
            .ok()
            .and_then(|path| path.parent().map(Path::to_path_buf));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// `program args…`, as the `postgres` user when running as root (`setpriv` execs the program, so
/// the child is PostgreSQL itself and a kill reaches it).
fn command(program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if running_as_root() {
        let mut all: Vec<String> = ["--reuid=postgres", "--regid=postgres", "--init-groups"]
            .map(str::to_owned)
            .to_vec();
        all.push(program.display().to_string());
        all.extend_from_slice(args);
        (PathBuf::from("setpriv"), all)
    } else {
        (program.to_owned(), args.to_vec())
    }
}

impl Postgres {
    /// Makes a cluster and starts its server, or returns `None` after a loud skip when
    /// PostgreSQL is not installed (panics with `REQUIRE_BROKERS=1`).
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            require("initdb");
            return None;
        };
        let port = free_port();
        let dir = BrokerProcess::scratch_dir("postgres");
        if running_as_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(chown.success(), "chown the scratch directory to postgres");
        }
        let data = dir.join("data");
        let (program, args) = command(
            &bin.join("initdb"),
            &[
                "-D".into(),
                data.display().to_string(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
                "--no-sync".into(),
            ],
        );
        let output = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (program, args) = command(
            &bin.join("postgres"),
            &[
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                format!("unix_socket_directories={}", dir.display()),
                "-c".into(),
                "fsync=off".into(),
                "-c".into(),
                "max_connections=100".into(),
            ],
        );
        let process = BrokerProcess::start("postgres", &program, args, port, dir);
        let postgres = Postgres { process, bin };
        postgres.wait_until_accepting();
        Some(postgres)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.process.port()
        )
    }

    /// Kills the server (SIGKILL); its data stays for [`Self::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_until_accepting();
    }

    /// Waits until the server accepts sessions: its port opens while it still answers "the
    /// database system is starting up".
    fn wait_until_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.process.port().to_string(),
                ])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept sessions within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
