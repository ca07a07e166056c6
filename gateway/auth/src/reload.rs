//! A value parsed from a file and replaced when the file changes.
//!
//! [`Reloading::load`] reads and parses the file once (a bad file is an
//! error at start-up). [`Reloading::reload`] reads it again and, when its
//! bytes differ, parses and swaps the new value in whole; when the new
//! content does not parse, the last good value stays and the error is
//! returned (and logged by [`watch`]). Readers take the current value
//! without a lock ([`arc_swap`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// A file's parsed content, swapped on change.
pub struct Reloading<T> {
    path: PathBuf,
    what: &'static str,
    parse: fn(&str) -> anyhow::Result<T>,
    current: ArcSwap<T>,
    /// The bytes the current value was parsed from.
    last: Mutex<Vec<u8>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads and parses `path` (`what` names it in errors: "API keys file").
    pub fn load(what: &'static str, path: &Path, parse: fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
        let value = Self::parse_bytes(what, path, parse, &bytes)?;
        Ok(Reloading {
            path: path.to_owned(),
            what,
            parse,
            current: ArcSwap::from_pointee(value),
            last: Mutex::new(bytes),
        })
    }

    fn parse_bytes(what: &str, path: &Path, parse: fn(&str) -> anyhow::Result<T>, bytes: &[u8]) -> anyhow::Result<T> {
        let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{what} {}: not UTF-8", path.display()))?;
        parse(text).map_err(|e| anyhow::anyhow!("{what} {}: {e:#}", path.display()))
    }

    /// The value now in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; swaps in its value when the bytes changed.
    /// `Ok(true)`: a new value is in force. A file that is gone counts as
    /// empty (it revokes everything it granted: failing closed); a file that
    /// cannot be read or parsed leaves the old value in force, with the error.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("{} {}: {e}", self.what, self.path.display()),
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == bytes {
            return Ok(false);
        }
        let value = Self::parse_bytes(self.what, &self.path, self.parse, &bytes)?;
        self.current.store(Arc::new(value));
        *last = bytes;
        Ok(true)
    }
}

/// Something [`watch`] can reload.
pub trait Reload: Send + Sync + 'static {
    fn reload_now(&self) -> anyhow::Result<bool>;
    fn describe(&self) -> String;
}

impl<T: Send + Sync + 'static> Reload for Reloading<T> {
    fn reload_now(&self) -> anyhow::Result<bool> {
        self.reload()
    }

    fn describe(&self) -> String {
        format!("{} {}", self.what, self.path.display())
    }
}

/// Reloads each of `files` every `every` and on SIGHUP, until `stop`.
/// A change is logged at INFO, a file that fails at WARN (once per
/// distinct error, so a broken file does not flood the log).
pub fn watch(
    files: Vec<Arc<dyn Reload>>,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if files.is_empty() {
            return;
        }
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_errors: Vec<Option<String>> = vec![None; files.len()];
        tokio::pin!(stop);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
                () = hup => tracing::info!("SIGHUP: reloading credentials"),
            }
            for (file, last_error) in files.iter().zip(last_errors.iter_mut()) {
                match file.reload_now() {
                    Ok(true) => {
                        *last_error = None;
                        tracing::info!(file = %file.describe(), "reloaded");
                    }
                    Ok(false) => *last_error = None,
                    Err(err) => {
                        let message = format!("{err:#}");
                        if last_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(error = %message, "reload failed; the last good version stays in force");
                            *last_error = Some(message);
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_number(text: &str) -> anyhow::Result<u32> {
        Ok(text.trim().parse()?)
    }

    fn parse_lines(text: &str) -> anyhow::Result<usize> {
        Ok(text.lines().count())
    }

    #[test]
    fn a_file_that_is_gone_reads_as_empty() {
        let dir = TempDir(std::env::temp_dir().join(format!("mesh-auth-gone-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("lines");
        std::fs::write(&path, "a\nb\n").unwrap();
        let file = Reloading::load("lines file", &path, parse_lines).unwrap();
        assert_eq!(*file.current(), 2);
        std::fs::remove_file(&path).unwrap();
        assert!(file.reload().unwrap());
        assert_eq!(*file.current(), 0, "everything it granted is revoked");
    }

    /// Removes the test's directory, also when an assertion fails.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_changed_file_swaps_and_a_bad_one_keeps_the_last_good_value() {
        let dir = TempDir(std::env::temp_dir().join(format!("mesh-auth-reload-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("n");
        std::fs::write(&path, "1").unwrap();
        let file = Reloading::load("number file", &path, parse_number).unwrap();
        assert_eq!(*file.current(), 1);
        assert!(!file.reload().unwrap(), "unchanged bytes are not a reload");
        std::fs::write(&path, "2").unwrap();
        assert!(file.reload().unwrap());
        assert_eq!(*file.current(), 2);
        std::fs::write(&path, "two").unwrap();
        let err = file.reload().unwrap_err().to_string();
        assert!(
            err.starts_with("number file ") && err.contains("invalid digit"),
            "{err}"
        );
        assert_eq!(*file.current(), 2);
        std::fs::remove_dir_all(&dir.0).unwrap();
        assert!(
            file.reload().is_err(),
            "a missing file reads as empty, which this parser refuses: the value stays"
        );
        assert_eq!(*file.current(), 2);
    }
}
