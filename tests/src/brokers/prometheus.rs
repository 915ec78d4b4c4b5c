//! A private Prometheus (Debian's `prometheus`) on a free loopback port, scraping the targets a
//! test names every second and loading rule files, with its HTTP API for queries.

use std::path::Path;

use super::{free_port, require, which, BrokerProcess};
use crate::processes::http_get;

/// A Prometheus child process. Killed on drop.
pub struct Prometheus {
    process: BrokerProcess,
}

/// One scrape job: its name, the `host:port` targets and the metrics path.
pub struct ScrapeJob<'a> {
    /// `job` label.
    pub name: &'a str,
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// The path of the metrics.
    pub path: &'a str,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every second with `rule_files` loaded, or returns `None`
    /// after a loud skip when the binary is missing (panics with `REQUIRE_BROKERS=1`).
    pub fn start(jobs: &[ScrapeJob<'_>], rule_files: &[&Path]) -> Option<Prometheus> {
        if !require("prometheus") {
            return None;
        }
        let program = which("prometheus")?;
        let port = free_port();
        let dir = BrokerProcess::scratch_dir("prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n",
        );
        for file in rule_files {
            config.push_str(&format!("  - {}\n", file.display()));
        }
        config.push_str("scrape_configs:\n");
        for job in jobs {
            let targets: Vec<String> = job.targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: [{}]\n",
                job.name,
                job.path,
                targets.join(", ")
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_owned(),
        ];
        let process = BrokerProcess::start("prometheus", &program, args, port, dir);
        let prometheus = Prometheus { process };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if http_get(port, "/-/ready").is_some_and(|(status, _)| status == 200) {
                return Some(prometheus);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("prometheus did not become ready within 30 s");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// `GET path` on its HTTP API: the status and the body parsed as JSON.
    pub fn api(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.port(), path).expect("prometheus answers");
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

/// `text` with every byte outside `[A-Za-z0-9-_.~]` percent-encoded, for a query string.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
