//! A Python for the interoperability tests, with the official clients of the brokers installed
//! (`pulsar-client` now; `redis`, `paho-mqtt` or `celery` later), so that a test can prove the
//! worker talks to software nobody here wrote.
//!
//! [`python_with`] makes a virtual environment once per machine at `target/python-venv` (in the
//! target directory of the running test binary), installs into it what is not installed yet, and
//! returns its interpreter. Test binaries that race take turns through a lock file beside it.
//! `WORKER_TEST_PYTHON` names an existing interpreter to use instead. [`run_script`] runs a script
//! with it under a time limit.
//!
//! What is missing (`python3`, its `venv` module, a package pip cannot download) makes the test
//! skip with a loud note; with `REQUIRE_BROKERS=1` it panics instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::brokers::require;

/// The environment variable naming an interpreter to use instead of the tests' own venv; it
/// must have the packages installed already.
pub const ENV_PYTHON: &str = "WORKER_TEST_PYTHON";

/// How long one step (making the venv, one `pip install`) may take.
const STEP_LIMIT: Duration = Duration::from_secs(600);
/// How long to wait for another test binary that is building the venv.
const LOCK_LIMIT: Duration = Duration::from_secs(900);
/// Written last when the venv was made, so that a half-made one is made again.
const READY_MARKER: &str = "wr-venv-ready";

/// Prints, as JSON, the installed version (or `null`) of each distribution named in `argv`;
/// a name may carry a version requirement or extras (`pulsar-client>=3`, `celery[redis]`).
const VERSIONS_SCRIPT: &str = r#"
import importlib.metadata as metadata, json, re, sys
versions = {}
for spec in sys.argv[1:]:
    try:
        versions[spec] = metadata.version(re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0])
    except metadata.PackageNotFoundError:
        versions[spec] = None
print(json.dumps(versions))
"#;

/// The interpreter of the tests' venv with `packages` installed (pip requirement strings, e.g.
/// `"pulsar-client"`), or the one `WORKER_TEST_PYTHON` names. A package counts as installed when
/// any version of its distribution is; nothing installed is installed again.
///
/// `None`, after a loud skip note, when Python, its `venv` module or a package is unavailable;
/// with `REQUIRE_BROKERS=1` that panics instead.
pub fn python_with(packages: &[&str]) -> Option<PathBuf> {
    let outcome = match std::env::var_os(ENV_PYTHON).filter(|p| !p.is_empty()) {
        Some(python) => given_python(PathBuf::from(python), packages),
        None if !require("python3") => return None,
        None => venv_python(packages),
    };
    match outcome {
        Ok(python) => Some(python),
        Err(why) => unavailable(&why),
    }
}

/// Runs `script` (Python source, as with `python -c`) with `args`, killing it after `limit`: its
/// standard output if it exits with 0, else an error with its status and standard error.
pub fn run_script(
    python: &Path,
    script: &str,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let mut command = Command::new(python);
    command.arg("-c").arg(script).args(args);
    let output = run_with_limit(command, limit)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "the script failed ({}); its output:\n{stdout}\nits errors:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The installed version of each of `packages` in `python` (`None` where it is missing).
pub fn installed_versions(
    python: &Path,
    packages: &[&str],
) -> Result<BTreeMap<String, Option<String>>, String> {
    let stdout = run_script(python, VERSIONS_SCRIPT, packages, Duration::from_secs(60))
        .map_err(|why| format!("{} cannot list its packages: {why}", python.display()))?;
    serde_json::from_str(&stdout).map_err(|e| format!("the package list {stdout:?}: {e}"))
}

/// The interpreter `WORKER_TEST_PYTHON` names, if it has every package.
fn given_python(python: PathBuf, packages: &[&str]) -> Result<PathBuf, String> {
    let missing = missing(&python, packages)?;
    if !missing.is_empty() {
        return Err(format!(
            "{ENV_PYTHON}={} lacks {}: install them into it, or unset {ENV_PYTHON}",
            python.display(),
            missing.join(", ")
        ));
    }
    Ok(python)
}

/// Makes the venv if it is not there yet and installs what is missing, holding the lock.
fn venv_python(packages: &[&str]) -> Result<PathBuf, String> {
    let dir = venv_dir();
    let _turn = FileLock::acquire(&dir.with_extension("lock"))?;
    let python = dir.join("bin").join("python");
    if !dir.join(READY_MARKER).is_file() {
        eprintln!("making the Python venv {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let mut command = Command::new("python3");
        command.args(["-m", "venv"]).arg(&dir);
        succeed(
            command,
            "python3 -m venv (on Debian: apt-get install python3-venv)",
        )?;
        std::fs::write(dir.join(READY_MARKER), b"")
            .map_err(|e| format!("write {}: {e}", dir.join(READY_MARKER).display()))?;
    }
    let missing = missing(&python, packages)?;
    if !missing.is_empty() {
        eprintln!(
            "pip-installing {} into {}",
            missing.join(" "),
            dir.display()
        );
        let mut command = Command::new(&python);
        command
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--quiet"])
            .args(&missing);
        succeed(command, &format!("pip install {}", missing.join(" ")))?;
        let still = self::missing(&python, packages)?;
        if !still.is_empty() {
            return Err(format!(
                "pip installed but {} is still missing",
                still.join(", ")
            ));
        }
    }
    Ok(python)
}

/// `target/python-venv`, in the target directory of this test binary
/// (`target/<profile>/deps/<binary>`).
fn venv_dir() -> PathBuf {
    let binary = std::env::current_exe().expect("the test binary's path");
    let target = binary
        .ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps");
    target.join("python-venv")
}

/// Those of `packages` that `python` does not have, after printing the versions it has.
fn missing(python: &Path, packages: &[&str]) -> Result<Vec<String>, String> {
    let versions = installed_versions(python, packages)?;
    let present: Vec<String> = versions
        .iter()
        .filter_map(|(name, version)| Some(format!("{name} {}", version.as_ref()?)))
        .collect();
    if !present.is_empty() {
        eprintln!("python {}: {}", python.display(), present.join(", "));
    }
    Ok(versions
        .into_iter()
        .filter_map(|(name, version)| version.is_none().then_some(name))
        .collect())
}

/// Runs one set-up step, which must exit with 0.
fn succeed(command: Command, what: &str) -> Result<(), String> {
    let output = run_with_limit(command, STEP_LIMIT).map_err(|why| format!("{what}: {why}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Runs `command` with its output in scratch files (no pipe can fill up), in a process group of
/// its own that is killed after `limit`; the child also dies with the thread that started it.
fn run_with_limit(mut command: Command, limit: Duration) -> Result<Output, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let scratch = |stream: &str| {
        let name = format!("wr-test-python-{}-{n}.{stream}", std::process::id());
        std::env::temp_dir().join(name)
    };
    let (out_path, err_path) = (scratch("out"), scratch("err"));
    let create = |path: &Path| File::create(path).map_err(|e| format!("{}: {e}", path.display()));
    command
        .stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_default();
        let _ = std::fs::remove_file(path);
        bytes
    };
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                // The group's id is the child's: kill the child and whatever it started.
                let group = i32::try_from(child.id()).unwrap_or(i32::MAX);
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = child.wait();
                let errors = read(&err_path);
                let _ = read(&out_path);
                return Err(format!(
                    "{program} did not finish within {limit:?}, so it was killed; its errors:\n{}",
                    String::from_utf8_lossy(&errors)
                ));
            }
        }
    };
    Ok(Output {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// An exclusive `flock` on a file, held until drop (or until the process ends, however it ends).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let file = File::create(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        let deadline = Instant::now() + LOCK_LIMIT;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} stayed locked for {LOCK_LIMIT:?}: another test binary is stuck making the venv",
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(FileLock { _file: file })
    }
}

/// Skips loudly, or panics under `REQUIRE_BROKERS=1`.
fn unavailable(why: &str) -> Option<PathBuf> {
    if std::env::var("REQUIRE_BROKERS").is_ok_and(|v| v == "1") {
        panic!("no Python for the interoperability tests and REQUIRE_BROKERS=1: {why}");
    }
    eprintln!(
        "\n!!!!!!!!\n!!! SKIPPED: no Python for the interoperability tests, so this test did not run:\n\
         !!! {why}\n!!! Set REQUIRE_BROKERS=1 to make this fail.\n!!!!!!!!\n"
    );
    None
}
