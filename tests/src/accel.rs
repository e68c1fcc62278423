//! Which accelerator the guests run under: KVM where it really works, else
//! QEMU's software emulation (TCG).
//!
//! `/dev/kvm` existing proves little: on the build machines it is a nested
//! software hypervisor, under which a stock Debian kernel either aborts at
//! once (`-cpu host`: "failed to set MSR 0x10a") or runs its kernel code
//! emulated (60-85 s to where TCG is in 1.5 s), then stops with "KVM
//! internal error". So KVM is used only after a probe: a tiny guest (the
//! guest kernel, busybox, an init that says it is up and powers off) must
//! reach userspace under `-accel kvm -cpu host` within [`PROBE_LIMIT`], and
//! exit cleanly. The probe's outcome is kept per host boot (`boot_id`), QEMU
//! and kernel in the user's cache, so a run pays for it once.
//!
//! `MOCK_GUEST_ACCEL=kvm|tcg` forces either (`auto`, the default, probes).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::initramfs::{EXEC, Initramfs};
use crate::kernel::Kernel;
use crate::{Result, RigError, require_tool};

/// How long the probe's guest may take to reach userspace under KVM. A
/// Debian kernel with a busybox initramfs does it in well under a second
/// under real KVM; TCG takes about 1.5 s to the same point, the nested
/// hypervisor of the build machines over a minute.
pub const PROBE_LIMIT: Duration = Duration::from_secs(6);

/// What the probe's init prints once userspace runs.
const PROBE_MARKER: &str = "MOCK-KVM-PROBE-USERSPACE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `MOCK_GUEST_ACCEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    Auto,
    Kvm,
    Tcg,
}

impl Forced {
    /// The variable's value: empty or `auto`, `kvm`, `tcg`; anything else is
    /// refused, naming what is accepted.
    pub fn parse(value: Option<&str>) -> std::result::Result<Forced, String> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Forced::Auto),
            Some("kvm") => Ok(Forced::Kvm),
            Some("tcg") => Ok(Forced::Tcg),
            Some(other) => Err(format!("MOCK_GUEST_ACCEL={other:?}: expected kvm, tcg or auto")),
        }
    }
}

/// What `/dev/kvm` is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmDevice {
    Missing,
    /// There, but this user cannot open it read-write (the error).
    Denied(String),
    Present,
}

impl KvmDevice {
    pub fn look() -> KvmDevice {
        let path = Path::new("/dev/kvm");
        if !path.exists() {
            return KvmDevice::Missing;
        }
        match std::fs::OpenOptions::new().read(true).write(true).open(path) {
            Ok(_) => KvmDevice::Present,
            Err(e) => KvmDevice::Denied(e.to_string()),
        }
    }
}

/// How the probe's guest ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// It reached userspace and powered off cleanly, in this time.
    Booted(Duration),
    /// QEMU failed (its words), or the guest ended without reaching
    /// userspace.
    Failed(String),
    /// No userspace within the limit: the guest was killed.
    TimedOut(Duration),
}

/// The accelerator, and why it was chosen (said once per process).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub accel: Accel,
    pub why: String,
}

/// The decision: forced either way by the variable; else TCG without a
/// usable `/dev/kvm`; else what the probe showed.
pub fn decide(forced: Forced, device: &KvmDevice, probe: impl FnOnce() -> Probe) -> Choice {
    let tcg = |why: String| Choice { accel: Accel::Tcg, why };
    match forced {
        Forced::Kvm => Choice {
            accel: Accel::Kvm,
            why: "forced by MOCK_GUEST_ACCEL=kvm (no probe)".into(),
        },
        Forced::Tcg => tcg("forced by MOCK_GUEST_ACCEL=tcg".into()),
        Forced::Auto => match device {
            KvmDevice::Missing => tcg("no /dev/kvm".into()),
            KvmDevice::Denied(e) => tcg(format!("/dev/kvm cannot be opened ({e})")),
            KvmDevice::Present => match probe() {
                Probe::Booted(t) => Choice {
                    accel: Accel::Kvm,
                    why: format!(
                        "a probe guest reached userspace under KVM in {:.2} s and powered off cleanly",
                        t.as_secs_f64()
                    ),
                },
                Probe::Failed(e) => tcg(format!("/dev/kvm is there, but a probe guest under KVM failed: {e}")),
                Probe::TimedOut(t) => tcg(format!(
                    "/dev/kvm is there, but a probe guest under KVM had not reached userspace after {:.1} s \
                     (a KVM that emulates the guest's kernel code: slower than TCG)",
                    t.as_secs_f64()
                )),
            },
        },
    }
}

/// The accelerator for this process's guests: decided once (the probe's
/// outcome cached per host boot), said on stderr with its reason.
pub fn choice() -> Result<&'static Choice> {
    static CHOICE: OnceLock<std::result::Result<Choice, String>> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let forced = Forced::parse(std::env::var("MOCK_GUEST_ACCEL").ok().as_deref())?;
            let started = Instant::now();
            let mut probed = None;
            let choice = decide(forced, &KvmDevice::look(), || {
                let (probe, cached) = cached_probe().unwrap_or_else(|e| (Probe::Failed(e.to_string()), false));
                probed = Some(cached);
                probe
            });
            let cost = match probed {
                Some(true) => "; the probe's outcome for this host boot, kept in the cache".to_string(),
                Some(false) => format!("; the probe took {:.2} s", started.elapsed().as_secs_f64()),
                None => String::new(),
            };
            eprintln!("guest accelerator: {} ({}{cost})", choice.accel.as_str(), choice.why);
            Ok(choice)
        })
        .as_ref()
        .map_err(|e| RigError::Command {
            what: "choosing the guest accelerator".into(),
            detail: e.clone(),
        })
}

/// The probe's outcome for this host boot, QEMU and guest kernel: read from
/// the user's cache (`true`), else probed and written there.
fn cached_probe() -> Result<(Probe, bool)> {
    let kernel = Kernel::find()?;
    let qemu = require_tool(
        "qemu-system-x86_64",
        "install it with `apt-get install -y qemu-system-x86`",
    )?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let key = format!(
        "{} {} {} {}",
        boot_id.trim(),
        stamp(&qemu),
        kernel.image.display(),
        stamp(&kernel.image)
    );
    let file = cache_dir().join("kvm-probe");
    if let Some(probe) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| read_cached(&text, &key))
    {
        return Ok((probe, true));
    }
    let probe = probe(&qemu, &kernel)?;
    let _ = std::fs::create_dir_all(cache_dir());
    let _ = std::fs::write(&file, write_cached(&key, &probe));
    Ok((probe, false))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("mock-device")
}

/// The cache file: the key on the first line, the outcome on the second.
fn write_cached(key: &str, probe: &Probe) -> String {
    let outcome = match probe {
        Probe::Booted(t) => format!("booted {}", t.as_secs_f64()),
        Probe::TimedOut(t) => format!("timedout {}", t.as_secs_f64()),
        Probe::Failed(e) => format!("failed {}", e.replace('\n', " ")),
    };
    format!("{key}\n{outcome}\n")
}

fn read_cached(text: &str, key: &str) -> Option<Probe> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let (kind, rest) = lines.next()?.split_once(' ')?;
    let secs = || rest.parse::<f64>().ok().map(Duration::from_secs_f64);
    match kind {
        "booted" => Some(Probe::Booted(secs()?)),
        "timedout" => Some(Probe::TimedOut(secs()?)),
        "failed" => Some(Probe::Failed(rest.to_string())),
        _ => None,
    }
}

/// The probe, run now (not from the cache), on the default guest kernel.
pub fn probe_now() -> Result<Probe> {
    let qemu = require_tool(
        "qemu-system-x86_64",
        "install it with `apt-get install -y qemu-system-x86`",
    )?;
    probe(&qemu, &Kernel::find()?)
}

/// Boots the tiny guest under `-accel kvm -cpu host`, at most
/// [`PROBE_LIMIT`].
fn probe(qemu: &Path, kernel: &Kernel) -> Result<Probe> {
    let busybox = crate::guest::host_busybox()?;
    let dir = tempfile::tempdir().map_err(RigError::io("creating the probe's directory"))?;
    let mut init = Initramfs::new();
    init.binary("/bin/busybox", &busybox)?.data(
        "/init",
        EXEC,
        format!("#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARKER}\n/bin/busybox poweroff -f\n"),
    );
    let initrd = dir.path().join("probe.cpio");
    std::fs::write(&initrd, init.to_bytes()?).map_err(RigError::io("writing the probe's initramfs"))?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = crate::process::spawn(cmd).map_err(RigError::io("starting qemu-system-x86_64 (KVM probe)"))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(PROBE_MARKER) {
                let _ = tx.send(());
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let reached = rx.recv_timeout(PROBE_LIMIT.saturating_sub(started.elapsed())).is_ok();
    let elapsed = started.elapsed();
    // Reached: it powers off at once; else it is killed now.
    let left = if reached {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    let status = crate::process::wait_for(&mut child, left).map_err(RigError::io("waiting for the KVM probe"))?;
    let errors = errors.join().unwrap_or_default();
    Ok(outcome(reached, status.map(|s| s.success()), elapsed, &errors))
}

/// The probe's outcome from what was seen: userspace reached, QEMU's exit
/// (`None`: killed at the limit), the time, QEMU's stderr.
fn outcome(reached: bool, exited_ok: Option<bool>, elapsed: Duration, qemu_stderr: &str) -> Probe {
    let said = qemu_stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(2)
        .collect::<Vec<_>>()
        .join("; ");
    match (reached, exited_ok) {
        (true, Some(true)) => Probe::Booted(elapsed),
        (false, None) => Probe::TimedOut(elapsed),
        (true, None) => Probe::Failed("reached userspace but did not power off in time".into()),
        (true, Some(false)) => Probe::Failed(format!("reached userspace, then QEMU failed: {said}")),
        (false, Some(_)) if said.is_empty() => Probe::Failed("the guest ended before userspace".into()),
        (false, Some(_)) => Probe::Failed(format!("qemu: {said}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Probe {
        panic!("the probe must not run here")
    }

    #[test]
    fn the_variable_forces_either_and_bad_values_are_refused() {
        assert_eq!(Forced::parse(None), Ok(Forced::Auto));
        assert_eq!(Forced::parse(Some("")), Ok(Forced::Auto));
        assert_eq!(Forced::parse(Some("auto")), Ok(Forced::Auto));
        assert_eq!(Forced::parse(Some("kvm")), Ok(Forced::Kvm));
        assert_eq!(Forced::parse(Some(" tcg ")), Ok(Forced::Tcg));
        let e = Forced::parse(Some("hvf")).unwrap_err();
        assert!(e.contains("hvf") && e.contains("kvm, tcg or auto"), "{e}");

        let kvm = decide(Forced::Kvm, &KvmDevice::Missing, never);
        assert_eq!(kvm.accel, Accel::Kvm);
        assert!(kvm.why.contains("forced"));
        let tcg = decide(Forced::Tcg, &KvmDevice::Present, never);
        assert_eq!(tcg.accel, Accel::Tcg);
        assert!(tcg.why.contains("forced"));
    }

    #[test]
    fn without_a_usable_dev_kvm_nothing_is_probed() {
        let c = decide(Forced::Auto, &KvmDevice::Missing, never);
        assert_eq!((c.accel, c.why.as_str()), (Accel::Tcg, "no /dev/kvm"));
        let c = decide(Forced::Auto, &KvmDevice::Denied("Permission denied".into()), never);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.why.contains("Permission denied"), "{}", c.why);
    }

    /// `/dev/kvm` is not enough: only a probe guest that reached userspace
    /// in time makes it KVM.
    #[test]
    fn kvm_only_when_the_probe_guest_reached_userspace() {
        let c = decide(Forced::Auto, &KvmDevice::Present, || {
            Probe::Booted(Duration::from_millis(420))
        });
        assert_eq!(c.accel, Accel::Kvm);
        assert!(c.why.contains("0.42 s"), "{}", c.why);
        let c = decide(Forced::Auto, &KvmDevice::Present, || {
            Probe::Failed("qemu: failed to set MSR 0x10a".into())
        });
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.why.contains("MSR 0x10a"), "{}", c.why);
        let c = decide(Forced::Auto, &KvmDevice::Present, || Probe::TimedOut(PROBE_LIMIT));
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.why.contains("had not reached userspace after 6.0 s"), "{}", c.why);
    }

    /// What the probe saw, as an outcome: the nested hypervisor's three
    /// ways of failing, and success.
    #[test]
    fn the_probe_reads_what_it_saw() {
        let t = Duration::from_millis(300);
        assert_eq!(outcome(true, Some(true), t, ""), Probe::Booted(t));
        // -cpu host on the nested hypervisor: QEMU aborts at once.
        let msr = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\n\
                   qemu-system-x86_64: ../target/i386/kvm/kvm.c:3201: kvm_buf_set_msrs: Assertion failed.";
        assert_eq!(
            outcome(false, Some(false), t, msr),
            Probe::Failed(
                "qemu: qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0; qemu-system-x86_64: \
                 ../target/i386/kvm/kvm.c:3201: kvm_buf_set_msrs: Assertion failed."
                    .into()
            )
        );
        // Emulated kernel code: nothing within the limit, killed.
        assert_eq!(outcome(false, None, PROBE_LIMIT, ""), Probe::TimedOut(PROBE_LIMIT));
        // Userspace reached, then "KVM internal error".
        let p = outcome(
            true,
            Some(false),
            t,
            "KVM internal error. Suberror: 1\nemulation failure",
        );
        assert!(
            matches!(&p, Probe::Failed(e) if e.contains("KVM internal error")),
            "{p:?}"
        );
        assert!(matches!(outcome(false, Some(true), t, ""), Probe::Failed(_)));
    }

    #[test]
    fn a_cached_outcome_counts_only_for_its_key() {
        for p in [
            Probe::Booted(Duration::from_millis(250)),
            Probe::TimedOut(Duration::from_secs(6)),
            Probe::Failed("qemu: failed to set MSR 0x10a\nsecond".into()),
        ] {
            let text = write_cached("boot-1 17 /boot/vmlinuz 18", &p);
            let back = read_cached(&text, "boot-1 17 /boot/vmlinuz 18").unwrap();
            match (&p, &back) {
                (Probe::Failed(a), Probe::Failed(b)) => assert_eq!(a.replace('\n', " "), *b),
                _ => assert_eq!(p, back),
            }
            assert_eq!(read_cached(&text, "boot-2 17 /boot/vmlinuz 18"), None);
        }
        assert_eq!(read_cached("k\nexploded 3\n", "k"), None);
    }
}
