//! The default consumer name: `{hostname}-{slot}`, the same across restarts of one deployment slot.
//!
//! A consumer name is more than a label on some backends: on MQTT it names the persistent session
//! that holds the consumer's share of a subscription, and a name that never comes back strands the
//! messages queued for it until the session expires; on Valkey it names the pending list that a
//! restarted consumer resumes at once instead of after the visibility timeout. `{hostname}-{pid}`
//! changed with every restart. The slot is the lowest number that no other running process of the
//! same program on this host holds, taken with an advisory lock on a file under the runtime
//! directory: the kernel releases the lock when the process ends, however it ends, so a restarted
//! worker takes the slot (and the name) its predecessor had, while copies that run side by side get
//! distinct ones.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How many slots are tried before the process id is used instead.
const MAX_SLOTS: u32 = 1024;

/// `{hostname}-{slot}`, computed once per process: the slot is the lowest number no other running
/// copy of the same program on this host holds (an advisory file lock the kernel releases when the
/// process ends), so a restarted worker gets its predecessor's name and copies side by side get
/// distinct ones.
///
/// When no slot can be locked (no writable runtime directory), the name falls back to
/// `{hostname}-p{pid}` with a warning: unique, but not stable across restarts.
pub fn default_consumer_name() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = host_name();
        match take_slot(&slot_dir(), &program_name()) {
            Ok(slot) => format!("{host}-{slot}"),
            Err(why) => {
                tracing::warn!(
                    %why,
                    "no consumer slot could be taken; using the process id, which changes on restart: set --consumer-name"
                );
                format!("{host}-p{}", std::process::id())
            }
        }
    })
    .clone()
}

fn host_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if host.is_empty() {
        "worker".to_owned()
    } else {
        host
    }
}

/// The file stem of the running program: copies of one program share slots, others do not.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// `$XDG_RUNTIME_DIR/worker-runtime-slots`, or the same under the temporary directory.
fn slot_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
        .join("worker-runtime-slots")
}

/// Locks the lowest free slot of `program` in `dir` for the rest of the process's life and returns
/// its number.
fn take_slot(dir: &Path, program: &str) -> Result<u32, String> {
    static HELD: OnceLock<File> = OnceLock::new();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for slot in 0..MAX_SLOTS {
        let path = dir.join(format!("{program}-{slot}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                // Kept open (and locked) until the process ends.
                let _ = HELD.set(file);
                return Ok(slot);
            }
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("all {MAX_SLOTS} slots of `{program}` are taken"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_copies_get_distinct_slots_and_a_freed_slot_is_taken_again() {
        let dir = std::env::temp_dir().join(format!("slots-test-{}", std::process::id()));
        let lock = |slot: u32| {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("prog-{slot}.lock")))
                .expect("open");
            file.try_lock().expect("lock");
            file
        };
        std::fs::create_dir_all(&dir).expect("dir");
        // Another process's lock on a file conflicts with ours, as does another open file
        // description in this process: hold slots 0 and 1 as two "other copies".
        let zero = lock(0);
        let one = lock(1);
        drop(zero);
        // Slot 0 was freed (its copy ended): the next copy takes it, not slot 2.
        assert_eq!(take_slot(&dir, "prog"), Ok(0));
        drop(one);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_default_name_is_the_host_and_a_slot_and_stays_the_same() {
        let name = default_consumer_name();
        let (host, slot) = name.rsplit_once('-').expect("host-slot");
        assert!(!host.is_empty());
        assert!(slot.parse::<u32>().is_ok(), "{name}");
        assert_eq!(default_consumer_name(), name);
    }
}
