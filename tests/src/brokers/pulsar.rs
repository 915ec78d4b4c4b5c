//! A real Apache Pulsar standalone (broker, one bookie and the metadata store in one JVM) of the
//! test binary's own, started with `scripts/pulsar-standalone run` on free loopback ports.
//!
//! A JVM takes tens of seconds to start, so the tests of one binary share one broker
//! ([`PulsarStandalone::shared`]) and keep apart by topic name; fault tests that kill the broker
//! start one of their own ([`PulsarStandalone::start`]). `PULSAR_URL` (and `PULSAR_ADMIN_URL`),
//! when set, point the shared broker at an external Pulsar instead.
//!
//! The JVM is started from one long-lived thread with `PR_SET_PDEATHSIG`, so it dies with the test
//! binary however that ends (the harness never drops statics); data directories that a dead test
//! binary left behind are removed by the next one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{free_port, require, BrokerProcess};
use crate::processes::{http_get, http_request};

/// How long a start may take: two cores and a cold JVM need 20–60 s.
const START_LIMIT: Duration = Duration::from_secs(180);
/// Starts tried before giving up. Now and then a standalone fails to open its first managed
/// ledger and never becomes ready; a fresh start (new ports, empty data) has come up each time.
const START_ATTEMPTS: u32 = 2;

/// A Pulsar broker for tests: one this process started, or an external one.
pub struct PulsarStandalone {
    broker_port: u16,
    web_port: u16,
    /// `None` for an external broker.
    own: Option<Own>,
    external_url: Option<String>,
}

struct Own {
    bookie_port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl PulsarStandalone {
    /// The broker every test of this binary shares: `PULSAR_URL` if set, else a standalone
    /// started on first use. `None` (after a loud skip note) when Java or Maven is missing, or
    /// the broker cannot start; with `REQUIRE_BROKERS=1` that panics instead.
    pub fn shared() -> Option<&'static PulsarStandalone> {
        static SHARED: OnceLock<Option<PulsarStandalone>> = OnceLock::new();
        SHARED
            .get_or_init(|| match external() {
                Some(external) => Some(external),
                None => Self::start(),
            })
            .as_ref()
    }

    /// A standalone of the caller's own, for tests that kill and restart it. Same rules as
    /// [`Self::shared`] for what is missing.
    pub fn start() -> Option<PulsarStandalone> {
        if !require("java") || !require("mvn") {
            return None;
        }
        remove_stale_data_dirs();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let own = Own {
                bookie_port: free_port(),
                dir: BrokerProcess::scratch_dir("pulsar"),
                child: Mutex::new(None),
            };
            let standalone = PulsarStandalone {
                broker_port: free_port(),
                web_port: free_port(),
                own: Some(own),
                external_url: None,
            };
            let launched = standalone.launch();
            let full_disk = launched.is_err()
                && standalone
                    .own
                    .as_ref()
                    .is_some_and(|own| !disk_warning(&own.dir).is_empty());
            match launched {
                Ok(()) => return Some(standalone),
                // Another start on a full disk would fail the same way.
                Err(why) if attempt == START_ATTEMPTS || full_disk => {
                    failures.push(format!("start {attempt}: {why}"));
                    break;
                }
                Err(why) => {
                    // Said at once, so that a start that came up only the second time shows.
                    eprintln!(
                        "!!! the Pulsar standalone's start {attempt} of {START_ATTEMPTS} failed; \
                         trying a fresh one: {why}"
                    );
                    failures.push(format!("start {attempt}: {why}"));
                }
            }
        }
        cannot_start(&failures.join("\n"))
    }

    /// `pulsar://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.external_url {
            Some(url) => url.clone(),
            None => format!("pulsar://127.0.0.1:{}", self.broker_port),
        }
    }

    /// `http://127.0.0.1:<web port>`, the admin REST API.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// The port of the admin REST API.
    pub fn web_port(&self) -> u16 {
        self.web_port
    }

    /// `GET` on the admin API: the status and the body, or `None` if nothing answers.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.web_port, path)
    }

    /// The topic stats (`GET /admin/v2/persistent/tenant/ns/topic/stats`) of a
    /// `persistent://tenant/ns/topic`, parsed.
    pub fn topic_stats(&self, topic: &str) -> Option<serde_json::Value> {
        let path = topic.strip_prefix("persistent://")?;
        let (status, body) = self.admin_get(&format!("/admin/v2/persistent/{path}/stats"))?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Makes sure the tenant and namespace of `topic` exist (`persistent://tenant/ns/name`, or
    /// the neutral `q1/tenant/ns/name`): a real cluster, unlike the other backends, knows only
    /// the tenants and namespaces that were created. Panics if the admin API refuses.
    pub fn ensure_namespace_of(&self, topic: &str) {
        let path = topic
            .split_once("://")
            .map_or_else(|| topic.split_once('/').map_or("", |(_, p)| p), |(_, p)| p);
        let mut parts = path.split('/');
        let (Some(tenant), Some(namespace)) = (parts.next(), parts.next()) else {
            panic!("`{topic}` has no tenant and namespace");
        };
        let tenant_body = r#"{"allowedClusters":["standalone"]}"#;
        for (what, path, body) in [
            (
                "tenant",
                format!("/admin/v2/tenants/{tenant}"),
                Some(tenant_body),
            ),
            (
                "namespace",
                format!("/admin/v2/namespaces/{tenant}/{namespace}"),
                None,
            ),
        ] {
            // One creation at a time, and a few tries: two tests creating the same tenant at
            // once may have one of them refused with an error other than a 409.
            static CREATING: Mutex<()> = Mutex::new(());
            let _one_at_a_time = lock(&CREATING);
            let mut answer = None;
            for _ in 0..5 {
                answer = http_request(self.web_port, "PUT", &path, body);
                // 409: it exists already.
                if let Some((200 | 204 | 409, _)) = answer {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if !matches!(answer, Some((200 | 204 | 409, _))) {
                panic!("create the {what} of {topic}: {answer:?}");
            }
        }
    }

    /// Kills the JVM (SIGKILL), as a crash would, and waits for it to be gone. Its data stays.
    ///
    /// # Panics
    /// For an external broker, which is not this process's to kill.
    pub fn kill(&self) {
        let own = self
            .own
            .as_ref()
            .expect("an external Pulsar cannot be killed");
        let mut child = lock(&own.child);
        if let Some(mut running) = child.take() {
            let _ = running.kill();
            let _ = running.wait();
        }
    }

    /// Starts it again on the same ports and data directory (after [`Self::kill`]) and waits
    /// until it is ready.
    pub fn restart(&self) {
        self.kill();
        if let Err(why) = self.launch() {
            panic!("the Pulsar standalone did not come back: {why}");
        }
    }

    /// The JVM's log so far.
    pub fn log(&self) -> String {
        self.own
            .as_ref()
            .and_then(|own| std::fs::read_to_string(own.dir.join("pulsar.log")).ok())
            .unwrap_or_default()
    }

    /// The process id of the JVM while it runs.
    pub fn pid(&self) -> Option<u32> {
        let own = self.own.as_ref()?;
        lock(&own.child).as_ref().map(Child::id)
    }

    fn launch(&self) -> Result<(), String> {
        let own = self
            .own
            .as_ref()
            .expect("only a standalone of ours is launched");
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(own.dir.join("pulsar.log"))
            .map_err(|e| format!("open the log: {e}"))?;
        let mut command = Command::new(script());
        command
            .arg("run")
            .arg("--data-dir")
            .arg(own.dir.join("data"))
            .args(["--broker-port", &self.broker_port.to_string()])
            .args(["--web-port", &self.web_port.to_string()])
            .args(["--bookie-port", &own.bookie_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut child = spawn_tied_to_this_process(command)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the JVM exited ({status}) before it was ready{}; its log ends with:\n{}",
                    disk_warning(&own.dir),
                    tail(&self.log(), 40)
                ));
            }
            if self.ready() {
                break;
            }
            if started.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "not ready within {START_LIMIT:?}{}; its log ends with:\n{}",
                    disk_warning(&own.dir),
                    tail(&self.log(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "pulsar standalone ready on {} (admin {}) after {:.1} s, data in {}",
            self.url(),
            self.admin_url(),
            started.elapsed().as_secs_f64(),
            own.dir.display()
        );
        *lock(&own.child) = Some(child);
        Ok(())
    }

    /// The last step of start-up creates `public/default`; the health check then answers `ok`.
    fn ready(&self) -> bool {
        matches!(
            self.admin_get("/admin/v2/namespaces/public/default"),
            Some((200, _))
        ) && matches!(
            self.admin_get("/admin/v2/brokers/health"),
            Some((200, body)) if body.trim() == "ok"
        )
    }
}

impl Drop for PulsarStandalone {
    fn drop(&mut self) {
        if let Some(own) = &self.own {
            if let Some(mut child) = lock(&own.child).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&own.dir);
        }
    }
}

/// The external broker of `PULSAR_URL`, with the admin API of `PULSAR_ADMIN_URL` (default: the
/// same host on port 8080).
fn external() -> Option<PulsarStandalone> {
    let url = std::env::var("PULSAR_URL").ok().filter(|u| !u.is_empty())?;
    let admin = std::env::var("PULSAR_ADMIN_URL").unwrap_or_default();
    let web_port = admin
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(8080);
    let broker_port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(6650);
    eprintln!("using the external Pulsar at {url} (PULSAR_URL)");
    Some(PulsarStandalone {
        broker_port,
        web_port,
        own: None,
        external_url: Some(url),
    })
}

/// A warning when the disk holding `dir` is nearly full: the bookie then refuses to write, and
/// the standalone never becomes ready, with only a stack trace in its log to say why.
fn disk_warning(dir: &std::path::Path) -> String {
    let used = Command::new("df")
        .arg("-P")
        .arg(dir)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| {
            let line = text.lines().nth(1)?.to_owned();
            line.split_whitespace()
                .nth(4)?
                .trim_end_matches('%')
                .parse::<u32>()
                .ok()
        });
    match used {
        Some(percent) if percent >= 90 => format!(
            " (the disk holding {} is {percent}% full: the bookie stops writing near full)",
            dir.display()
        ),
        _ => String::new(),
    }
}

fn cannot_start(why: &str) -> Option<PulsarStandalone> {
    if std::env::var("REQUIRE_BROKERS").is_ok_and(|v| v == "1") {
        panic!("the Pulsar standalone did not start and REQUIRE_BROKERS=1: {why}");
    }
    eprintln!(
        "\n!!!!!!!!\n!!! SKIPPED: the Pulsar standalone did not start, so this test did not run:\n\
         !!! {why}\n!!! Set REQUIRE_BROKERS=1 to make this fail.\n!!!!!!!!\n"
    );
    None
}

/// `scripts/pulsar-standalone` of this repository.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("pulsar-standalone")
}

/// Spawns `command` from a thread that lives as long as this process, with the child set to get
/// SIGKILL when that thread (so the process) ends: `PR_SET_PDEATHSIG` fires on the death of the
/// spawning *thread*, and test threads end with their tests.
fn spawn_tied_to_this_process(command: Command) -> Result<Child, String> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("pulsar-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(spawn_with_death_signal(&mut command));
                }
                // The sender lives in a static, so this thread never gets here.
                loop {
                    std::thread::park();
                }
            })
            .expect("start the spawner thread");
        Mutex::new(requests)
    });
    let (reply, child) = mpsc::channel();
    lock(spawner)
        .send((command, reply))
        .map_err(|_| "the spawner thread is gone".to_owned())?;
    child
        .recv()
        .map_err(|_| "the spawner thread is gone".to_owned())?
        .map_err(|e| format!("start {}: {e}", script().display()))
}

fn spawn_with_death_signal(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Removes `wr-test-pulsar-<pid>-*` scratch directories of test binaries no longer running.
fn remove_stale_data_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wr-test-pulsar-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
