//! One publisher per node. During a rolling update (`maxSurge: 1`) two
//! agent pods run on a node; if both published, any difference in their
//! output (a new attribute, another `--max-devices-per-slice`) would have
//! each rewrite the other's slices at API speed until the old pod ends.
//!
//! The turn is an exclusive `flock` on `publisher-<node>.lock` in the plugin
//! directory (shared by the node's agent pods): whoever holds it publishes;
//! the kernel releases it when its holder dies. The newest pod wins without
//! waiting for the old one to exit: at start a pod writes its identity into
//! `publisher-<node>.want`; the holder checks that file before every pass (and
//! twice a second) and, when it names another pod, steps aside for good and
//! lets go of the lock, which the newcomer is waiting for.

use std::fs;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// This agent's claim on the turn.
pub struct Turn {
    dir: PathBuf,
    /// File names carry the node (tests run several "nodes" on one host).
    lock_file: String,
    want_file: String,
    me: String,
}

/// The turn, held: publishing is ours until [`Held::superseded`].
pub struct Held {
    /// `None`: publishing without the turn (the directory is not ours to
    /// write: an unprivileged, publishing-only agent).
    want: Option<PathBuf>,
    me: String,
    _lock: Option<fs::File>,
}

fn try_lock(path: &Path) -> io::Result<Option<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}

impl Turn {
    /// `me` names this agent (its pod UID, else a per-process identity).
    pub fn new(dir: &Path, node: &str, me: String) -> Turn {
        // A file name has 255 bytes; a node name up to 253.
        let node = if node.len() <= 200 {
            node.to_string()
        } else {
            format!("{:08x}", crc32fast::hash(node.as_bytes()))
        };
        Turn {
            dir: dir.to_path_buf(),
            lock_file: format!("publisher-{node}.lock"),
            want_file: format!("publisher-{node}.want"),
            me,
        }
    }

    /// Says we want the turn (we are the newest), then waits for it: at
    /// once when nobody holds it, else until the holder steps aside or
    /// dies. `None` when cancelled first. A directory we cannot write
    /// means publishing without the turn (said once, loudly).
    pub async fn take(&self, cancel: &CancellationToken) -> anyhow::Result<Option<Held>> {
        let want = self.dir.join(&self.want_file);
        let lock = self.dir.join(&self.lock_file);
        let asked = fs::create_dir_all(&self.dir).and_then(|()| write_atomically(&want, &self.me));
        if let Err(e) = asked {
            warn!(dir = %self.dir.display(), error = %e, "cannot take turns with other agent pods of this node (the directory is not writable): publishing without the turn");
            return Ok(Some(Held {
                want: None,
                me: self.me.clone(),
                _lock: None,
            }));
        }
        let mut said = false;
        loop {
            if let Some(file) = try_lock(&lock).map_err(|e| anyhow::anyhow!("locking {}: {e}", lock.display()))? {
                info!(lock = %lock.display(), "this agent publishes the node's slices");
                return Ok(Some(Held {
                    want: Some(want),
                    me: self.me.clone(),
                    _lock: Some(file),
                }));
            }
            if !said {
                info!(lock = %lock.display(), "another agent pod on this node publishes; asked it to step aside, waiting");
                said = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

impl Held {
    /// Whether a newer agent asked for the turn (then drop this to let go).
    pub fn superseded(&self) -> Option<String> {
        let want = self.want.as_ref()?;
        match fs::read_to_string(want) {
            Ok(s) if s.trim() != self.me && !s.trim().is_empty() => Some(s.trim().to_string()),
            Ok(_) => None,
            Err(e) => {
                warn!(path = %want.display(), error = %e, "cannot read who wants to publish; keeping the turn");
                None
            }
        }
    }
}

fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// This agent's identity for the turn: the pod UID when the chart sets it
/// (a container restarted in the same pod is the same pod), else one per
/// process.
pub fn identity(pod_uid: Option<&str>) -> String {
    match pod_uid.filter(|u| !u.is_empty()) {
        Some(uid) => format!("pod-{uid}"),
        None => format!(
            "process-{}-{}",
            std::process::id(),
            fs::read_to_string("/proc/sys/kernel/random/uuid")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_takes_the_turn_once_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let old = Turn::new(dir.path(), "n", "old".into())
            .take(&cancel)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.superseded(), None);
        let new = Turn::new(dir.path(), "n", "new".into());
        let waiting = tokio::spawn(async move { new.take(&CancellationToken::new()).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "two holders");
        assert_eq!(old.superseded().as_deref(), Some("new"));
        drop(old);
        let new = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(new.superseded(), None);
        // Cancelled while waiting: no turn.
        cancel.cancel();
        let third = Turn::new(dir.path(), "n", "third".into()).take(&cancel).await.unwrap();
        assert!(third.is_none());
    }
}
