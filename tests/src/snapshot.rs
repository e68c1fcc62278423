//! Guests saved once and resumed per scenario.
//!
//! A real Kubernetes node takes a minute or more to boot and start under
//! software emulation; every node scenario paid it. Instead the rig boots
//! the node once, runs a setup script in it (`node_up`), and saves the
//! running guest to a file with QEMU's own migration (the guest stopped,
//! `migrate` to `exec:cat > FILE`); each scenario then starts a QEMU that
//! takes that file as its incoming migration (`-incoming exec:cat FILE`),
//! continues the guest where it was saved, and hands it the scenario on its
//! second serial port. Every scenario starts from the same clean node.
//!
//! The file is named by a digest of everything the saved guest is made of
//! (the payload, the kernel, QEMU's version, the machine, the accelerator,
//! the init and setup scripts): a guest whose inputs did not change is
//! resumed, in this run or a later one; one whose inputs changed is booted
//! anew. The newest [`KEEP`] files are kept in `target/guest-snapshots/`.
//! Secrets (the node's certificates) are made inside the guest at setup,
//! so nothing random from the host is part of the digest.
//!
//! After a resume the guest's wall clock is set to the host's (the guest's
//! monotonic clock just goes on, as the components' leases and timers
//! expect): `tests/src/guest.rs`' init does it from the scenario's header.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Result, RigError, workspace_root};

/// How many saved guests `target/guest-snapshots/` keeps (each is the
/// guest's memory in use: about a gigabyte for a node).
pub const KEEP: usize = 3;

/// What the guest prints when its setup is done and it waits for a
/// scenario: the rig saves it then.
pub const SAVE_MARKER: &str = "@@MOCK-GUEST-SAVE@@";
/// The line that precedes a scenario sent to a resumed guest:
/// `@@MOCK-GUEST-SCENARIO <bytes> <unix seconds>`.
pub const SCENARIO_MARKER: &str = "@@MOCK-GUEST-SCENARIO";

/// The header line a resumed guest reads before the scenario's bytes.
pub fn scenario_header(len: usize, now: std::time::SystemTime) -> String {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A leading newline: whatever reached the port before ends its line.
    format!("\n{SCENARIO_MARKER} {len} {secs}\n")
}

/// The directory of saved guests.
pub fn dir() -> PathBuf {
    workspace_root().join("target").join("guest-snapshots")
}

/// The digest naming a saved guest, from everything it is made of.
pub fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Each part's length first: ("ab", "c") and ("a", "bc") differ.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// A saved guest's file, and the lock that makes one process save it while
/// others wait.
pub struct Slot {
    pub state: PathBuf,
    _lock: fs::File,
}

impl Slot {
    /// Takes the slot for `key` (waits while another process saves it).
    pub fn take(key: &str) -> Result<Slot> {
        let dir = dir();
        fs::create_dir_all(&dir).map_err(RigError::io(format!("creating {}", dir.display())))?;
        let lock_path = dir.join(format!("{key}.lock"));
        let lock = fs::File::create(&lock_path).map_err(RigError::io(format!("creating {}", lock_path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            return Err(RigError::io("locking a guest snapshot")(std::io::Error::last_os_error()));
        }
        Ok(Slot {
            state: dir.join(format!("{key}.vmstate")),
            _lock: lock,
        })
    }

    pub fn exists(&self) -> bool {
        self.state.is_file()
    }

    /// Where the state is written before it is complete.
    pub fn partial(&self) -> PathBuf {
        self.state.with_extension("vmstate.partial")
    }

    /// Forgets a state that could not be resumed.
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.state);
    }

    /// The state written whole: renamed into place, older files pruned.
    pub fn commit(&self) -> Result<()> {
        fs::rename(self.partial(), &self.state).map_err(RigError::io("keeping the guest's saved state"))?;
        prune(&dir(), KEEP, &self.state);
        Ok(())
    }

    /// Marks the state used now (the pruning keeps the newest used).
    pub fn touch(&self) {
        if let Ok(f) = fs::File::options().write(true).open(&self.state) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.partial());
        // (The lock goes with the descriptor.)
    }
}

/// Removes all but the `keep` most recently used states in `dir` (never
/// `current`, nor one another process holds), with their lock files.
pub fn prune(dir: &Path, keep: usize, current: &Path) {
    let mut states: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "vmstate") && p != current)
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    states.sort();
    let excess = (states.len() + 1).saturating_sub(keep);
    for (_, p) in states.into_iter().take(excess) {
        let lock = p.with_extension("lock");
        let free = fs::File::open(&lock).map_or(true, |f| {
            // SAFETY: flock on a descriptor we own; released when it closes.
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        });
        if free {
            let _ = fs::remove_file(&p);
            let _ = fs::remove_file(lock);
        }
    }
}

/// A QMP connection to a QEMU (`-qmp unix:PATH,server=on,wait=off`).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket as it starts: retried until
    /// `limit`), reads the greeting and enters command mode.
    pub fn connect(path: &Path, limit: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(RigError::io(format!(
                        "connecting to QEMU's QMP socket {}",
                        path.display()
                    ))(e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(RigError::io("QMP socket"))?;
        let writer = stream.try_clone().map_err(RigError::io("QMP socket"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error("greeting", &greeting));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(RigError::io("reading from QEMU's QMP socket"))?;
        if n == 0 {
            return Err(RigError::Command {
                what: "QMP".into(),
                detail: "QEMU closed its QMP socket".into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| RigError::Command {
            what: "QMP".into(),
            detail: format!("not JSON ({e}): {line}"),
        })
    }

    /// Runs a command: its `return`, or its `error` as the error. Events
    /// that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(RigError::io("writing to QEMU's QMP socket"))?;
        loop {
            let reply = self.read()?;
            if reply.get("event").is_some() {
                continue;
            }
            return match reply.get("return") {
                Some(r) => Ok(r.clone()),
                None => Err(qmp_error(command, &reply)),
            };
        }
    }

    /// Stops the guest and writes its state to `file`; returns the bytes
    /// written.
    pub fn save(&mut self, file: &Path, limit: Duration) -> Result<u64> {
        self.execute("stop", None)?;
        // QEMU's default migration bandwidth (32 MiB/s) is for networks.
        self.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": 1u64 << 40 })))?;
        let uri = format!("exec:cat > {}", shell_quote(&file.to_string_lossy()));
        self.execute("migrate", Some(json!({ "uri": uri })))?;
        let done = self.wait_migration(limit, "saving the guest")?;
        Ok(done["ram"]["transferred"].as_u64().unwrap_or_default())
    }

    /// Waits until the incoming migration has loaded, then lets the guest
    /// run (a guest saved stopped stays paused after loading).
    pub fn resume(&mut self, limit: Duration) -> Result<()> {
        self.wait_migration(limit, "loading the guest's saved state")?;
        self.execute("cont", None)?;
        Ok(())
    }

    fn wait_migration(&mut self, limit: Duration, what: &str) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.execute("query-migrate", None)?;
            match info["status"].as_str() {
                Some("completed") => return Ok(info),
                Some("failed") | Some("cancelled") => {
                    return Err(RigError::Command {
                        what: what.into(),
                        detail: format!("QEMU's migration ended {}", info),
                    });
                }
                _ if Instant::now() >= deadline => {
                    return Err(RigError::Command {
                        what: what.into(),
                        detail: format!("not done after {} s: {info}", limit.as_secs()),
                    });
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

fn qmp_error(command: &str, reply: &Value) -> RigError {
    RigError::Command {
        what: format!("QMP {command}"),
        detail: reply.to_string(),
    }
}

/// `s` in single quotes for `sh -c` (QEMU runs `exec:` URIs with /bin/sh).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_their_parts_apart() {
        assert_eq!(key(&[b"ab", b"c"]), key(&[b"ab", b"c"]));
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_eq!(key(&[b"x"]).len(), 24);
    }

    #[test]
    fn the_header_names_the_length_and_the_host_time() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_530_032);
        assert_eq!(scenario_header(96, t), "\n@@MOCK-GUEST-SCENARIO 96 1796530032\n");
    }

    #[test]
    fn quoting_survives_a_quote() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    /// The newest are kept, the one in use always; lock files go with
    /// their states.
    #[test]
    fn pruning_keeps_the_newest_and_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let p = dir.path().join(format!("{name}.vmstate"));
            fs::write(&p, "x").unwrap();
            fs::write(p.with_extension("lock"), "").unwrap();
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        // "a" is the oldest but in use.
        prune(dir.path(), 2, &dir.path().join("a.vmstate"));
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.lock", "a.vmstate", "d.lock", "d.vmstate"]);
    }
}
