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
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::accel::{self, Accel};
use crate::initramfs::{EXEC, FILE, Initramfs};
use crate::kernel::Kernel;
use crate::{Result, RigError, require_tool, workspace_root};
use crate::{relay, snapshot};

const EXIT_MARKER: &str = "@@MOCK-GUEST-EXIT ";
const QEMU_HINT: &str = "install it with `apt-get install -y qemu-system-x86` (or run ./dev setup)";

/// The guest's `/init`: mounts the usual file systems, then runs the
/// scenario (mode `run`), a shell on the console (mode `shell`), or (mode
/// `serve`) a setup script, after which the rig saves the guest and each
/// resumed copy reads its scenario from the second serial port
/// ([`crate::snapshot`]): a header line `@@MOCK-GUEST-SCENARIO <bytes>
/// <unix seconds>`, then the script. The port is raw (no echo, no line
/// editing) and held open from before the save (a serial port opened anew
/// resets its FIFO); the header line is looked for, so nothing that reached
/// the port before it can be taken for the script. The wall clock is set to
/// the host's from the header (the guest's monotonic clock goes on as it
/// was: the components' timers and leases keep their sense).
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
leaks=/sys/kernel/debug/kmemleak
run_scenario() {
    # A sanitizing kernel: what kmemleak suspects at boot is not the run's.
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
}
case "$(cat /guest/mode)" in
shell)
    echo "mock-device guest, kernel $(uname -r). 'modprobe mock-accel' loads the module; 'poweroff -f' leaves."
    setsid cttyhack sh -l
    ;;
serve)
    exec 3</dev/ttyS1
    stty -F /dev/ttyS1 raw -echo
    (cd /guest && sh /guest/setup.sh </dev/null >/dev/ttyS1 2>&1)
    status=$?
    if [ $status != 0 ]; then
        echo "@@MOCK-GUEST-EXIT $status@@" >/dev/ttyS1
        dmesg >/dev/ttyS2
    else
        echo "@@MOCK-GUEST-SAVE@@" >/dev/ttyS1
        # Saved here; every resumed copy goes on from this line.
        while read -r hdr <&3; do
            case $hdr in "@@MOCK-GUEST-SCENARIO "*) break ;; esac
        done
        set -- $hdr
        date -s "@$3" >/dev/null
        head -c "$2" <&3 >/guest/scenario.sh
        exec 3<&-
        run_scenario
    fi
    ;;
*)
    run_scenario
    ;;
esac
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
    payload: Arc<Vec<u8>>,
    /// Guest memory in MiB (default 1024).
    pub memory_mib: u32,
    /// Guest CPUs (default 1).
    pub cpus: u32,
    /// Deadline of one run (default 300 s, or `MOCK_GUEST_TIMEOUT` seconds).
    pub timeout: Duration,
    /// When set, runs start from a saved guest that booted and ran this
    /// setup script ([`crate::snapshot`]), unless `MOCK_GUEST_SNAPSHOT=0`.
    pub snapshot_setup: Option<String>,
    /// When set, the guest has a network device on QEMU's user network
    /// (nothing routed beyond the host's loopback), its `kubectl` relays
    /// to this host kubectl, which reaches the guest's API server on this
    /// port through a forwarded host port ([`crate::relay`]).
    pub kubectl_relay: Option<KubectlRelay>,
}

/// The host side of a guest's `kubectl` ([`Guest::kubectl_relay`]).
#[derive(Clone, Debug)]
pub struct KubectlRelay {
    /// The real kubectl, on the host.
    pub kubectl: PathBuf,
    /// The guest's API server port.
    pub api_port: u16,
}

/// Where a run's scenario output goes as it arrives.
pub type LineSink<'a> = &'a mut dyn FnMut(&str);

impl Guest {
    /// A guest from a kernel and a payload. The payload gets the init
    /// script, busybox and the scenario helpers added.
    pub fn new(kernel: Kernel, mut payload: Initramfs) -> Result<Guest> {
        let busybox = host_busybox()?;
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
            payload: Arc::new(payload.to_bytes()?),
            memory_mib: 1024,
            cpus: 1,
            timeout,
            snapshot_setup: None,
            kubectl_relay: None,
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
    /// A guest with a [`Guest::snapshot_setup`] is resumed from its saved
    /// state (booted, set up and saved first if there is none).
    pub fn run_streaming(&self, script: &str, sink: LineSink<'_>) -> Result<GuestRun> {
        match &self.snapshot_setup {
            Some(setup) if snapshots_wanted() => self.resume_and_run(setup, script, sink),
            Some(setup) => {
                // The setup, then the scenario, on one boot.
                let both = format!("( {setup} ) || exit 1\n{script}");
                self.boot_and_run(&both, sink)
            }
            None => self.boot_and_run(script, sink),
        }
    }

    /// Boots, runs the scenario, powers off.
    fn boot_and_run(&self, script: &str, sink: LineSink<'_>) -> Result<GuestRun> {
        let qemu = require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let dir = tempfile::tempdir().map_err(RigError::io("creating a run directory"))?;
        let initrd = self.write_initrd(dir.path(), &[("/guest/mode", "run"), ("/guest/scenario.sh", script)])?;
        let mut cmd = self.qemu_command(&qemu, &initrd)?;
        let files = Serials::new(dir.path(), &mut cmd);
        let _relay = self.network(&mut cmd)?;
        cmd.stdin(Stdio::null());
        let started = Instant::now();
        let child = spawn_qemu(cmd)?;
        self.follow(child, &files, started, sink)
    }

    /// Resumes the saved guest of `setup` (saving it first when there is
    /// none) and runs the scenario in it. A saved state QEMU cannot load
    /// (left by another QEMU build, cut short) is saved anew, once.
    fn resume_and_run(&self, setup: &str, script: &str, sink: LineSink<'_>) -> Result<GuestRun> {
        let qemu = require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let key = self.snapshot_key(&qemu, setup)?;
        let slot = snapshot::Slot::take(&key)?;
        let fresh = !slot.exists();
        if fresh {
            self.save(&qemu, setup, &slot, sink)?;
            slot.commit()?;
        }
        slot.touch();
        match self.resume(&qemu, slot, script, sink) {
            Ok(run) => run,
            Err((e, back)) if !fresh => {
                eprintln!(
                    "the saved guest {} could not be resumed ({e}): saving it anew",
                    back.state.display()
                );
                back.discard();
                self.resume_and_run_again(&qemu, setup, back, script, sink)
            }
            Err((e, _)) => Err(e),
        }
    }

    /// [`Guest::resume_and_run`] after its saved state was discarded.
    fn resume_and_run_again(
        &self,
        qemu: &Path,
        setup: &str,
        slot: snapshot::Slot,
        script: &str,
        sink: LineSink<'_>,
    ) -> Result<GuestRun> {
        self.save(qemu, setup, &slot, sink)?;
        slot.commit()?;
        self.resume(qemu, slot, script, sink).map_err(|(e, _)| e)?
    }

    /// Starts a QEMU that loads the slot's state, lets the guest go on
    /// (the slot released once loaded), hands it the scenario and follows
    /// it. Failing to load gives the slot back with the error.
    #[allow(clippy::result_large_err)]
    fn resume(
        &self,
        qemu: &Path,
        slot: snapshot::Slot,
        script: &str,
        sink: LineSink<'_>,
    ) -> std::result::Result<Result<GuestRun>, (RigError, snapshot::Slot)> {
        let io = |e: RigError, slot| Err((e, slot));
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => return io(RigError::io("creating a run directory")(e), slot),
        };
        // The kernel and an initramfs are loaded as at boot, then replaced
        // by the saved memory: any initramfs does.
        let initrd = dir.path().join("initrd.cpio");
        if let Err(e) = fs::write(&initrd, b"\n") {
            return io(RigError::io("writing the resume's initramfs")(e), slot);
        }
        let mut cmd = match self.qemu_command(qemu, &initrd) {
            Ok(c) => c,
            Err(e) => return io(e, slot),
        };
        let files = Serials::new(dir.path(), &mut cmd);
        let _relay = match self.network(&mut cmd) {
            Ok(r) => r,
            Err(e) => return io(e, slot),
        };
        let qmp_path = dir.path().join("qmp.sock");
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-incoming")
            .arg(format!(
                "exec:cat {}",
                snapshot::shell_quote(&slot.state.to_string_lossy())
            ))
            .stdin(Stdio::piped());
        let started = Instant::now();
        let mut child = match spawn_qemu(cmd) {
            Ok(c) => c,
            Err(e) => return io(e, slot),
        };
        let resumed = snapshot::Qmp::connect(&qmp_path, Duration::from_secs(30))
            .and_then(|mut qmp| qmp.resume(Duration::from_secs(120)));
        if let Err(e) = resumed {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            let e = RigError::Command {
                what: format!("resuming the saved guest {}", slot.state.display()),
                detail: format!("{e}\nqemu: {stderr}"),
            };
            return io(e, slot);
        }
        drop(slot);
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let text = format!(
            "{}{script}",
            snapshot::scenario_header(script.len(), std::time::SystemTime::now())
        );
        // (A thread: the guest takes the script as fast as its serial port
        // goes. QEMU's stdin stays open until the guest has powered off.)
        let writer = thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(text.as_bytes()).and_then(|()| stdin.flush());
            stdin
        });
        let run = self.follow(child, &files, started, sink);
        drop(writer.join());
        Ok(run)
    }

    /// Boots the guest in `serve` mode, waits for its setup to end, saves
    /// it into the slot's partial file. The setup's output goes to `sink`.
    fn save(&self, qemu: &Path, setup: &str, slot: &snapshot::Slot, sink: LineSink<'_>) -> Result<()> {
        let dir = tempfile::tempdir().map_err(RigError::io("creating a run directory"))?;
        let initrd = self.write_initrd(dir.path(), &[("/guest/mode", "serve"), ("/guest/setup.sh", setup)])?;
        let mut cmd = self.qemu_command(qemu, &initrd)?;
        let files = Serials::new(dir.path(), &mut cmd);
        let _relay = self.network(&mut cmd)?;
        let qmp_path = dir.path().join("qmp.sock");
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null());
        let started = Instant::now();
        let mut child = spawn_qemu(cmd)?;
        let (lines, errors) = read_output(&mut child);
        let deadline = started + self.timeout;
        let mut output = String::new();
        let failed = |output: &str, why: String, files: &Serials| {
            let text = read_lossy(&files.console);
            RigError::Command {
                what: "the guest's setup before it is saved".into(),
                detail: format!(
                    "{why}\n--- setup output ---\n{output}\n--- console tail ---\n{}\n{}",
                    console_excerpt(&text),
                    keep_console(&text)
                ),
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == snapshot::SAVE_MARKER => break,
                Ok(line) if line.starts_with(EXIT_MARKER) => {
                    let _ = wait_until(&mut child, Instant::now() + Duration::from_secs(10));
                    return Err(failed(&output, format!("the setup failed ({line})"), &files));
                }
                Ok(line) => {
                    sink(&line);
                    output.push_str(&line);
                    output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed(
                        &output,
                        format!("not done after {} s", self.timeout.as_secs()),
                        &files,
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_until(&mut child, Instant::now() + Duration::from_secs(10))?;
                    let qemu_errors = errors.join().unwrap_or_default();
                    return Err(failed(&output, format!("QEMU ended ({status}): {qemu_errors}"), &files));
                }
            }
        }
        let booted = started.elapsed();
        let saved = snapshot::Qmp::connect(&qmp_path, Duration::from_secs(30)).and_then(|mut qmp| {
            let bytes = qmp.save(&slot.partial(), Duration::from_secs(300))?;
            let _ = qmp.execute("quit", None);
            Ok(bytes)
        });
        let status = wait_until(&mut child, Instant::now() + Duration::from_secs(30))?;
        let bytes = saved.map_err(|e| failed(&output, format!("saving it: {e} (QEMU: {status})"), &files))?;
        let line = format!(
            "# guest set up in {:.1} s and saved in {:.1} s ({} MiB of memory): {}",
            booted.as_secs_f64(),
            (started.elapsed() - booted).as_secs_f64(),
            bytes >> 20,
            slot.state.display()
        );
        eprintln!("{line}");
        Ok(())
    }

    /// The digest of everything a saved guest of this setup is made of.
    fn snapshot_key(&self, qemu: &Path, setup: &str) -> Result<String> {
        let version = crate::process::output({
            let mut c = Command::new(qemu);
            c.arg("--version");
            c
        })
        .map_err(RigError::io("qemu-system-x86_64 --version"))?
        .stdout;
        let kernel =
            fs::read(&self.kernel.image).map_err(RigError::io(format!("reading {}", self.kernel.image.display())))?;
        let accel = accel::choice()?;
        let machine = format!(
            "{} {} {} {:?} relay {:?}",
            self.memory_mib,
            self.cpus,
            accel.accel.as_str(),
            self.accel_args(accel.accel),
            self.kubectl_relay.as_ref().map(|r| r.api_port)
        );
        Ok(snapshot::key(&[
            b"mock-device guest snapshot v1",
            &version,
            &kernel,
            machine.as_bytes(),
            INIT.as_bytes(),
            setup.as_bytes(),
            &self.payload,
        ]))
    }

    /// Boots to an interactive shell on this terminal (ttyS0). Ctrl-A X quits
    /// QEMU; `poweroff -f` ends the guest.
    pub fn shell(&self) -> Result<ExitStatus> {
        let qemu = require_tool("qemu-system-x86_64", QEMU_HINT)?;
        let dir = tempfile::tempdir().map_err(RigError::io("creating a run directory"))?;
        let initrd = self.write_initrd(dir.path(), &[("/guest/mode", "shell")])?;
        self.qemu_command(&qemu, &initrd)?
            .args(["-serial", "mon:stdio", "-serial", "null", "-serial", "null"])
            .status()
            .map_err(RigError::io("starting qemu-system-x86_64"))
    }

    /// The payload and a small archive with these files, as one initramfs.
    fn write_initrd(&self, dir: &Path, files: &[(&str, &str)]) -> Result<PathBuf> {
        use std::io::Write;
        let mut run = Initramfs::new();
        for (path, text) in files {
            let mode = if path.ends_with(".sh") { EXEC } else { FILE };
            run.data(path, mode, *text);
        }
        let path = dir.join("initrd.cpio");
        let mut out = std::io::BufWriter::new(fs::File::create(&path).map_err(RigError::io("writing the initramfs"))?);
        out.write_all(&self.payload)
            .map_err(RigError::io("writing the initramfs"))?;
        let mut out = run.write_to(out)?;
        out.flush().map_err(RigError::io("writing the initramfs"))?;
        Ok(path)
    }

    /// The guest's network device and what serves it on the host, when it
    /// has a [`Guest::kubectl_relay`]: QEMU's user network, isolated
    /// (`restrict=on`: the guest reaches only what is forwarded), a host
    /// loopback port forwarded to the guest's API server, and
    /// [`relay::GUEST_ADDR`] forwarded to the relay (a `busybox nc` per
    /// connection). The relay lives as long as the returned value.
    fn network(&self, cmd: &mut Command) -> Result<Option<relay::Relay>> {
        let Some(r) = &self.kubectl_relay else { return Ok(None) };
        let host_api = crate::cluster::free_port();
        let relay = relay::Relay::start(r.kubectl.clone(), r.api_port, host_api)
            .map_err(RigError::io("starting the kubectl relay"))?;
        let (addr, port) = relay::GUEST_ADDR.split_once(':').expect("host:port");
        cmd.arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{host_api}-:{},guestfwd=tcp:{addr}:{port}-cmd:{} nc 127.0.0.1 {}",
                r.api_port,
                host_busybox()?.display(),
                relay.port
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"]);
        Ok(Some(relay))
    }

    /// The accelerator's QEMU arguments: `-accel` and `-cpu`.
    fn accel_args(&self, accel: Accel) -> Vec<String> {
        match accel {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec!["-accel".into(), tcg_accel().into(), "-cpu".into(), "max".into()],
        }
    }

    fn qemu_command(&self, qemu: &Path, initrd: &Path) -> Result<Command> {
        let mut cmd = Command::new(qemu);
        cmd.args(self.accel_args(accel::choice()?.accel))
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&self.kernel.image)
            .arg("-initrd")
            .arg(initrd)
            // Warnings reach the console too (loglevel 5: KERN_WARNING and
            // worse), so a guest that dies shows the WARN that tainted it first.
            .args(["-append", "console=ttyS0 panic=-1 loglevel=5"]);
        Ok(cmd)
    }

    /// Collects a started guest's scenario output until its exit marker and
    /// QEMU's exit (or the deadline), then its kernel log.
    fn follow(&self, mut child: Child, files: &Serials, started: Instant, sink: LineSink<'_>) -> Result<GuestRun> {
        let (lines, stderr_reader) = read_output(&mut child);
        let deadline = started + self.timeout;
        let mut output = String::new();
        let mut exit_code = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
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
                    let text = read_lossy(&files.console);
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
        let console_text = read_lossy(&files.console);
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
            dmesg: read_lossy(&files.dmesg).replace('\r', ""),
            console: console_text,
            elapsed,
        })
    }
}

/// Whether node guests start from saved guests (`MOCK_GUEST_SNAPSHOT=0`:
/// every run boots and sets up anew).
fn snapshots_wanted() -> bool {
    std::env::var("MOCK_GUEST_SNAPSHOT").map_or(true, |v| v != "0")
}

/// The guest's serial ports: ttyS0 the kernel console (a file), ttyS1 the
/// scenario's output (QEMU's stdout; its stdin is the port's input), ttyS2
/// the kernel log at the end (a file).
struct Serials {
    console: PathBuf,
    dmesg: PathBuf,
}

impl Serials {
    fn new(dir: &Path, cmd: &mut Command) -> Serials {
        let files = Serials {
            console: dir.join("console.log"),
            dmesg: dir.join("dmesg.log"),
        };
        cmd.arg("-serial")
            .arg(format!("file:{}", files.console.display()))
            .args(["-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", files.dmesg.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        files
    }
}

/// The host's busybox (setup installs busybox-static).
pub(crate) fn host_busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(RigError::MissingTool {
            tool: "busybox".into(),
            hint: "install it with `apt-get install -y busybox-static` (or run ./dev setup)",
        })
}

fn spawn_qemu(cmd: Command) -> Result<Child> {
    crate::process::spawn(cmd).map_err(RigError::io("starting qemu-system-x86_64"))
}

/// QEMU's stdout as lines (`\r` trimmed) on a channel, and its stderr
/// collected by a thread.
fn read_output(child: &mut Child) -> (mpsc::Receiver<String>, thread::JoinHandle<String>) {
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
    (rx, stderr_reader)
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
