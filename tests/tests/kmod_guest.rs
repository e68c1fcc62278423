//! The mock-accel module in a real Debian kernel under QEMU.
//!
//! Each test boots a guest (about 5 s under software emulation), runs one
//! scenario from `tests/scenarios/`, and checks its TAP lines, its exit
//! status and the guest's kernel log.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use mock_device_testkit::guest::{Guest, GuestRun};
use mock_device_testkit::kernel::Kernel;
use mock_device_testkit::{RigError, workspace_root};

/// The guest on the default kernel (the newest installed).
fn guest() -> &'static Guest {
    guests()
        .iter()
        .rfind(|g| !g.kernel().sanitizing)
        .expect("a guest kernel")
}

/// Set to 1, the scenarios run on the sanitizing kernel too (`just
/// kmod-sanitize`, which builds it first).
const SANITIZING_ENV: &str = "MOCK_KMOD_SANITIZING";

/// One guest per installed kernel with headers, oldest first: every scenario
/// of the module runs on each (Debian's 6.1 and 6.12). With
/// `MOCK_KMOD_SANITIZING=1`, then on the sanitizing kernel (`just
/// debug-kernel`): 6.12 with KASAN, lockdep, kmemleak, UBSAN, debugobjects
/// and list debugging, whose reports fail the run like any kernel problem.
/// `just test` leaves it to `just kmod-sanitize`: its build and its slower
/// runs cost a cold `./dev test` about 10 of its minutes.
fn guests() -> &'static [Guest] {
    static GUESTS: OnceLock<Vec<Guest>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let tool = Path::new(env!("CARGO_BIN_EXE_guest-tool"));
        let mut kernels = Kernel::all().unwrap_or_else(|e| panic!("cannot list the guest kernels: {e}"));
        assert!(!kernels.is_empty(), "no guest kernel with headers: run ./dev setup");
        match std::env::var(SANITIZING_ENV).as_deref() {
            Ok("1") => kernels.push(Kernel::sanitizing().unwrap_or_else(|e| panic!("{e}"))),
            Ok("0") | Err(_) => {}
            Ok(other) => panic!("{SANITIZING_ENV}={other}: 1 (also the sanitizing kernel) or 0"),
        }
        kernels
            .into_iter()
            .map(|k| {
                let release = k.release.clone();
                Guest::with_module_on(k, &[("guest-tool", tool)])
                    .unwrap_or_else(|e| panic!("cannot set up the guest on {release}: {e}"))
            })
            .collect()
    })
}

/// Runs a scenario on every kernel, each checked with `check`.
fn on_every_kernel(name: &str, cpus: u32, check: impl Fn(&GuestRun)) {
    for g in guests() {
        let mut g = g.clone();
        g.cpus = cpus;
        eprintln!("{name} on {}", g.kernel().release);
        check(&scenario_on(&g, name));
    }
}

fn scenario_on(guest: &Guest, name: &str) -> GuestRun {
    let path = workspace_root().join("tests/scenarios").join(name);
    let script = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    script_on(guest, name, &script)
}

fn script_on(guest: &Guest, name: &str, script: &str) -> GuestRun {
    let mut run = guest
        .run(script)
        .unwrap_or_else(|e| panic!("{name} on {}: {e}", guest.kernel().release));
    // A kernel problem logged before the module was loaded is the boot's
    // (`GuestRun::first_kernel_problem_before_module`): said on the real
    // stderr, and the scenario run once more; a second one fails the test.
    if run.first_kernel_problem_before_module() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{name} on {}: THE KERNEL REPORTED A PROBLEM BEFORE THE MODULE WAS LOADED; running the scenario once more:\n{}",
            guest.kernel().release,
            run.kernel_problems().join("\n")
        );
        run = guest
            .run(script)
            .unwrap_or_else(|e| panic!("{name} on {} (second run): {e}", guest.kernel().release));
    }
    eprintln!(
        "{name} on {}: guest run took {:.1} s",
        guest.kernel().release,
        run.elapsed.as_secs_f64()
    );
    run
}

#[test]
fn modprobe_with_default_parameters() {
    on_every_kernel("load_defaults.sh", 1, |r| r.assert_clean(90));
}

#[test]
fn modprobe_with_custom_and_invalid_parameters() {
    on_every_kernel("load_params.sh", 1, |r| r.assert_clean(45));
}

#[test]
fn bad_input_gets_the_right_errno_and_no_kernel_problem() {
    on_every_kernel("bad_input.sh", 1, |r| r.assert_clean(55));
}

#[test]
fn fabric_attach_takes_its_time_can_fail_and_gates_allocation() {
    on_every_kernel("fabric.sh", 1, |r| r.assert_clean(31));
}

#[test]
fn unload_with_vfs_enabled_and_devices_allocated_is_clean() {
    on_every_kernel("unload_busy.sh", 1, |r| r.assert_clean(19));
}

#[test]
fn concurrent_hotplug_sriov_and_allocation_stay_consistent() {
    on_every_kernel("stress.sh", 2, |r| r.assert_clean(11));
}

/// Issue 17 #2, #4, #5: async_probe, a status write racing probe, unload
/// racing new_device. Two vCPUs, so the races are real.
#[test]
fn races_with_probe_and_unload_keep_the_promises() {
    on_every_kernel("kmod_races.sh", 2, |r| r.assert_clean(11));
}

/// Issue 35: a PF's owner (many nodes on one kernel): compare-and-set,
/// VFs following their PF, new_device with an owner, the uevents, and
/// eight writers racing for each unowned PF with one winner. Two vCPUs.
#[test]
fn an_owner_per_pf_with_one_winner_among_racing_writers() {
    on_every_kernel("kmod_owner.sh", 2, |r| r.assert_clean(30));
}

/// Random hot-plug, SR-IOV, status/health, bind/unbind, character-device
/// reads while devices go, and unloads racing it all, in rounds (the short
/// run; `just kmod-sanitize` runs it for long on the sanitizing kernel).
#[test]
fn random_operations_from_every_side_leave_no_kernel_problem() {
    on_every_kernel("kmod_sanitize.sh", 2, |r| {
        r.assert_clean(8);
        let summary = r
            .output
            .lines()
            .find(|l| l.starts_with("stress: "))
            .unwrap_or("no summary");
        eprintln!("{summary}");
    });
}

/// Every uevent of hotplug.sh, in order: `ACTION DEVPATH`, plus the change
/// event's kind and value.
const HOTPLUG_EVENTS: &str = "
add /devices/mock-accel/0000:1a:00.0
add /devices/mock-accel/0000:1a:00.0/mock-accel/mock0
bind /devices/mock-accel/0000:1a:00.0
add /module/mock_accel
add /devices/mock-accel/0000:1f:00.0
add /devices/mock-accel/0000:1f:00.0/mock-accel/mock5
bind /devices/mock-accel/0000:1f:00.0
add /devices/mock-accel/0000:1f:00.1
add /devices/mock-accel/0000:1f:00.1/mock-accel/mock5_vf0
bind /devices/mock-accel/0000:1f:00.1
add /devices/mock-accel/0000:1f:00.2
add /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1
bind /devices/mock-accel/0000:1f:00.2
change /devices/mock-accel/0000:1f:00.0/mock-accel/mock5 sriov MOCK_ACCEL_NUMVFS=2
change /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1 status MOCK_ACCEL_STATUS=1
change /devices/mock-accel/0000:1f:00.0/mock-accel/mock5 health MOCK_ACCEL_HEALTH=failed
change /devices/mock-accel/0000:1f:00.0/mock-accel/mock5 health MOCK_ACCEL_HEALTH=ok
change /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1 status MOCK_ACCEL_STATUS=0
remove /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1
unbind /devices/mock-accel/0000:1f:00.2
remove /devices/mock-accel/0000:1f:00.2
remove /devices/mock-accel/0000:1f:00.1/mock-accel/mock5_vf0
unbind /devices/mock-accel/0000:1f:00.1
remove /devices/mock-accel/0000:1f:00.1
change /devices/mock-accel/0000:1f:00.0/mock-accel/mock5 sriov MOCK_ACCEL_NUMVFS=0
add /devices/mock-accel/0000:1f:00.1
add /devices/mock-accel/0000:1f:00.1/mock-accel/mock5_vf0
bind /devices/mock-accel/0000:1f:00.1
add /devices/mock-accel/0000:1f:00.2
add /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1
bind /devices/mock-accel/0000:1f:00.2
add /devices/mock-accel/0000:1f:00.3
add /devices/mock-accel/0000:1f:00.3/mock-accel/mock5_vf2
bind /devices/mock-accel/0000:1f:00.3
add /devices/mock-accel/0000:1f:00.4
add /devices/mock-accel/0000:1f:00.4/mock-accel/mock5_vf3
bind /devices/mock-accel/0000:1f:00.4
change /devices/mock-accel/0000:1f:00.0/mock-accel/mock5 sriov MOCK_ACCEL_NUMVFS=4
remove /devices/mock-accel/0000:1f:00.4/mock-accel/mock5_vf3
unbind /devices/mock-accel/0000:1f:00.4
remove /devices/mock-accel/0000:1f:00.4
remove /devices/mock-accel/0000:1f:00.3/mock-accel/mock5_vf2
unbind /devices/mock-accel/0000:1f:00.3
remove /devices/mock-accel/0000:1f:00.3
remove /devices/mock-accel/0000:1f:00.2/mock-accel/mock5_vf1
unbind /devices/mock-accel/0000:1f:00.2
remove /devices/mock-accel/0000:1f:00.2
remove /devices/mock-accel/0000:1f:00.1/mock-accel/mock5_vf0
unbind /devices/mock-accel/0000:1f:00.1
remove /devices/mock-accel/0000:1f:00.1
remove /devices/mock-accel/0000:1f:00.0/mock-accel/mock5
unbind /devices/mock-accel/0000:1f:00.0
add /devices/mock-accel/0000:1f:00.0/mock-accel/mock5
bind /devices/mock-accel/0000:1f:00.0
add /devices/mock-accel/0000:21:00.0
add /devices/mock-accel/0000:21:00.0/mock-accel/mock7
bind /devices/mock-accel/0000:21:00.0
remove /devices/mock-accel/0000:21:00.0/mock-accel/mock7
unbind /devices/mock-accel/0000:21:00.0
remove /devices/mock-accel/0000:21:00.0
remove /devices/mock-accel/0000:1f:00.0/mock-accel/mock5
unbind /devices/mock-accel/0000:1f:00.0
remove /devices/mock-accel/0000:1f:00.0
remove /devices/mock-accel/0000:1a:00.0/mock-accel/mock0
unbind /devices/mock-accel/0000:1a:00.0
remove /devices/mock-accel/0000:1a:00.0
remove /module/mock_accel
";

struct Event<'a> {
    action: &'a str,
    devpath: &'a str,
    props: Vec<&'a str>,
}

impl Event<'_> {
    fn prop(&self, key: &str) -> Option<&str> {
        self.props.iter().find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
    }

    /// `ACTION DEVPATH[ KIND KEY=VALUE]`, the form of HOTPLUG_EVENTS.
    fn summary(&self) -> String {
        let mut s = format!("{} {}", self.action, self.devpath);
        if let Some(kind) = self.prop("MOCK_ACCEL_EVENT") {
            let value = self
                .props
                .iter()
                .find(|p| {
                    ["MOCK_ACCEL_NUMVFS=", "MOCK_ACCEL_STATUS=", "MOCK_ACCEL_HEALTH="]
                        .iter()
                        .any(|k| p.starts_with(k))
                })
                .copied()
                .unwrap_or("<no value>");
            s.push_str(&format!(" {kind} {value}"));
        }
        s
    }
}

/// The module follows the behaviour table (testkit's `behaviour`) that
/// the agent's user-space sim follows too (agent/tests/sim_behaviour.rs):
/// each write's errno, each read, each step's uevents. On the default
/// kernel: the table is the sim's reference, and the scenarios above cover
/// the same ABI on every kernel.
#[test]
fn the_module_follows_the_behaviour_table() {
    use mock_device_testkit::behaviour;
    let g = guest();
    let run = script_on(g, "the behaviour table", &behaviour::guest_script());
    run.assert_clean(0);
    if let Err(diffs) = behaviour::check(&behaviour::guest_observed(&run.output)) {
        panic!(
            "the module on {} differs from the behaviour table:\n{diffs}\n--- output ---\n{}",
            g.kernel().release,
            run.output
        );
    }
}

#[test]
fn hotplug_sriov_status_and_health_send_uevents_in_order() {
    on_every_kernel("hotplug.sh", 1, check_hotplug_events);
}

fn check_hotplug_events(run: &GuestRun) {
    run.assert_clean(50);

    let events: Vec<Event> = run
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("EVENT "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            Event {
                action: parts.next().unwrap_or(""),
                devpath: parts.next().unwrap_or(""),
                props: parts.collect(),
            }
        })
        .collect();
    let got: Vec<String> = events.iter().map(Event::summary).collect();
    let expected: Vec<&str> = HOTPLUG_EVENTS.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        got,
        expected,
        "uevent sequence differs\n--- got ---\n{}",
        got.join("\n")
    );

    // What a listener needs is in the event itself, without reading sysfs.
    for e in events.iter().filter(|e| e.devpath.contains("/mock-accel/mock")) {
        let name = e.devpath.rsplit('/').next().unwrap();
        let pci = e.devpath.split('/').nth(3).unwrap();
        assert_eq!(e.prop("SUBSYSTEM"), Some("mock-accel"), "{}", e.summary());
        assert_eq!(
            e.prop("DEVNAME"),
            Some(format!("mock-accel/{name}").as_str()),
            "{}",
            e.summary()
        );
        assert_eq!(e.prop("MOCK_ACCEL_PCI"), Some(pci), "{}", e.summary());
        assert!(
            e.prop("MOCK_ACCEL_UUID").is_some_and(|u| u.len() == 36),
            "{}",
            e.summary()
        );
        assert!(e.prop("MOCK_ACCEL_NUMA_NODE").is_some(), "{}", e.summary());
        assert!(e.prop("MOCK_ACCEL_MEMORY_SIZE").is_some(), "{}", e.summary());
        if name.contains("_vf") {
            assert_eq!(e.prop("MOCK_ACCEL_TYPE"), Some("vf"), "{}", e.summary());
            assert_eq!(e.prop("MOCK_ACCEL_PHYSFN"), Some("mock5"), "{}", e.summary());
            assert_eq!(
                e.prop("MOCK_ACCEL_VF_INDEX"),
                name.rsplit("_vf").next(),
                "{}",
                e.summary()
            );
        } else {
            assert_eq!(e.prop("MOCK_ACCEL_TYPE"), Some("pf"), "{}", e.summary());
            assert_eq!(e.prop("MOCK_ACCEL_PHYSFN"), None, "{}", e.summary());
        }
    }
}

/// The rig itself: it reports a failing scenario's status, notices kernel
/// traces in the log, and stops a guest that runs past its deadline.
#[test]
fn rig_reports_exit_status_kernel_traces_and_timeouts() {
    let run = guest()
        .run("echo before; echo l > /proc/sysrq-trigger; echo after; exit 3")
        .expect("the guest runs");
    assert_eq!(run.exit_code, 3);
    assert_eq!(run.output, "before\nafter\n");
    assert!(
        !run.kernel_problems().is_empty(),
        "a sysrq backtrace must count as a kernel problem\n{}",
        run.dmesg
    );

    let mut short = guest().clone();
    short.timeout = Duration::from_secs(20);
    match short.run("echo sleeping; sleep 600") {
        Err(RigError::Timeout { output, .. }) => assert_eq!(output, "sleeping\n"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// `make W=1 C=2`: no compiler warning, and sparse reports nothing.
#[test]
fn module_builds_without_warnings_at_w1_and_sparse() {
    assert!(
        Path::new("/usr/bin/sparse").is_file(),
        "sparse not found: install it with `apt-get install -y sparse` (or run ./dev setup)"
    );
    for kernel in Kernel::all().expect("the guest kernels") {
        w1_and_sparse_clean(&kernel);
    }
}

fn w1_and_sparse_clean(kernel: &Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let (_ko, text) = kernel
        .build_module_with(&workspace_root().join("kmod"), dir.path(), &["W=1", "C=2"])
        .unwrap_or_else(|e| panic!("{}: {e}", kernel.release));
    let sources = std::fs::read_dir(workspace_root().join("kmod"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".c") && !name.ends_with(".mod.c"))
        .count();
    let checked = text.lines().filter(|l| l.trim_start().starts_with("CHECK")).count();
    assert_eq!(
        checked, sources,
        "{}: sparse must check every C file:\n{text}",
        kernel.release
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("warning:") || l.contains("error:") || l.contains(": note:"))
        .collect();
    assert!(
        complaints.is_empty(),
        "{}: W=1 / sparse complaints:\n{}",
        kernel.release,
        complaints.join("\n")
    );
}
