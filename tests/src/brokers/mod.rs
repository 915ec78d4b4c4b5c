//! Real broker processes for tests. Each test suite starts its own instance as a child process on a
//! free loopback port and stops it when the guard drops; the machine's shared services are never used.
//!
//! Where a broker binary is missing, [`require`] says so loudly and the test skips; with
//! `REQUIRE_BROKERS=1` (as CI sets) it panics instead.

mod mosquitto;
mod postgres;
mod process;
mod prometheus;
mod pulsar;
mod redis;

pub use mosquitto::Mosquitto;
pub use postgres::Postgres;
pub use process::{free_port, wait_for_port, BrokerProcess};
pub use prometheus::{url_encode, Prometheus, ScrapeJob};
pub use pulsar::PulsarStandalone;
pub use redis::RedisServer;

/// Decides what to do when a broker binary is missing: returns `false` (skip, after printing why)
/// unless `REQUIRE_BROKERS=1`, in which case it panics naming the binary.
pub fn require(binary: &str) -> bool {
    if which(binary).is_some() {
        return true;
    }
    if std::env::var("REQUIRE_BROKERS").is_ok_and(|v| v == "1") {
        panic!("`{binary}` is not installed and REQUIRE_BROKERS=1: install it (see .ci/run)");
    }
    eprintln!(
        "\n!!!!!!!!\n!!! SKIPPED: `{binary}` is not installed, so this test did not run.\n\
         !!! Install it, or set REQUIRE_BROKERS=1 to make its absence fail.\n!!!!!!!!\n"
    );
    false
}

/// The full path of an executable on `PATH` (or in the usual sbin folders), if any.
pub fn which(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}
