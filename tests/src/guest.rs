//! Boots the guest kernel under QEMU (software emulation) and runs a
//! scenario script inside.
//!
//! Serial ports: ttyS0 is the kernel console (kept in a file), ttyS1 carries
//! the scenario's stdout and stderr (read live from QEMU's stdout), ttyS2
//! receives the guest's `dmesg` at the end. No terminal or stdin is needed,
//! there is no network device, and every run has a deadline.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::initramfs::{EXEC, FILE, Initramfs};
use crate::kernel::Kernel;
use crate::{Result, RigError, require_tool, workspace_root};

const EXIT_MARKER: &str = "@@MOCK-GUEST-EXIT ";
const QEMU_HINT: &str = "install it with `apt-get install -y qemu-system-x86` (or run ./dev setup)";

/// The guest's `/init`: mounts the usual file systems, then runs the
/// scenario (mode `run`) or a shell on the console (mode `shell`).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /root /var /etc
/bin/busybox printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >/etc/passwd
/bin/busybox printf 'root:x:0:\nnogroup:x:65534:\n' >/etc/group
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -s /run /var/run
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
hostname mock-guest
ip link set lo up
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
if [ "$(cat /guest/mode)" = shell ]; then
    echo "mock-device guest, kernel $(uname -r). 'modprobe mock-accel' loads the module; 'poweroff -f' leaves."
    setsid cttyhack sh -l
else
    # A sanitizing kernel: what kmemleak suspects at boot is not the run's.
    leaks=/sys/kernel/debug/kmemleak
    if [ -w $leaks ]; then echo scan >$leaks; echo clear >$leaks; fi
    cd /guest
    sh /guest/scenario.sh </dev/null >/dev/ttyS1 2>&1
    status=$?
    if [ -w $leaks ]; then
        # kmemleak reports only objects older than 5 s: wait, then scan
        # (about 10 s under emulation) and log what it suspects.
        sleep 6
        echo scan >$leaks
        cat $leaks >/dev/kmsg
    fi
    if grep -q 'debug_locks: *0' /proc/lockdep_stats 2>/dev/null; then
        echo "mock-guest: sanitizer: lockdep turned itself off during the run (debug_locks=0)" >/dev/kmsg
    fi
    echo "@@MOCK-GUEST-EXIT $status@@" >/dev/ttyS1
    dmesg >/dev/ttyS2
fi
poweroff -f
"#;

/// Shell helpers for scenarios (`. /guest/lib.sh`), TAP-style checks.
pub const SCENARIO_LIB: &str = include_str!("../scenarios/lib.sh");

/// What a scenario run gave back.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The scenario's exit status.
    pub exit_code: i32,
    /// The scenario's stdout and stderr.
    pub output: String,
    /// The guest's kernel log (`dmesg`) after the scenario.
    pub dmesg: String,
    /// The kernel console (boot messages and anything printed there).
    pub console: String,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
}

impl GuestRun {
    /// Kernel log lines that show a bug: warnings, oopses, leaks, memory
    /// corruption reports. A clean run has none.
    pub fn kernel_problems(&self) -> Vec<&str> {
        self.dmesg
            .lines()
            .filter(|l| KERNEL_PROBLEM_SIGNS.iter().any(|s| l.contains(s)))
            .collect()
    }

    /// Whether the first kernel problem was logged before the module was
    /// first loaded (its first `mock_accel` line): the boot's own (seen:
    /// a KASAN report in an early interrupt during `cpu_detect` under
    /// emulation), which the module cannot have caused; later lines may be
    /// its consequences (lockdep off).
    pub fn first_kernel_problem_before_module(&self) -> bool {
        let lines: Vec<&str> = self.dmesg.lines().collect();
        let first_problem = lines
            .iter()
            .position(|l| KERNEL_PROBLEM_SIGNS.iter().any(|s| l.contains(s)));
        let module = lines.iter().position(|l| l.contains("mock_accel"));
        matches!((first_problem, module), (Some(p), Some(m)) if p < m)
    }

    /// Prints the scenario's figures, its lines that start with one of
    /// `prefixes` (`METRIC`, `LATENCY`, …), then the run's wall time.
    pub fn print_figures(&self, prefixes: &[&str]) {
        for line in self
            .output
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        {
            eprintln!("{line}");
        }
        eprintln!("guest run took {:.1} s", self.elapsed.as_secs_f64());
    }

    /// The fault cases a scenario printed (`FAULT|case|what was done|
    /// outcome|lost` lines): checked to have lost nothing, printed as a
    /// Markdown table; how many there were.
    pub fn fault_table(&self) -> usize {
        let rows: Vec<Vec<&str>> = self
            .output
            .lines()
            .filter_map(|l| l.strip_prefix("FAULT|"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        eprintln!("| case | what was done | outcome | lost |\n|---|---|---|---|");
        for r in &rows {
            eprintln!("| {} |", r.join(" | "));
        }
        for r in &rows {
            assert_eq!(r.len(), 4, "a malformed fault row: {r:?}");
            assert_eq!(r[3], "nothing", "something was lost: {r:?}\n{}", self.output);
        }
        rows.len()
    }

    /// TAP check lines (`ok N - ...` / `not ok N - ...`) the scenario printed.
    pub fn checks(&self) -> (Vec<&str>, Vec<&str>) {
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        for line in self.output.lines() {
            if line.starts_with("not ok ") {
                failed.push(line);
            } else if line.starts_with("ok ") {
                passed.push(line);
            }
        }
        (passed, failed)
    }

    /// Panics, with everything a reader needs, unless the scenario exited 0,
    /// printed at least `min_checks` passing checks and no failing one, and
    /// the kernel log shows no bug.
    pub fn assert_clean(&self, min_checks: usize) {
        let (passed, failed) = self.checks();
        let problems = self.kernel_problems();
        if self.exit_code != 0 || !failed.is_empty() || passed.len() < min_checks || !problems.is_empty() {
            panic!(
                "guest scenario failed: exit {}, {} checks passed (expected at least {min_checks}), {} failed, \
                 {} kernel problems\n--- failed checks ---\n{}\n--- kernel problems ---\n{}\n\
                 --- scenario output ---\n{}\n--- dmesg ---\n{}",
                self.exit_code,
                passed.len(),
                failed.len(),
                problems.len(),
                failed.join("\n"),
                problems.join("\n"),
                self.output,
                self.dmesg
            );
        }
    }
}

/// A bootable guest: the kernel plus a payload (busybox, init, module and
/// test binaries), to which each run appends its scenario.
#[derive(Clone)]
pub struct Guest {
    kernel: Kernel,
    payload: Vec<u8>,
    /// Guest memory in MiB (default 1024).
    pub memory_mib: u32,
    /// Guest CPUs (default 1).
    pub cpus: u32,
    /// Deadline of one run (default 300 s, or `MOCK_GUEST_TIMEOUT` seconds).
    pub timeout: Duration,
}

/// Where a run's scenario output goes as it arrives.
pub type LineSink<'a> = &'a mut dyn FnMut(&str);

impl Guest {
    /// A guest from a kernel and a payload. The payload gets the init
    /// script, busybox and the scenario helpers added.
    pub fn new(kernel: Kernel, mut payload: Initramfs) -> Result<Guest> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(RigError::MissingTool {
                tool: "busybox".into(),
                hint: "install it with `apt-get install -y busybox-static` (or run ./dev setup)",
            })?;
        payload
            .binary("/bin/busybox", &busybox)?
            .data("/init", EXEC, INIT)
            .data("/guest/lib.sh", FILE, SCENARIO_LIB);
        let timeout = std::env::var("MOCK_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        Ok(Guest {
            kernel,
            payload: payload.to_bytes()?,
            memory_mib: 1024,
            cpus: 1,
            timeout,
        })
    }

    /// The usual guest for the project's tests: the newest installed
    /// kernel, `mock-accel` built against it and installed, and the given
    /// host binaries under `/usr/local/bin/<name>`.
    pub fn with_module(binaries: &[(&str, &Path)]) -> Result<Guest> {
        Guest::with_module_on(Kernel::find()?, binaries)
    }

    /// [`Guest::with_module`] on a given kernel.
    pub fn with_module_on(kernel: Kernel, binaries: &[(&str, &Path)]) -> Result<Guest> {
        require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let build = tempfile::tempdir().map_err(RigError::io("creating a build directory"))?;
        let ko = kernel.build_module(&workspace_root().join("kmod"), build.path())?;
        let mut payload = Initramfs::new();
        payload.module(&ko, &kernel.release)?;
        for (name, path) in binaries {
            payload.binary(&format!("/usr/local/bin/{name}"), path)?;
        }
        Guest::new(kernel, payload)
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Runs a scenario script (busybox sh) and collects what it printed.
    pub fn run(&self, script: &str) -> Result<GuestRun> {
        self.run_streaming(script, &mut |_| {})
    }

    /// [`Guest::run`], handing each output line to `sink` as it arrives.
    pub fn run_streaming(&self, script: &str, sink: LineSink<'_>) -> Result<GuestRun> {
        let qemu = require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let dir = tempfile::tempdir().map_err(RigError::io("creating a run directory"))?;
        let initrd = self.write_initrd(dir.path(), "run", script)?;
        let console = dir.path().join("console.log");
        let dmesg = dir.path().join("dmesg.log");

        let started = Instant::now();
        let mut child = self
            .qemu_command(&qemu, &initrd)
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", dmesg.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(RigError::io("starting qemu-system-x86_64"))?;

        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        let deadline = started + self.timeout;
        let mut output = String::new();
        let mut exit_code = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(EXIT_MARKER) {
                    Some(rest) => exit_code = rest.trim_end_matches("@@").trim().parse().ok(),
                    None => {
                        sink(&line);
                        output.push_str(&line);
                        output.push('\n');
                    }
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = read_lossy(&console);
                    return Err(RigError::Timeout {
                        seconds: self.timeout.as_secs(),
                        output,
                        crash_elsewhere: crash_elsewhere(&text),
                        console: format!("{}\n{}", console_excerpt(&text), keep_console(&text)),
                    });
                }
            }
        }
        // QEMU closed its stdout: it is exiting (poweroff or panic).
        let status = wait_until(&mut child, deadline)?;
        let elapsed = started.elapsed();
        let console_text = read_lossy(&console);
        let qemu_errors = stderr_reader.join().unwrap_or_default();

        let Some(exit_code) = exit_code else {
            return Err(RigError::NoExitStatus {
                output,
                crash_elsewhere: crash_elsewhere(&console_text),
                console: format!(
                    "{}\nqemu: {status}\n{qemu_errors}\n{}",
                    console_excerpt(&console_text),
                    keep_console(&console_text)
                ),
            });
        };
        Ok(GuestRun {
            exit_code,
            output,
            dmesg: read_lossy(&dmesg).replace('\r', ""),
            console: console_text,
            elapsed,
        })
    }

    /// Boots to an interactive shell on this terminal (ttyS0). Ctrl-A X quits
    /// QEMU; `poweroff -f` ends the guest.
    pub fn shell(&self) -> Result<ExitStatus> {
        let qemu = require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let dir = tempfile::tempdir().map_err(RigError::io("creating a run directory"))?;
        let initrd = self.write_initrd(dir.path(), "shell", "")?;
        self.qemu_command(&qemu, &initrd)
            .args(["-serial", "mon:stdio", "-serial", "null", "-serial", "null"])
            .status()
            .map_err(RigError::io("starting qemu-system-x86_64"))
    }

    fn write_initrd(&self, dir: &Path, mode: &str, script: &str) -> Result<PathBuf> {
        let mut run = Initramfs::new();
        run.data("/guest/mode", FILE, mode)
            .data("/guest/scenario.sh", EXEC, script);
        let mut bytes = self.payload.clone();
        run.write_to(&mut bytes)?;
        let path = dir.join("initrd.cpio");
        fs::write(&path, bytes).map_err(RigError::io("writing the initramfs"))?;
        Ok(path)
    }

    fn qemu_command(&self, qemu: &Path, initrd: &Path) -> Command {
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-accel",
            tcg_accel(),
            "-cpu",
            "max",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()])
        .arg("-kernel")
        .arg(&self.kernel.image)
        .arg("-initrd")
        .arg(initrd)
        // Warnings reach the console too (loglevel 5: KERN_WARNING and
        // worse), so a guest that dies shows the WARN that tainted it first.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=5"]);
        cmd
    }
}

/// QEMU's `-accel` value: TCG with one host thread per vCPU (`multi`, QEMU's
/// default) or all vCPUs on one thread (`single`), from
/// `MOCK_GUEST_TCG_THREAD`; a translated-code cache of 2 GiB (QEMU's default
/// 1 GiB is flushed whole, and every hot block translated again, when it
/// fills: a node's boot alone filled 474 MB of it, measured with `info
/// jit`; host memory is only used as code is translated).
fn tcg_accel() -> &'static str {
    match std::env::var("MOCK_GUEST_TCG_THREAD").as_deref() {
        Ok("single") => "tcg,thread=single,tb-size=2048",
        _ => "tcg,thread=multi,tb-size=2048",
    }
}

/// Keeps a failed guest's whole console where it outlives the run
/// (`target/guest-consoles/`): its path, for the error message.
fn keep_console(text: &str) -> String {
    let dir = workspace_root().join("target").join("guest-consoles");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("{stamp}-{}.log", std::process::id()));
    match fs::create_dir_all(&dir).and_then(|()| fs::write(&path, text)) {
        Ok(()) => format!("whole console: {}", path.display()),
        Err(e) => format!("whole console not kept ({}: {e})", path.display()),
    }
}

/// When a guest's console shows that its kernel panicked in code where
/// `mock_accel` has no frame (no `[mock_accel]` in any trace; every oops
/// lists the module among those loaded, which does not count): the
/// crash's first line. Under QEMU's software emulation the guest kernel has
/// died a few times far from the module — slab allocation in an interrupt,
/// a cred allocation in runc — with flags no real CPU produces.
fn crash_elsewhere(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    let first = lines.iter().position(|l| {
        ["Kernel panic", "Oops", "BUG:", "general protection fault", "WARNING:"]
            .iter()
            .any(|s| l.contains(s))
    })?;
    let crash = &lines[first..];
    let panicked = crash.iter().any(|l| l.contains("Kernel panic"));
    let ours = crash.iter().any(|l| l.contains("[mock_accel]"));
    (panicked && !ours).then(|| lines[first].trim().to_string())
}

fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Result<ExitStatus> {
    // poweroff takes a moment after the last output line.
    let deadline = deadline.max(Instant::now() + Duration::from_secs(10));
    loop {
        if let Some(status) = child.try_wait().map_err(RigError::io("waiting for qemu"))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().map_err(RigError::io("waiting for qemu"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a kernel log line that shows a bug contains.
const KERNEL_PROBLEM_SIGNS: [&str; 17] = [
    "WARNING:",
    "BUG:",
    "Oops",
    "kernel BUG",
    "general protection fault",
    "Call Trace",
    "suspected memory leak",
    "unreferenced object",
    "leak detector disabled",
    "refcount_t:",
    "list_add corruption",
    "list_del corruption",
    "UBSAN",
    "KASAN",
    "ODEBUG",
    "blocked for more than",
    "mock-guest: sanitizer:",
];

/// The console to show when a guest failed: from a little before the first
/// sign of a kernel problem (an oops is read from its start; its last lines
/// alone say little), at most 150 lines, else the last 40 lines.
fn console_excerpt(text: &str) -> String {
    let all: Vec<&str> = text.lines().collect();
    let last = all.len().saturating_sub(40);
    match all
        .iter()
        .position(|l| KERNEL_PROBLEM_SIGNS.iter().any(|s| l.contains(s)) || l.contains("Kernel panic"))
    {
        Some(first) if first < last => {
            let from = first.saturating_sub(5);
            let to = all.len().min(from + 150);
            let mut out = all[from..to].join("\n");
            if to < all.len() {
                out.push_str(&format!("\n[... {} lines ...]\n{}", all.len() - to, tail(text, 10)));
            }
            out
        }
        _ => all[last..].join("\n"),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed guest's console is shown from its oops, not from the oops'
    /// last lines.
    #[test]
    fn the_console_excerpt_starts_at_the_oops() {
        let mut lines: Vec<String> = (0..300).map(|i| format!("[ {i}] boot line")).collect();
        lines[200] = "[ 200] Oops: general protection fault, probably for non-canonical address".into();
        let text = lines.join("\n");
        let shown = console_excerpt(&text);
        assert!(shown.starts_with("[ 195] boot line"), "{shown}");
        assert!(shown.contains("Oops: general protection fault"));
        assert!(shown.ends_with("[ 299] boot line"));
        let quiet = (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n");
        assert_eq!(console_excerpt(&quiet), tail(&quiet, 40));
    }

    /// A problem is the boot's when the first one comes before the module's
    /// first line; later consequences (lockdep off) do not change that.
    #[test]
    fn a_kernel_problem_before_the_module_loads_is_the_boots() {
        let run = |dmesg: &str| GuestRun {
            exit_code: 0,
            output: String::new(),
            dmesg: dmesg.into(),
            console: String::new(),
            elapsed: Duration::ZERO,
        };
        let kasan = "[ 2.86] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0x130/0x1de";
        let load = "[ 9.00] mock_accel: loading out-of-tree module taints kernel.";
        let lockdep = "[51.11] mock-guest: sanitizer: lockdep turned itself off during the run (debug_locks=0)";
        assert!(!run(kasan).kernel_problems().is_empty());
        assert!(run(&[kasan, load, lockdep].join("\n")).first_kernel_problem_before_module());
        assert!(!run(&[load, kasan].join("\n")).first_kernel_problem_before_module());
        assert!(!run(load).first_kernel_problem_before_module());
        assert!(!run(kasan).first_kernel_problem_before_module());
    }

    /// A panic is "elsewhere" only when no frame is the module's; the
    /// module's name in the list of loaded modules does not count.
    #[test]
    fn a_crash_is_the_modules_when_one_of_its_frames_is_the_modules() {
        let oops = |frame: &str| {
            format!(
                "[ 1.0] boot\n[ 2.0] WARNING: CPU: 1 PID: 9 at mm/slub.c:10 x+0x1/0x2\n\
                 [ 2.0] Modules linked in: mock_accel(O) overlay\n[ 2.1] Call Trace:\n[ 2.1]  {frame}\n\
                 [ 3.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                 [ 3.1] Kernel panic - not syncing: Fatal exception"
            )
        };
        assert_eq!(
            crash_elsewhere(&oops("prepare_creds+0x20/0x2e0")).as_deref(),
            Some("[ 2.0] WARNING: CPU: 1 PID: 9 at mm/slub.c:10 x+0x1/0x2")
        );
        assert_eq!(
            crash_elsewhere(&oops("mock_accel_prepare+0x20/0x90 [mock_accel]")),
            None
        );
        assert_eq!(crash_elsewhere("[ 1.0] boot\n[ 2.0] WARNING: x\n[ 3.0] done"), None);
    }
}
