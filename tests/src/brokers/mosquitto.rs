//! A private `mosquitto` (MQTT 5) on a free loopback port, with persistence in its scratch directory.

use std::path::PathBuf;

use super::{free_port, require, which, BrokerProcess};

/// A mosquitto child process with persistence on and limits raised for tests. Killed on drop.
pub struct Mosquitto {
    process: BrokerProcess,
}

impl Mosquitto {
    /// Starts mosquitto, or returns `None` after a loud skip when the binary is missing (panics
    /// instead under `REQUIRE_BROKERS=1`).
    pub fn start() -> Option<Mosquitto> {
        if !require("mosquitto") {
            return None;
        }
        let program = which("mosquitto")?;
        let port = free_port();
        let dir = BrokerProcess::scratch_dir("mosquitto");
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, config_text(port, &dir)).expect("write mosquitto.conf");
        let args = vec!["-c".to_owned(), config.display().to_string()];
        let process = BrokerProcess::start("mosquitto", &program, args, port, dir);
        Some(Mosquitto { process })
    }

    /// The host to connect to.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// Kills it with SIGKILL: what it had not saved to its persistence file yet is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops it gracefully (SIGTERM): mosquitto saves its in-memory database on the way out.
    pub fn stop(&mut self) {
        self.process.terminate(std::time::Duration::from_secs(10));
    }

    /// Starts it again (after [`Self::kill`] or [`Self::stop`]) on the same port and data directory.
    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.dir().join("mosquitto.log")).unwrap_or_default()
    }
}

fn config_text(port: u16, dir: &std::path::Path) -> String {
    let data: PathBuf = dir.to_path_buf();
    // Run as root, mosquitto switches to the `mosquitto` user, which cannot write the scratch
    // directory; as any other user the `user` option has no effect.
    let stay_root = if running_as_root() { "user root\n" } else { "" };
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         {stay_root}\
         persistence true\n\
         persistence_location {}/\n\
         # save after every change, so that a kill -9 loses as little as mosquitto allows\n\
         autosave_on_changes true\n\
         autosave_interval 1\n\
         # mosquitto silently drops QoS 1/2 messages beyond this per session (default 1000)\n\
         max_queued_messages 1000000\n\
         max_inflight_messages 100\n\
         message_size_limit 0\n\
         log_dest stdout\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         connection_messages true\n",
        data.display()
    )
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the user the process runs as.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
