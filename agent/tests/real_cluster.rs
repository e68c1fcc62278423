//! The agent and the controller against the real kube-apiserver v1.37.2 (with
//! its etcd, on loopback; `mock_device_testkit::cluster`), the referee for
//! what our test API server imitates: TLS and client certificates, the real
//! validation of ResourceSlices, Leases and Events, the chart's DeviceClasses
//! (their CEL compiled by the real server), and the write counts the real
//! server itself reports (`apiserver_request_total`).
//!
//! The agent runs as a process on a fake sysfs tree (no kernel here: the
//! guest tests do that) with cluster-admin credentials (the chart's own RBAC
//! is the Helm install's business).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_accel_agent::backend::sysfs::{write_fake_function, write_fake_tree};
use mock_device_testkit::cluster::{ControlPlane, VERSION};
use serde_json::Value;

mod common;

const DRIVER: &str = "mock-accel.example.com";

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let out = cp.kubectl(args).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` until it gives a value; a deadline generous for a loaded 2-core machine.
fn wait_for<T>(what: &str, logs: &dyn Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The devices of the driver's slices, as `kubectl get resourceslices` sees them.
fn published(cp: &ControlPlane) -> (Vec<String>, Vec<Value>) {
    let list = kubectl_json(
        cp,
        &["get", "resourceslices", "-l", &format!("driver={DRIVER}"), "-o", "json"],
    );
    let items = list["items"].as_array().unwrap().clone();
    let mut names: Vec<String> = items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    (names, items)
}

/// The real server's count of ResourceSlice writes since it started.
fn slice_writes(cp: &ControlPlane) -> u64 {
    cp.writes("resourceslices").unwrap()
}

/// The counter sets of the slices, and which set each device consumes from.
fn counters(items: &[Value]) -> (Vec<String>, std::collections::BTreeMap<String, String>) {
    let sets = items
        .iter()
        .flat_map(|s| s["spec"]["sharedCounters"].as_array().cloned().unwrap_or_default())
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let consumed = items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let set = d["consumesCounters"][0]["counterSet"].as_str()?.to_string();
            Some((d["name"].as_str().unwrap().to_string(), set))
        })
        .collect();
    (sets, consumed)
}

/// The text of an admin endpoint, blocking ("" if it does not answer).
fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A node agent process for node-a, cluster-admin, on a fake sysfs tree of
/// 2 PFs with 2 VFs each found by rescans every 200 ms (no kubelet plugin).
struct FakeNode {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    log: std::path::PathBuf,
    admin: std::net::SocketAddr,
    agent: common::Killed,
}

impl FakeNode {
    fn start(cp: &ControlPlane, extra: &[&str]) -> FakeNode {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, 2, 2).unwrap();
        let log = dir.path().join("agent.log");
        let admin = common::free_port();
        let mut args: Vec<String> = vec![
            "--node-name=node-a".into(),
            format!("--sysfs-root={}", root.display()),
            "--uevents=false".into(),
            "--ebpf=false".into(),
            "--rescan-interval=200ms".into(),
            "--heartbeat-interval=1s".into(),
            format!("--admin-address={admin}"),
            "--kubelet-plugin=false".into(),
            format!("--plugin-socket={}", dir.path().join("plugin").display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let agent = spawn_agent(&cp.admin_kubeconfig, &log, &args);
        FakeNode {
            dir,
            root,
            log,
            admin,
            agent,
        }
    }
}

/// The agent's log and the API server's last lines (for failures).
fn agent_logs(cp: &ControlPlane, log: &Path) -> String {
    format!(
        "--- agent ---\n{}\n--- kube-apiserver ---\n{}",
        fs::read_to_string(log).unwrap_or_default(),
        cp.apiserver.tail(30)
    )
}

fn spawn_agent(kubeconfig: &Path, log: &Path, args: &[String]) -> common::Killed {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "default")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap());
    common::Killed(mock_device_testkit::process::spawn(cmd).unwrap())
}

/// The controller (`--mode=controller`, admin credentials) for the
/// Leases in `namespace`: the process, its admin address and its log.
fn spawn_controller(
    cp: &ControlPlane,
    dir: &Path,
    namespace: &str,
    extra: &str,
) -> (common::Killed, std::net::SocketAddr, PathBuf) {
    let log = dir.join("controller.log");
    let admin = common::free_port();
    let ctl = spawn_agent(
        &cp.admin_kubeconfig,
        &log,
        &[
            "--mode=controller".into(),
            format!("--namespace={namespace}"),
            format!("--admin-address={admin}"),
            extra.into(),
        ],
    );
    (ctl, admin, log)
}

#[test]
fn the_agent_and_the_controller_under_the_real_api_server() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("the real control plane: {e}"));
    let version = kubectl_json(&cp, &["version", "-o", "json"]);
    assert_eq!(version["serverVersion"]["gitVersion"], VERSION, "{version}");

    // The chart's DeviceClasses: the real server compiles their CEL.
    let applied = cp.apply(
        &serde_json::json!({
            "apiVersion": "v1", "kind": "List",
            "items": mock_device_testkit::render_chart(&serde_json::json!({}))["mock-device/templates/deviceclasses.yaml"],
        })
        .to_string(),
    ).unwrap();
    assert!(
        applied.contains("deviceclass.resource.k8s.io/mock-accel-pf created"),
        "{applied}"
    );
    assert!(
        applied.contains("deviceclass.resource.k8s.io/mock-accel-vf created"),
        "{applied}"
    );
    cp.apply(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}"#)
        .unwrap();
    let node_uid = kubectl_json(&cp, &["get", "node", "node-a", "-o", "json"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // The agent: 2 PFs with 2 VFs each, found by rescans every 200 ms.
    let FakeNode {
        dir, root, log, agent, ..
    } = FakeNode::start(&cp, &[]);
    let logs = || agent_logs(&cp, &log);
    let (names, items) = wait_for("the devices in the real API server", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then_some((names, items))
    });
    assert_eq!(
        names,
        ["mock0", "mock0-vf0", "mock0-vf1", "mock1", "mock1-vf0", "mock1-vf1"],
        "{items:?}"
    );
    for s in &items {
        assert_eq!(s["spec"]["nodeName"], "node-a");
        assert_eq!(s["spec"]["pool"]["name"], "node-a");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], node_uid.as_str(), "{s}");
    }
    // PF/VF exclusion as shared counters, kept by the real server (1.37:
    // DRAPartitionableDevices beta, on): the sets in a slice of their own.
    let (sets, consumed) = counters(&items);
    assert_eq!(sets, ["mock0", "mock1"], "{items:?}");
    assert_eq!(consumed["mock0"], "mock0");
    assert_eq!(consumed["mock1-vf1"], "mock1");
    assert_eq!(items.len(), 2, "a counters slice and a devices slice: {items:?}");

    // Idle: rescans every 200 ms find nothing new, so nothing is written.
    // The count is the real server's own.
    let before = slice_writes(&cp);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(slice_writes(&cp), before, "idle slice writes\n{}", logs());

    // A VF appears (as sriov_numvfs would make it): published, and the
    // pool settles again with no further writes.
    write_fake_function(&root, &root.join("../../devices/mock-accel"), 1, Some(2), 3).unwrap();
    wait_for("the new VF", &logs, || {
        published(&cp).0.contains(&"mock1-vf2".to_string()).then_some(())
    });
    let settled = slice_writes(&cp);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        slice_writes(&cp),
        settled,
        "writes after the change settled\n{}",
        logs()
    );

    // The heartbeat Lease, validated by the real server.
    let lease = kubectl_json(
        &cp,
        &[
            "get",
            "lease",
            "-n",
            "default",
            &format!("{DRIVER}-node-a"),
            "-o",
            "json",
        ],
    );
    assert_eq!(lease["spec"]["holderIdentity"], "node-a", "{lease}");

    // The controller: it leads (Lease), sees the fleet, and when the Node is
    // deleted (no garbage collector runs here) deletes its slices with Events
    // the real server accepts.
    drop(agent);
    let (_ctl, ctl_admin, ctl_log) = spawn_controller(&cp, dir.path(), "default", "--rescan-interval=2s");
    let ctl_logs = || {
        format!(
            "--- controller ---\n{}\n--- kube-apiserver ---\n{}",
            fs::read_to_string(&ctl_log).unwrap_or_default(),
            cp.apiserver.tail(30)
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = || {
        rt.block_on(async {
            let get = mock_device_testkit::http_get(ctl_admin, "/metrics");
            match tokio::time::timeout(Duration::from_secs(10), async {
                tokio::net::TcpStream::connect(ctl_admin).await.ok()?;
                Some(get.await.1)
            })
            .await
            {
                Ok(Some(text)) => text,
                _ => String::new(),
            }
        })
    };
    // Its fleet view: node-a's 7 devices, free, whatever their NUMA node.
    let devices = |m: &str, state: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("mock_accel_fleet_devices{node=\"node-a\"") && l.contains(&format!("state=\"{state}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    wait_for("the controller's fleet view", &ctl_logs, || {
        let m = metrics();
        (m.contains("mock_accel_controller_leader 1") && devices(&m, "free") == 7.0).then_some(())
    });
    // Its audit (every 2 s here) lists metadata from the real server and
    // finds the caches right.
    let audits = |result: &str| -> f64 {
        let line = format!("mock_accel_controller_audits_total{{result=\"{result}\"}} ");
        metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or(0.0)
    };
    wait_for("a clean audit", &ctl_logs, || (audits("clean") >= 1.0).then_some(()));
    assert_eq!(audits("error") + audits("drift"), 0.0, "{}", ctl_logs());
    let holder = kubectl_json(
        &cp,
        &[
            "get",
            "lease",
            "-n",
            "default",
            &format!("{DRIVER}-controller"),
            "-o",
            "json",
        ],
    );
    assert!(holder["spec"]["holderIdentity"].is_string(), "{holder}");

    // A plain delete: with --cascade=orphan the Node would wait forever for
    // the garbage collector to remove its `orphan` finalizer (none runs here).
    let out = cp.kubectl(&["delete", "node", "node-a"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("node-a's slices deleted", &ctl_logs, || {
        published(&cp).1.is_empty().then_some(())
    });
    let events = wait_for("the NodeGone Events", &ctl_logs, || {
        let ev = kubectl_json(
            &cp,
            &[
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                "reason=NodeGone",
                "-o",
                "json",
            ],
        );
        let items = ev["items"].as_array().unwrap().clone();
        (!items.is_empty()).then_some(items)
    });
    assert_eq!(events[0]["involvedObject"]["kind"], "ResourceSlice", "{events:?}");
    assert!(
        !metrics().contains("op=\"event\",kind="),
        "an Event was refused by the real server:\n{}",
        ctl_logs()
    );
}

/// Issue 15 #1: a cluster whose API server has DRAPartitionableDevices off
/// (1.34/1.35 by default) drops the shared counters on write. The agent
/// notices on its first write, says so (log, metric), publishes without
/// them (one slice, nothing consumed) and then writes nothing more: no
/// loop rewriting what the server keeps dropping.
#[test]
fn with_the_gate_off_the_agent_publishes_without_counters() {
    let cp = with_node_a(&["--feature-gates=DRAPartitionableDevices=false"]);
    let node = FakeNode::start(&cp, &[]);
    let logs = || agent_logs(&cp, &node.log);
    let items = wait_for("the devices, without counters", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6 && items.len() == 1).then_some(items)
    });
    let (sets, consumed) = counters(&items);
    assert!(sets.is_empty() && consumed.is_empty(), "{items:?}");
    noticed_and_settled(
        &cp,
        &node,
        "mock_accel_shared_counters 0",
        "does not keep shared counters",
    );
}

/// The real control plane with these kube-apiserver flags, and a Node
/// node-a (no kubelet: the agent's slices need an owner).
fn with_node_a(flags: &[&str]) -> ControlPlane {
    let cp = ControlPlane::start_with(flags).unwrap_or_else(|e| panic!("the real control plane: {e}"));
    cp.apply(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}"#)
        .unwrap();
    cp
}

/// The agent says what the server dropped (a metric line, a log line) and
/// then writes nothing more.
fn noticed_and_settled(cp: &ControlPlane, node: &FakeNode, metric: &str, phrase: &str) {
    let logs = || agent_logs(cp, &node.log);
    wait_for("the metric saying so", &logs, || {
        admin_get(node.admin, "/metrics")
            .lines()
            .any(|l| l == metric)
            .then_some(())
    });
    let log = fs::read_to_string(&node.log).unwrap();
    let said = log.lines().find(|l| l.contains(phrase));
    println!("the agent: {}", said.unwrap_or_else(|| panic!("{log}")));
    let settled = slice_writes(cp);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(slice_writes(cp), settled, "writes after it settled\n{}", logs());
}

/// The health taints as the real server keeps them: (device, value, effect,
/// timeAdded).
fn taints(items: &[Value]) -> Vec<(String, String, String, String)> {
    items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .flat_map(|d| {
            let name = d["name"].as_str().unwrap().to_string();
            d["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    assert_eq!(t["key"], format!("{DRIVER}/health"), "{t}");
                    let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                    (name.clone(), s("value"), s("effect"), s("timeAdded"))
                })
        })
        .collect()
}

/// Device health as taints: the real server takes NoExecute and the
/// informational None, stamps their time, and the agent keeps that time
/// (it does not write again and again); recovery takes them away.
#[test]
fn health_taints_under_the_real_api_server() {
    let cp = with_node_a(&[]);
    let node = FakeNode::start(&cp, &["--health-taints=NoExecute"]);
    let logs = || agent_logs(&cp, &node.log);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    fs::write(node.root.join("mock1/health"), "failed\n").unwrap();
    fs::write(node.root.join("mock0_vf0/health"), "degraded\n").unwrap();
    let found = wait_for("the taints", &logs, || {
        let t = taints(&published(&cp).1);
        (t.len() == 2).then_some(t)
    });
    let what: Vec<_> = found
        .iter()
        .map(|(d, v, e, _)| (d.as_str(), v.as_str(), e.as_str()))
        .collect();
    assert_eq!(
        what,
        [("mock0-vf0", "degraded", "None"), ("mock1", "failed", "NoExecute")]
    );
    assert!(found.iter().all(|t| !t.3.is_empty()), "no time stamped: {found:?}");
    println!("the real server's taints: {found:?}");
    wait_for("the metric", &logs, || {
        let m = admin_get(node.admin, "/metrics");
        (m.contains("mock_accel_tainted_devices{effect=\"NoExecute\"} 1")
            && m.contains("mock_accel_tainted_devices{effect=\"None\"} 1"))
        .then_some(())
    });
    // Settled: the stamped times are kept, nothing more is written.
    let settled = slice_writes(&cp);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(slice_writes(&cp), settled, "writes after it settled\n{}", logs());
    // A change elsewhere keeps mock1's time.
    fs::write(node.root.join("mock0_vf0/health"), "ok\n").unwrap();
    let after = wait_for("the degraded taint gone", &logs, || {
        let t = taints(&published(&cp).1);
        (t.len() == 1).then_some(t)
    });
    assert_eq!(after[0], found[1], "mock1's taint changed");
    fs::write(node.root.join("mock1/health"), "ok\n").unwrap();
    wait_for("no taints", &logs, || {
        taints(&published(&cp).1).is_empty().then_some(())
    });
}

/// With DRADeviceTaints off (as 1.34/1.35 have it) the real server drops
/// the taints: the agent notices at the first one, says so, and publishes
/// without them from then on, no write storm.
#[test]
fn with_the_taints_gate_off_the_agent_publishes_without_taints() {
    let cp = with_node_a(&["--feature-gates=DRADeviceTaints=false,DRADeviceTaintRules=false"]);
    let node = FakeNode::start(&cp, &[]);
    let logs = || agent_logs(&cp, &node.log);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    fs::write(node.root.join("mock1/health"), "failed\n").unwrap();
    noticed_and_settled(&cp, &node, "mock_accel_health_taints 0", "does not keep device taints");
    assert!(taints(&published(&cp).1).is_empty());
}

/// The devices as the real server keeps them: (name, allowMultipleAllocations,
/// memory capacity, its request policy's default, min and step).
fn sharing(items: &[Value]) -> Vec<(String, bool, String, String, String, String)> {
    let mut out: Vec<_> = items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            let memory = &d["capacity"]["memory"];
            let policy = &memory["requestPolicy"];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&d["name"]),
                d["allowMultipleAllocations"] == Value::Bool(true),
                s(&memory["value"]),
                s(&policy["default"]),
                s(&policy["validRange"]["min"]),
                s(&policy["validRange"]["step"]),
            )
        })
        .collect();
    out.sort();
    out
}

/// Consumable capacity: the real server keeps each PF's
/// allowMultipleAllocations and memory request policy (VFs have none), and
/// the agent then writes nothing more.
#[test]
fn consumable_capacity_under_the_real_api_server() {
    let cp = with_node_a(&[]);
    let node = FakeNode::start(&cp, &["--consumable-capacity"]);
    let logs = || agent_logs(&cp, &node.log);
    let items = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then_some(items)
    });
    let kept = sharing(&items);
    println!("the real server's devices: {kept:?}");
    for (name, shared, value, default, min, step) in &kept {
        if name.contains("-vf") {
            assert!(!shared && default.is_empty(), "{name} shared: {kept:?}");
        } else {
            assert!(*shared, "{name} not shared: {kept:?}");
            assert_eq!(
                (default, min.as_str(), step.as_str()),
                (value, "1Gi", "1Gi"),
                "{kept:?}"
            );
        }
    }
    wait_for("the metric", &logs, || {
        admin_get(node.admin, "/metrics")
            .lines()
            .any(|l| l == "mock_accel_consumable_capacity 1")
            .then_some(())
    });
    let settled = slice_writes(&cp);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(slice_writes(&cp), settled, "writes after it settled\n{}", logs());
}

/// With DRAConsumableCapacity off (as 1.34/1.35 have it; DRAFractionalCapacityRange,
/// which needs it, off too or the server refuses to start) the real server
/// drops allowMultipleAllocations and the request policies: the agent
/// notices, says so, and publishes its PFs exclusive, no write storm.
#[test]
fn with_the_capacity_gate_off_the_agent_publishes_pfs_exclusive() {
    let cp = with_node_a(&["--feature-gates=DRAConsumableCapacity=false,DRAFractionalCapacityRange=false"]);
    let node = FakeNode::start(&cp, &["--consumable-capacity"]);
    let logs = || agent_logs(&cp, &node.log);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    noticed_and_settled(
        &cp,
        &node,
        "mock_accel_consumable_capacity 0",
        "does not keep consumable capacity",
    );
    assert!(sharing(&published(&cp).1).iter().all(|d| !d.1 && d.3.is_empty()));
}

/// `kubectl` with a JSON manifest on stdin (create/apply/replace), its output or error.
fn kubectl_stdin(cp: &ControlPlane, args: &[&str], manifest: &Value) -> Result<String, String> {
    let out = cp
        .kubectl_as(&cp.admin_kubeconfig, args, Some(&manifest.to_string()))
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn scenario(name: &str, spec: Value) -> Value {
    serde_json::json!({"apiVersion": format!("{DRIVER}/v1alpha1"), "kind": "DeviceScenario", "metadata": {"name": name}, "spec": spec})
}

/// A scenario's status entry for node-a, once its Applied condition says `reason`.
fn entry_when(cp: &ControlPlane, name: &str, reason: &str, logs: &dyn Fn() -> String) -> Value {
    wait_for(&format!("{name}: Applied reason {reason}"), logs, || {
        let s = kubectl_json(cp, &["get", "devicescenario", name, "-o", "json"]);
        let e = s["status"]["nodes"]
            .as_array()?
            .iter()
            .find(|e| e["node"] == "node-a")?
            .clone();
        let c = e["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Applied")?
            .clone();
        (c["reason"] == reason && e["observedGeneration"] == s["metadata"]["generation"]).then_some(e)
    })
}

/// Hot-plug and faults declared through the API (DeviceScenario), with the
/// chart's CRD and admission policy in the real server and a sim-mode agent:
/// impossible specs refused at admission with the chart's limits; a
/// declared hot-plug, VFs and a failure published; a manual change on the
/// node reported, not fought; a removal of a held device waited for; a
/// second scenario for the node told Conflict; the scenario deleted → what
/// it set given back; an agent may write only its own node's entry.
/// Objects as one `kind: List` for `kubectl apply`.
fn list(items: Vec<Value>) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The chart's DeviceScenario CRD applied and served.
fn scenarios_served(cp: &ControlPlane, chart: &std::collections::BTreeMap<String, Vec<Value>>) {
    let crd = chart["mock-device/templates/devicescenarios.yaml"].clone();
    cp.apply(&list(crd).to_string()).unwrap();
    wait_for("the CRD served", &String::new, || {
        cp.kubectl(&["get", "devicescenarios"])
            .unwrap()
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn devices_and_faults_declared_through_the_api() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("the real control plane: {e}"));
    let chart = mock_device_testkit::render_chart(&serde_json::json!({"devices": {"mode": "sim"}}));
    let rbac: Vec<Value> = chart["mock-device/templates/rbac.yaml"].clone();
    scenarios_served(&cp, &chart);
    cp.apply(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mock-device"}}"#)
        .unwrap();
    cp.apply(&list(rbac).to_string()).unwrap();
    cp.apply(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"pool": "a"}}}"#)
        .unwrap();

    // Refused at admission, the message naming what is wrong.
    for (spec, says) in [
        (
            serde_json::json!({"nodeName": "node-a", "nodeSelector": {}}),
            "exactly one of nodeName and nodeSelector",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "pfs": [{"id": 0, "vfs": 9}]}),
            "spec.pfs[0]: Invalid value: vfs is above max_vfs=8 (set by the chart in devices.sim)",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "pfs": [{"id": 64}]}),
            "spec.pfs[0].id",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "pfs": [{"id": 1, "numaNode": 2}]}),
            "numaNode is not below numa_nodes=2",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "memoryMiB": 8192}),
            "every PF has memory_mib=16384 MiB",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "devices": [{"name": "mock1", "health": "sick"}]}),
            "Unsupported value: \"sick\"",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "devices": [{"name": "gpu0"}]}),
            "spec.devices[0].name",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "devices": [{"name": "mock1", "failAttaches": -1}]}),
            "failAttaches",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "pfs": [{"id": 0, "vfs": 2}], "devices": [{"name": "mock0_vf2"}]}),
            "every device named in devices must exist under pfs",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1", "period": "1s"}]}),
            "a flap needs for (each fault's length) below period",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1", "period": "100ms", "for": "50ms"}]}),
            "period of 200ms or more",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1", "after": "1s", "afterPrepares": 2}]}),
            "after and afterPrepares are exclusive",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1_vf0", "action": "remove"}]}),
            "remove takes a PF",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1", "after": "-1s"}]}),
            "spec.faults[0].after in body should match",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "faults": [{"device": "mock1", "after": "25h"}]}),
            "at most 24h",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "pfs": [{"id": 0}], "faults": [{"device": "mock1"}]}),
            "every fault's device must exist under pfs",
        ),
        (
            serde_json::json!({"nodeName": "node-a", "attach": {"failurePercent": 101}}),
            "spec.attach.failurePercent",
        ),
    ] {
        let e = kubectl_stdin(&cp, &["create", "-f", "-"], &scenario("bad", spec.clone())).unwrap_err();
        assert!(e.contains(says), "{spec}: {e}");
        println!("refused: {}", e.trim());
    }

    // A sim-mode agent for node-a: 2 PFs, no VFs.
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let log = dir.path().join("agent.log");
    let sim = dir.path().join("sim");
    let agent = spawn_agent(
        &cp.admin_kubeconfig,
        &log,
        &[
            "--node-name=node-a".into(),
            "--devices=sim".into(),
            format!("--sim-dir={}", sim.display()),
            "--sim-pfs=2".into(),
            "--heartbeat-interval=0".into(),
            format!("--admin-address={admin}"),
            "--kubelet-plugin=false".into(),
            format!("--plugin-socket={}", dir.path().join("plugin").display()),
        ],
    );
    // And the controller, which sums the nodes' entries up.
    let ctl_log = dir.path().join("controller.log");
    let _controller = spawn_agent(
        &cp.admin_kubeconfig,
        &ctl_log,
        &[
            "--mode=controller".into(),
            "--namespace=default".into(),
            format!("--admin-address={}", common::free_port()),
        ],
    );
    let logs = || {
        format!(
            "{}\n--- controller ---\n{}",
            agent_logs(&cp, &log),
            fs::read_to_string(&ctl_log).unwrap_or_default()
        )
    };
    wait_for("the sim's devices", &logs, || {
        (published(&cp).0 == ["mock0", "mock1"]).then_some(())
    });
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"))
            .arg("ctl")
            .arg(format!("--sim-dir={}", sim.display()))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Declared: PF 0 with 2 VFs, PF 1 as it is, PF 5 hot-plugged on NUMA
    // node 1 with a VF; mock0_vf1 failed.
    let s1 = scenario(
        "s1",
        serde_json::json!({
            "nodeSelector": {"matchLabels": {"pool": "a"}},
            "pfs": [{"id": 0, "vfs": 2}, {"id": 1}, {"id": 5, "numaNode": 1, "vfs": 1}],
            "devices": [{"name": "mock0_vf1", "health": "failed"}]
        }),
    );
    kubectl_stdin(&cp, &["create", "-f", "-"], &s1).unwrap();
    let e = entry_when(&cp, "s1", "Applied", &logs);
    assert_eq!(e["applied"], true, "{e}");
    let (names, items) = wait_for("the declared devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6 && !taints(&items).is_empty()).then_some((names, items))
    });
    assert_eq!(
        names,
        ["mock0", "mock0-vf0", "mock0-vf1", "mock1", "mock5", "mock5-vf0"]
    );
    let t = taints(&items);
    assert_eq!((t[0].0.as_str(), t[0].1.as_str()), ("mock0-vf1", "failed"), "{t:?}");
    let mock5 = items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .find(|d| d["name"] == "mock5")
        .unwrap();
    assert_eq!(mock5["attributes"]["numaNode"]["int"], 1, "{mock5}");
    let e = entry_when(&cp, "s1", "Applied", &logs);
    let devices = e["devices"].as_array().unwrap();
    assert!(
        devices.iter().any(|d| d["name"] == "mock5" && d["present"] == true),
        "{e}"
    );
    // An Event per change, in `default`, about the scenario.
    let events = kubectl_json(&cp, &["get", "events.events.k8s.io", "-n", "default", "-o", "json"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == "s1")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for r in ["DeviceAdded", "VFsSet", "HealthSet"] {
        assert!(reasons.contains(&r), "{reasons:?}");
    }
    // `kubectl get` columns: the controller's summary.
    let table = wait_for("the summary", &logs, || {
        let t = String::from_utf8(cp.kubectl(&["get", "devicescenarios"]).unwrap().stdout).unwrap();
        let row: Vec<&str> = t.lines().nth(1)?.split_whitespace().collect();
        // NAME NODE SELECTOR NODES APPLIED WAITING AGE (no node name: a selector)
        (row[0] == "s1" && row.contains(&r#"{"pool":"a"}"#) && row[row.len() - 3..row.len() - 1] == ["1", "1"])
            .then_some(t)
    });
    println!("{table}");

    // A manual change on the node: reported as drift, not fought.
    assert_eq!(ctl(&["write", "class/mock0_vf1/health", "ok"]), "ok");
    let drifted = wait_for("the drift reported", &logs, || {
        let s = kubectl_json(&cp, &["get", "devicescenario", "s1", "-o", "json"]);
        let c = s["status"]["nodes"][0]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Drifted" && c["status"] == "True")?
            .clone();
        Some(c)
    });
    assert!(
        drifted["message"]
            .as_str()
            .unwrap()
            .contains("mock0_vf1: health is ok on the node"),
        "{drifted}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ctl(&["read", "class/mock0_vf1/health"]),
        "ok",
        "the agent fought a manual change"
    );

    // mock5's VF held (as a prepared claim marks it): a spec without mock5
    // waits for it, applying nothing; released, it is applied.
    assert_eq!(ctl(&["write", "class/mock5_vf0/status", "1"]), "ok");
    let mut s1b = s1.clone();
    s1b["spec"]["pfs"] = serde_json::json!([{"id": 0, "vfs": 2}, {"id": 1}]);
    s1b["spec"]["devices"] = serde_json::json!([{"name": "mock1", "health": "degraded"}]);
    kubectl_stdin(&cp, &["apply", "-f", "-"], &s1b).unwrap();
    let e = entry_when(&cp, "s1", "DeviceInUse", &logs);
    let c = &e["conditions"][0];
    assert!(c["message"].as_str().unwrap().contains("mock5_vf0"), "{e}");
    assert_eq!(ctl(&["read", "class/mock1/health"]), "ok", "half applied: {e}");
    assert!(published(&cp).0.contains(&"mock5".to_string()));
    assert_eq!(ctl(&["write", "class/mock5_vf0/status", "0"]), "ok");
    entry_when(&cp, "s1", "Applied", &logs);
    wait_for("mock5 gone, mock1 degraded", &logs, || {
        let (names, items) = published(&cp);
        let t = taints(&items);
        (!names.contains(&"mock5".to_string()) && t.iter().any(|t| t.0 == "mock1" && t.1 == "degraded")).then_some(())
    });
    // mock0_vf1's failure is no longer asked for, and it was changed on
    // the node anyway: left as it is (ok).
    assert_eq!(ctl(&["read", "class/mock0_vf1/health"]), "ok");

    // A second, newer scenario for node-a: Conflict, naming the one followed.
    let s2 = scenario(
        "s2",
        serde_json::json!({"nodeName": "node-a", "devices": [{"name": "mock0", "health": "failed"}]}),
    );
    kubectl_stdin(&cp, &["create", "-f", "-"], &s2).unwrap();
    let e = entry_when(&cp, "s2", "Conflict", &logs);
    assert!(e["conditions"][0]["message"].as_str().unwrap().contains("s1"), "{e}");
    let table = wait_for("s2 waiting in the summary", &logs, || {
        let t = String::from_utf8(cp.kubectl(&["get", "devicescenarios", "s2"]).unwrap().stdout).unwrap();
        t.contains("node-a: Conflict").then_some(t)
    });
    println!("{table}");

    // Only a node's own agent writes its entry (the chart's admission
    // policy, with a service account token's node claim, impersonated).
    let sa = "--as=system:serviceaccount:mock-device:mock-accel-node-agent";
    let patch = r#"[{"op": "add", "path": "/status/nodes/-", "value": {"node": "node-b", "applied": true}}]"#;
    let as_node = |n: &str| {
        cp.kubectl(&[
            sa,
            &format!("--as-user-extra=authentication.kubernetes.io/node-name={n}"),
            "patch",
            "devicescenario",
            "s1",
            "--subresource=status",
            "--type=json",
            "-p",
            patch,
        ])
        .unwrap()
    };
    let refused = as_node("node-a");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("may write only its own node's entry"),
        "{err}"
    );
    assert!(as_node("node-b").status.success());

    // s1 deleted: mock1's degraded health (set by the agent) given back,
    // and s2 followed now.
    cp.kubectl(&["delete", "devicescenario", "s1"]).unwrap();
    entry_when(&cp, "s2", "Applied", &logs);
    wait_for("mock1 ok again, mock0 failed", &logs, || {
        let t = taints(&published(&cp).1);
        (t.len() == 1 && t[0].0 == "mock0" && t[0].1 == "failed").then_some(())
    });
    assert!(fs::read_to_string(&log).unwrap().contains("scenario applied"));

    // Faults on a schedule: mock1 failed 1 s after the apply, for 1.5 s;
    // mock0_vf0 degraded, flapping (300 ms every second).
    let mut s2b = s2.clone();
    s2b["spec"]["faults"] = serde_json::json!([
        {"device": "mock1", "after": "1s", "for": "1500ms"},
        {"device": "mock0_vf0", "action": "degraded", "after": "500ms", "for": "300ms", "period": "1s"}
    ]);
    kubectl_stdin(&cp, &["apply", "-f", "-"], &s2b).unwrap();
    entry_when(&cp, "s2", "Applied", &logs);
    wait_for("mock1 failed by the schedule", &logs, || {
        taints(&published(&cp).1)
            .iter()
            .any(|t| t.0 == "mock1" && t.1 == "failed")
            .then_some(())
    });
    wait_for("and recovered by it", &logs, || {
        (!taints(&published(&cp).1).iter().any(|t| t.0 == "mock1")).then_some(())
    });
    let starts = wait_for("the flap's third start", &logs, || {
        let events = kubectl_json(&cp, &["get", "events.events.k8s.io", "-n", "default", "-o", "json"]);
        let notes: Vec<String> = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "FaultStarted")
            .filter_map(|e| e["note"].as_str().map(str::to_string))
            .collect();
        // One Event for the flapping device, its series counting the starts.
        let flaps =
            events["items"].as_array().unwrap().iter().find(|e| {
                e["reason"] == "FaultStarted" && e["note"].as_str().is_some_and(|n| n.contains("mock0_vf0"))
            })?;
        (flaps["series"]["count"].as_i64() >= Some(3)).then_some(notes)
    });
    println!("scheduled faults: {starts:?}");
    // How late the agent turned them on and off, by its own clock.
    let metrics = admin_get(admin, "/metrics");
    let lateness: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mock_accel_declared_fault_lateness_seconds"))
        .collect();
    println!("{}", lateness.join("\n"));
    assert!(
        lateness.iter().any(|l| l.contains("_count") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // A removal on a schedule: mock1 hot-unplugged 200 ms after the apply,
    // plugged back 1.5 s later (the flap's faults end first: a new
    // generation ends what the last one started).
    let mut s2c = s2.clone();
    s2c["spec"]["faults"] =
        serde_json::json!([{"device": "mock1", "action": "remove", "after": "200ms", "for": "1500ms"}]);
    kubectl_stdin(&cp, &["apply", "-f", "-"], &s2c).unwrap();
    let e = wait_for("mock1 removed by the schedule", &logs, || {
        let s = kubectl_json(&cp, &["get", "devicescenario", "s2", "-o", "json"]);
        let e = s["status"]["nodes"][0].clone();
        (!published(&cp).0.contains(&"mock1".to_string()) && e["activeFaults"][0] == "mock1: remove").then_some(e)
    });
    assert!(
        e["devices"].as_array().unwrap().iter().all(|d| d["drift"].is_null()),
        "a fault's removal is no drift: {e}"
    );
    wait_for("and plugged back", &logs, || {
        published(&cp).0.contains(&"mock1".to_string()).then_some(())
    });
    // The scenario deleted: every fault ends, mock0's failure given back.
    cp.kubectl(&["delete", "devicescenario", "s2"]).unwrap();
    wait_for("no taints once s2 is gone", &logs, || {
        taints(&published(&cp).1).is_empty().then_some(())
    });
    drop(agent);
}

/// The pool of each node of the driver's slices: node → device names.
fn pools(items: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in items {
        let node = s["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
        let names = s["spec"]["devices"].as_array().cloned().unwrap_or_default();
        let entry = out.entry(node).or_default();
        entry.extend(names.iter().map(|d| d["name"].as_str().unwrap().to_string()));
        entry.sort();
    }
    out
}

/// The holders of the nodes' heartbeat Leases in mock-device (not the
/// fleet's own), sorted, each with the Lease it beats by.
fn lease_holders(cp: &ControlPlane) -> Vec<(String, String)> {
    let l = kubectl_json(cp, &["get", "leases", "-n", "mock-device", "-o", "json"]);
    let mut holders: Vec<(String, String)> = l["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["metadata"]["labels"][mock_accel_agent::heartbeat::FLEET_LABEL].is_null())
        .filter_map(|l| {
            Some((
                l["spec"]["holderIdentity"].as_str()?.to_string(),
                l["metadata"]["annotations"][mock_accel_agent::heartbeat::VIA]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ))
        })
        .collect();
    holders.sort();
    holders
}

/// The renewTime of a Lease in mock-device.
fn renewed(cp: &ControlPlane, name: &str) -> Option<String> {
    let l = kubectl_json(cp, &["get", "lease", "-n", "mock-device", name, "-o", "json"]);
    l["spec"]["renewTime"].as_str().map(str::to_string)
}

fn fleet_pools(admin: std::net::SocketAddr, state: &str) -> Option<f64> {
    let text = admin_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with(&format!("mock_accel_fleet_pools{{state=\"{state}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `--mode=fleet` under the real API server, with the chart's fleet RBAC
/// (its ServiceAccount's name as the client certificate's user): only the
/// selected Nodes get pools, each with its own devices (UUIDs, PCI
/// addresses) and Lease; a node beyond `--fleet-max-nodes` waits and is
/// served when another leaves; a node leaving loses its slices and Lease; a
/// DeviceScenario naming one node changes that node's pool only; a claim
/// allocated on a fabric-attached device gets its binding condition; every
/// write a slice written (no conflict, no retry).
#[test]
fn fleet_mode_serves_the_selected_nodes() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("the real control plane: {e}"));
    // Fabric-attached devices: the fleet also watches claims and reports
    // their binding conditions.
    let chart = mock_device_testkit::render_chart(
        &serde_json::json!({"fleet": {"enabled": true}, "devices": {"sim": {"fabricAttachMs": 200}}}),
    );
    let fleet: Vec<Value> = chart["mock-device/templates/fleet.yaml"].clone();
    let args: Vec<String> = fleet
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap();
    assert!(
        args.contains(&"--fleet-node-selector=type=kwok".to_string()),
        "{args:?}"
    );
    scenarios_served(&cp, &chart);
    cp.apply(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mock-device"}}"#)
        .unwrap();
    let rbac: Vec<Value> = fleet.iter().filter(|o| o["kind"] != "Deployment").cloned().collect();
    cp.apply(&list(rbac).to_string()).unwrap();
    let node = |name: &str, kwok: bool| {
        let labels = if kwok {
            serde_json::json!({"type": "kwok"})
        } else {
            serde_json::json!({})
        };
        cp.apply(
            &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
                .to_string(),
        )
        .unwrap();
    };
    for n in ["kwok-1", "kwok-2", "kwok-3"] {
        node(n, true);
    }
    node("real-node", false);

    let kubeconfig = cp
        .kubeconfig_for(
            "fleet",
            "system:serviceaccount:mock-device:mock-accel-fleet",
            &["system:serviceaccounts", "system:serviceaccounts:mock-device"],
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let log = dir.path().join("fleet.log");
    // The chart's arguments, but where the test puts things.
    let mut fleet_args: Vec<String> = args
        .into_iter()
        .filter(|a| {
            !a.starts_with("--sim-dir=")
                && !a.starts_with("--admin-address=")
                && !a.starts_with("--fleet-max-nodes=")
                && !a.starts_with("--heartbeat-interval=")
                && !a.starts_with("--sim-pfs=")
        })
        .collect();
    fleet_args.extend([
        format!("--sim-dir={}", dir.path().join("sim").display()),
        format!("--admin-address={admin}"),
        "--fleet-max-nodes=3".into(),
        "--heartbeat-interval=2s".into(),
        "--sim-pfs=2".into(),
    ]);
    let writes_before = slice_writes(&cp);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"));
    cmd.args(&fleet_args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "mock-device")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let fleet = common::Killed(mock_device_testkit::process::spawn(cmd).unwrap());
    let logs = || agent_logs(&cp, &log);

    // Three pools of two PFs, one per selected node; none for the other.
    let two = vec!["mock0".to_string(), "mock1".to_string()];
    wait_for("three pools", &logs, || {
        let p = pools(&published(&cp).1);
        (p.len() == 3 && p.values().all(|d| *d == two)).then_some(())
    });
    let items = published(&cp).1;
    assert!(items.iter().all(|s| s["spec"]["nodeName"] != "real-node"));
    let mut ids = std::collections::BTreeSet::new();
    for s in &items {
        for d in s["spec"]["devices"].as_array().cloned().unwrap_or_default() {
            let a = &d["attributes"];
            assert!(ids.insert(a["uuid"]["string"].to_string()), "a UUID twice: {a}");
            assert!(
                ids.insert(a["pciAddress"]["string"].to_string()),
                "a PCI address twice: {a}"
            );
        }
    }
    assert_eq!(ids.len(), 12, "6 devices, each its own UUID and PCI address");
    // Each node's slices are owned by its Node, as a node agent's are.
    for s in &items {
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Node", "{s}");
        assert_eq!(s["metadata"]["ownerReferences"][0]["name"], s["spec"]["nodeName"]);
    }
    // Each node's Lease names the fleet's, the one Lease renewed.
    let fleet_lease = mock_accel_agent::heartbeat::fleet_lease_name(DRIVER, "type=kwok");
    let beating = |nodes: &[&str]| -> Vec<(String, String)> {
        nodes.iter().map(|n| (n.to_string(), fleet_lease.clone())).collect()
    };
    wait_for("a Lease per served node, beating via the fleet's", &logs, || {
        (lease_holders(&cp) == beating(&["kwok-1", "kwok-2", "kwok-3"])).then_some(())
    });
    let first = wait_for("the fleet's Lease", &logs, || renewed(&cp, &fleet_lease));
    let node_lease = format!("{DRIVER}-kwok-2");
    let written = renewed(&cp, &node_lease).unwrap();
    wait_for("the fleet's Lease renewed", &logs, || {
        renewed(&cp, &fleet_lease).filter(|r| *r != first).map(|_| ())
    });
    let settled = slice_writes(&cp) - writes_before;
    // With counters (1.37 default): a counters slice and a devices slice
    // per node, each created once.
    assert_eq!(settled, 6, "every write a slice written\n{}", logs());
    wait_for("all published, ready", &logs, || {
        (fleet_pools(admin, "published") == Some(3.0) && admin_get(admin, "/readyz").trim() == "ok").then_some(())
    });

    // A fourth selected node: beyond the bound, it waits.
    node("kwok-4", true);
    wait_for("kwok-4 waiting", &logs, || {
        (fleet_pools(admin, "waiting") == Some(1.0)).then_some(())
    });
    assert!(!pools(&published(&cp).1).contains_key("kwok-4"));
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("more nodes are selected than --fleet-max-nodes")
    );

    // kwok-1 leaves: its slices go, kwok-4 is served.
    let out = cp.kubectl(&["delete", "node", "kwok-1"]).unwrap();
    assert!(out.status.success());
    wait_for("kwok-1 gone, kwok-4 served", &logs, || {
        let p = pools(&published(&cp).1);
        (!p.contains_key("kwok-1") && p.get("kwok-4") == Some(&two) && p.len() == 3).then_some(())
    });
    wait_for("none waiting", &logs, || {
        (fleet_pools(admin, "waiting") == Some(0.0)).then_some(())
    });
    wait_for("kwok-1's Lease gone, kwok-4's there", &logs, || {
        (lease_holders(&cp) == beating(&["kwok-2", "kwok-3", "kwok-4"])).then_some(())
    });
    assert_eq!(
        renewed(&cp, &node_lease).as_ref(),
        Some(&written),
        "a node's Lease is written once, not renewed"
    );

    // A DeviceScenario for kwok-2: a VF on PF 0, mock1 failed — in
    // kwok-2's pool only.
    let before: Vec<Value> = published(&cp)
        .1
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] != "kwok-2")
        .collect();
    kubectl_stdin(
        &cp,
        &["create", "-f", "-"],
        &scenario(
            "fleet-fault",
            serde_json::json!({
                "nodeName": "kwok-2",
                "pfs": [{"id": 0, "vfs": 1}, {"id": 1}],
                "devices": [{"name": "mock1", "health": "failed"}]
            }),
        ),
    )
    .unwrap();
    wait_for("kwok-2's VF and taint", &logs, || {
        let items = published(&cp).1;
        let p = pools(&items);
        let tainted: Vec<String> = taints(&items).into_iter().map(|t| t.0).collect();
        (p.get("kwok-2") == Some(&vec!["mock0".into(), "mock0-vf0".into(), "mock1".into()]) && tainted == ["mock1"])
            .then_some(())
    });
    let items = published(&cp).1;
    let tainted_pools: Vec<&str> = items
        .iter()
        .filter(|s| {
            s["spec"]["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d.get("taints").is_some()))
        })
        .map(|s| s["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(tainted_pools, ["kwok-2"]);
    let after: Vec<Value> = items
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] != "kwok-2")
        .collect();
    let rvs = |v: &[Value]| -> Vec<String> { v.iter().map(|s| s["metadata"]["resourceVersion"].to_string()).collect() };
    assert_eq!(rvs(&before), rvs(&after), "the other nodes' slices untouched");
    wait_for("the scenario's entry Applied", &logs, || {
        let s = kubectl_json(&cp, &["get", "devicescenario", "fleet-fault", "-o", "json"]);
        let e = s["status"]["nodes"]
            .as_array()?
            .iter()
            .find(|e| e["node"] == "kwok-2")?
            .clone();
        e["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Applied" && c["status"] == "True")
            .then_some(())
    });
    // A claim allocated on kwok-3's mock1, as the scheduler allocates a
    // fabric-attached device (with its binding conditions): the fleet
    // attaches it in kwok-3's sim and reports FabricAttached, as kwok-3's
    // agent would.
    kubectl_stdin(
        &cp,
        &["create", "-f", "-"],
        &serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "on-kwok-3", "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "mock-accel-pf"}}]}}}),
    )
    .unwrap();
    let allocation = serde_json::json!({"status": {"allocation": {"devices": {"results": [{
        "request": "r", "driver": DRIVER, "pool": "kwok-3", "device": "mock1",
        "bindingConditions": ["FabricAttached"], "bindingFailureConditions": ["FabricAttachFailed"]}]}}}});
    let out = cp
        .kubectl(&[
            "patch",
            "resourceclaim",
            "on-kwok-3",
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            &allocation.to_string(),
        ])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("FabricAttached on the claim", &logs, || {
        let c = kubectl_json(
            &cp,
            &["get", "resourceclaim", "on-kwok-3", "-n", "default", "-o", "json"],
        );
        let d = c["status"]["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == "mock1")?
            .clone();
        (d["pool"] == "kwok-3"
            && d["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "FabricAttached" && c["status"] == "True"))
        .then_some(())
    });

    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("conflict"), "no conflicts: {text}");
    assert!(!text.contains(" ERROR "), "no errors: {text}");

    // The controller judges the fleet's nodes by the fleet's Lease: alive
    // long after their own Leases (valid 8 s, written once) would have
    // expired; all gone together once the fleet is killed.
    let (_ctl, ctl_admin, ctl_log) = spawn_controller(&cp, dir.path(), "mock-device", "--agent-grace-period=1s");
    let ctl_logs = || {
        format!(
            "--- controller ---\n{}\n{}",
            fs::read_to_string(&ctl_log).unwrap_or_default(),
            logs()
        )
    };
    let up = |node: &str| {
        admin_get(ctl_admin, "/metrics")
            .lines()
            .find(|l| l.starts_with(&format!("mock_accel_fleet_agent_up{{node=\"{node}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let lease_age = |name: &str| {
        let at = renewed(&cp, name).unwrap();
        let at: k8s_openapi::jiff::Timestamp = at.parse().unwrap();
        k8s_openapi::jiff::Timestamp::now().duration_since(at).as_secs()
    };
    wait_for("the fleet's nodes up, their own Leases long expired", &ctl_logs, || {
        (lease_age(&node_lease) > 20 && ["kwok-2", "kwok-3", "kwok-4"].iter().all(|n| up(n) == Some(1.0))).then_some(())
    });
    assert_eq!(pools(&published(&cp).1).len(), 3, "nothing cleaned up");
    drop(fleet);
    wait_for("the killed fleet's slices cleaned up", &ctl_logs, || {
        published(&cp).1.is_empty().then_some(())
    });
    let said = fs::read_to_string(&ctl_log).unwrap();
    assert!(said.contains("has not renewed its heartbeat"), "{said}");
}

/// node-a made schedulable with no kubelet: room for pods in its status,
/// and no not-ready taint (no node lifecycle controller runs to lift it).
/// The namespace `dra` with its default ServiceAccount (no ServiceAccount
/// controller either), and the chart's DeviceClasses.
fn schedulable(cp: &ControlPlane) {
    schedulable_declaring(cp, &[]);
}

/// As [`schedulable`], node-a's status declaring `features` as a kubelet
/// with those gates on would (`status.declaredFeatures`).
fn schedulable_declaring(cp: &ControlPlane, features: &[&str]) {
    let status = serde_json::json!({"status": {
        "declaredFeatures": features,
        "capacity": {"pods": "110", "cpu": "4", "memory": "8Gi"},
        "allocatable": {"pods": "110", "cpu": "4", "memory": "8Gi"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Test", "message": "no kubelet",
                        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    let patch = |args: &[&str], body: &Value| {
        let out = cp
            .kubectl(
                &[
                    &["patch", "node", "node-a", "--type=merge", "-p", &body.to_string()],
                    args,
                ]
                .concat(),
            )
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    patch(&["--subresource=status"], &status);
    patch(&[], &serde_json::json!({"spec": {"taints": null}}));
    let classes =
        mock_device_testkit::render_chart(&serde_json::json!({}))["mock-device/templates/deviceclasses.yaml"].clone();
    cp.apply(&list(classes).to_string()).unwrap();
    cp.apply(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dra"}}"#)
        .unwrap();
    cp.apply(r#"{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "dra"}}"#)
        .unwrap();
}

/// The agent's, the API server's, the scheduler's and the
/// controller-manager's complaints (for failures).
fn scheduled_logs(cp: &ControlPlane, node: &FakeNode, s: &mock_device_testkit::cluster::Scheduling) -> String {
    format!(
        "{}\n--- kube-scheduler ---\n{}\n--- kube-controller-manager ---\n{}",
        agent_logs(cp, &node.log),
        s.scheduler.problems(),
        s.controller_manager.problems()
    )
}

/// A claim in `dra` for one device of `class`, with CEL `selector` if any,
/// and a pod using it.
fn claim_and_pod(cp: &ControlPlane, name: &str, class: &str, selector: Option<&str>) {
    claim_and_pod_asking(cp, name, class, selector, serde_json::json!({}));
}

/// As [`claim_and_pod`], the container asking `requests` (cpu, memory) too.
fn claim_and_pod_asking(cp: &ControlPlane, name: &str, class: &str, selector: Option<&str>, requests: Value) {
    let mut exactly = serde_json::json!({"deviceClassName": class});
    if let Some(cel) = selector {
        exactly["selectors"] = serde_json::json!([{"cel": {"expression": cel}}]);
    }
    let objects = list(vec![
        serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "dra"},
            "spec": {"devices": {"requests": [{"name": "r", "exactly": exactly}]}}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "dra"},
            "spec": {"automountServiceAccountToken": false,
                     "resourceClaims": [{"name": "acc", "resourceClaimName": name}],
                     "containers": [{"name": "c", "image": "registry.example/none:1",
                                     "resources": {"requests": requests, "claims": [{"name": "acc"}]}}]}}),
    ]);
    cp.apply(&objects.to_string()).unwrap();
}

/// The devices allocated to a claim in `dra`.
fn allocated(cp: &ControlPlane, claim: &str) -> Vec<String> {
    let c = kubectl_json(cp, &["get", "resourceclaim", "-n", "dra", claim, "-o", "json"]);
    c["status"]["allocation"]["devices"]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["device"].as_str().unwrap().to_string())
        .collect()
}

/// A pod in `dra`, as the API server has it.
fn pod(cp: &ControlPlane, name: &str) -> Value {
    kubectl_json(cp, &["get", "pod", "-n", "dra", name, "-o", "json"])
}

/// Why the scheduler left a pod unscheduled, once it has said so.
fn unschedulable(p: &Value) -> Option<String> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False" && c["reason"] == "Unschedulable")
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
}

fn taint_rule(name: &str, device: &str, effect: &str) -> Value {
    serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule",
        "metadata": {"name": name},
        "spec": {"deviceSelector": {"driver": DRIVER, "pool": "node-a", "device": device},
                 "taint": {"key": "example.com/maintenance", "value": "planned", "effect": effect}}})
}

/// An administrator's DeviceTaintRules (KEP-5055, GA in 1.37) beside the
/// driver's own health taints, with the real scheduler and the real
/// controller-manager's eviction (no kubelet: pods are bound, not run):
/// both kinds keep a pod off, a NoExecute rule evicts the pod holding the
/// device, removing the rule makes the device usable again; the driver
/// never writes a slice because of a rule, and its own taint stays its own.
#[test]
fn device_taint_rules_beside_the_drivers_own_taints() {
    let cp = with_node_a(&[]);
    schedulable(&cp);
    let scheduling = cp
        .start_scheduling(
            &["resourceclaim-controller", "device-taint-eviction-controller"],
            "",
            100,
        )
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &[]);
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    // The driver's taint on mock0 (failed), the administrator's on mock1.
    fs::write(node.root.join("mock0/health"), "failed\n").unwrap();
    wait_for("the driver's taint", &logs, || {
        (taints(&published(&cp).1).len() == 1).then_some(())
    });
    let writes = slice_writes(&cp);
    cp.apply(&taint_rule("maintenance", "mock1", "NoSchedule").to_string())
        .unwrap();
    claim_and_pod(&cp, "one", "mock-accel-pf", None);
    let why = wait_for("the pod left unscheduled", &logs, || unschedulable(&pod(&cp, "one")));
    println!("the scheduler, both PFs tainted: {why}");
    assert!(allocated(&cp, "one").is_empty());
    // The rule removed: the pod gets mock1.
    assert!(
        cp.kubectl(&["delete", "devicetaintrule", "maintenance"])
            .unwrap()
            .status
            .success()
    );
    wait_for("the pod scheduled", &logs, || {
        pod(&cp, "one")["spec"]["nodeName"].as_str().map(|_| ())
    });
    assert_eq!(allocated(&cp, "one"), ["mock1"]);
    // NoExecute on mock1: the controller-manager evicts the pod holding it.
    cp.apply(&taint_rule("evict", "mock1", "NoExecute").to_string())
        .unwrap();
    let evicted = wait_for("the pod evicted", &logs, || {
        let p = pod(&cp, "one");
        p["metadata"]["deletionTimestamp"].is_string().then_some(p)
    });
    let disruption = evicted["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionTarget")
        .cloned();
    println!("evicted: {disruption:?}");
    assert_eq!(
        disruption.as_ref().map(|c| c["reason"].clone()),
        Some(Value::from("DeletionByDeviceTaintManager")),
        "{evicted}"
    );
    // The driver wrote nothing because of the rules, and its own taint is
    // the only one in its slices.
    assert_eq!(
        slice_writes(&cp),
        writes,
        "the driver wrote because of a rule\n{}",
        logs()
    );
    let own: Vec<_> = taints(&published(&cp).1).into_iter().map(|t| (t.0, t.1)).collect();
    assert_eq!(own, [("mock0".to_string(), "failed".to_string())]);
    // No kubelet finishes the eviction: the pod goes at once, then a new
    // pod: mock0 is failed, mock1 under the NoExecute rule.
    assert!(
        cp.kubectl(&["delete", "pod", "-n", "dra", "one", "--grace-period=0", "--force"])
            .unwrap()
            .status
            .success()
    );
    claim_and_pod(&cp, "two", "mock-accel-pf", None);
    wait_for("the second pod unscheduled", &logs, || unschedulable(&pod(&cp, "two")));
    // mock0 recovers (the driver's taint goes): the pod gets it.
    fs::write(node.root.join("mock0/health"), "ok\n").unwrap();
    wait_for("the second pod scheduled", &logs, || {
        pod(&cp, "two")["spec"]["nodeName"].as_str().map(|_| ())
    });
    assert_eq!(allocated(&cp, "two"), ["mock0"]);
    // The rule removed: mock1 is usable again.
    assert!(
        cp.kubectl(&["delete", "devicetaintrule", "evict"])
            .unwrap()
            .status
            .success()
    );
    claim_and_pod(&cp, "three", "mock-accel-pf", None);
    wait_for("the third pod scheduled", &logs, || {
        pod(&cp, "three")["spec"]["nodeName"].as_str().map(|_| ())
    });
    assert_eq!(allocated(&cp, "three"), ["mock1"]);
}

/// The capability lists of the published devices: device → list.
fn capability_lists(items: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let list = d["attributes"]["capabilityList"]["strings"].as_array()?.clone();
            Some((
                d["name"].as_str().unwrap().to_string(),
                list.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
            ))
        })
        .collect()
}

/// The first device of the slices (the counter sets' slices have none).
fn first_device(items: &[Value]) -> Value {
    items
        .iter()
        .find_map(|s| s["spec"]["devices"].as_array()?.first().cloned())
        .unwrap_or_default()
}

/// List-typed attributes (KEP-5491, alpha: DRAListTypeAttributes on in the
/// API server and the scheduler): every device carries `capabilityList`
/// beside the scalar `capabilities`, and the real scheduler allocates by
/// `includes()` on it, from a DeviceClass and from a claim's own selector.
#[test]
fn list_attributes_under_the_real_scheduler() {
    let gate = "DRAListTypeAttributes=true";
    let cp = with_node_a(&[&format!("--feature-gates={gate}")]);
    schedulable(&cp);
    let _scheduling = cp
        .start_scheduling(&["resourceclaim-controller"], gate, 100)
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &["--list-attributes"]);
    let logs = || agent_logs(&cp, &node.log);
    let lists = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then(|| capability_lists(&items))
    });
    assert_eq!(lists.len(), 6, "{lists:?}");
    for (device, list) in &lists {
        let want: &[&str] = if device.contains("-vf") {
            &["compute", "dma"]
        } else {
            &["compute", "dma", "sriov"]
        };
        assert_eq!(list, want, "{device}");
    }
    let scalar = first_device(&published(&cp).1)["attributes"]["capabilities"]["string"].clone();
    assert!(scalar.is_string(), "the scalar attribute is kept: {scalar}");
    assert!(admin_get(node.admin, "/metrics").contains("mock_accel_list_attributes 1"));
    let attrs = format!("device.attributes[\"{DRIVER}\"]");
    // A class by the list, and a claim's own selector on it.
    cp.apply(
        &serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": {"name": "sriov-capable"},
            "spec": {"selectors": [{"cel": {"expression":
                format!("device.driver == \"{DRIVER}\" && {attrs}.capabilityList.includes(\"sriov\")")}}]}})
        .to_string(),
    )
    .unwrap();
    claim_and_pod(&cp, "sriov", "sriov-capable", None);
    claim_and_pod(
        &cp,
        "plain",
        "mock-accel-vf",
        Some(&format!(
            "{attrs}.capabilityList.includes(\"dma\") && !{attrs}.capabilityList.includes(\"sriov\")"
        )),
    );
    for name in ["sriov", "plain"] {
        wait_for("the pods scheduled", &logs, || {
            pod(&cp, name)["spec"]["nodeName"].as_str().map(|_| ())
        });
    }
    let (pf, vf) = (allocated(&cp, "sriov"), allocated(&cp, "plain"));
    println!("by capabilityList: sriov → {pf:?}, dma without sriov → {vf:?}");
    assert!(pf.len() == 1 && !pf[0].contains("-vf"), "{pf:?}");
    assert!(vf.len() == 1 && vf[0].contains("-vf"), "{vf:?}");
}

/// With DRAListTypeAttributes off (1.37's default) the real server refuses
/// or drops the list: the agent notices, says so, and publishes without it
/// (the scalar `capabilities` stays), no write storm.
#[test]
fn with_the_list_gate_off_the_agent_publishes_without_lists() {
    let cp = with_node_a(&[]);
    let node = FakeNode::start(&cp, &["--list-attributes"]);
    let logs = || agent_logs(&cp, &node.log);
    noticed_and_settled(
        &cp,
        &node,
        "mock_accel_list_attributes 0",
        "does not keep list-typed attributes",
    );
    let (names, items) = wait_for("the devices", &logs, || {
        let p = published(&cp);
        (p.0.len() == 6).then_some(p)
    });
    assert_eq!(names.len(), 6);
    assert!(capability_lists(&items).is_empty(), "{items:?}");
    assert!(first_device(&items)["attributes"]["capabilities"]["string"].is_string());
}

/// ResourcePoolStatusRequest (KEP-5677, alpha: DRAResourcePoolStatus and
/// resource.k8s.io/v1alpha3; its partition summary DRAPartitionableDevicesType
/// too): the real controller-manager's view of the driver's pool after the
/// real scheduler allocated a PF — the totals and the allocation. Its
/// partition summary by `deviceType` is refused for our pools
/// (`PartitionCostMismatch`): it wants every device of a type to consume
/// the same counters of the same set, and ours are one set per PF (each
/// physical device's memory), as KEP-4815 models them.
#[test]
fn the_pool_status_an_administrator_asks_for() {
    let gate = "DRAResourcePoolStatus=true,DRAPartitionableDevicesType=true";
    let cp = with_node_a(&[
        &format!("--feature-gates={gate}"),
        "--runtime-config=resource.k8s.io/v1alpha3=true",
    ]);
    schedulable(&cp);
    let scheduling = cp
        .start_scheduling(
            &["resourceclaim-controller", "resourcepoolstatusrequest-controller"],
            gate,
            100,
        )
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &[]);
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    claim_and_pod(&cp, "one", "mock-accel-pf", None);
    wait_for("the pod scheduled", &logs, || {
        pod(&cp, "one")["spec"]["nodeName"].as_str().map(|_| ())
    });
    let ask = |name: &str, by_type: bool| -> Value {
        let mut spec = serde_json::json!({"driver": DRIVER});
        if by_type {
            spec["defaultPartitionTypeAttribute"] = Value::from(format!("{DRIVER}/deviceType"));
        }
        cp.apply(
            &serde_json::json!({"apiVersion": "resource.k8s.io/v1alpha3", "kind": "ResourcePoolStatusRequest",
                "metadata": {"name": name}, "spec": spec})
            .to_string(),
        )
        .unwrap();
        wait_for("the request answered", &logs, || {
            let r = kubectl_json(&cp, &["get", "resourcepoolstatusrequest", name, "-o", "json"]);
            r["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"))
                .then(|| r["status"].clone())
        })
    };
    let status = ask("ours", false);
    println!("the controller-manager's view: {status}");
    assert_eq!(status["poolCount"], 1, "{status}");
    let pool = &status["pools"][0];
    assert_eq!(pool["poolName"], "node-a", "{status}");
    assert_eq!(pool["nodeName"], "node-a", "{status}");
    assert_eq!(pool["generation"], 1, "{status}");
    assert!(pool["validationError"].is_null(), "{status}");
    assert_eq!(pool["totalDevices"], 6, "{status}");
    assert_eq!(pool["allocatedDevices"], 1, "{status}");
    assert_eq!(pool["unavailableDevices"], 0, "{status}");
    let by_type = ask("by-type", true);
    println!("by deviceType: {by_type}");
    let error = by_type["pools"][0]["validationError"].as_str().unwrap_or_default();
    assert!(error.starts_with("PartitionCostMismatch:"), "{by_type}");
}

/// Each counter consumption's compatibility groups as the server keeps
/// them: device → groups.
fn consumption_groups(items: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let c = d["consumesCounters"].as_array()?.first()?.clone();
            let groups = c["compatibilityGroups"].as_array().cloned().unwrap_or_default();
            Some((
                d["name"].as_str().unwrap().to_string(),
                groups.iter().map(|g| g.as_str().unwrap().to_string()).collect(),
            ))
        })
        .collect()
}

/// Compatibility groups (KEP-5963, alpha: DRADeviceCompatibilityGroups on in
/// the API server and the scheduler): each consumption names its device's
/// mode (`pf`, `sriov`); the real scheduler uses the pool and never mixes a
/// PF's modes — one PF taken whole, VFs then only from the other, and no PF
/// left for a second whole-PF claim. A scheduler with the gate off skips
/// the whole pool (the API server kept the groups): the trap the chart's
/// README warns of.
#[test]
fn compatibility_groups_under_the_real_scheduler() {
    let gate = "DRADeviceCompatibilityGroups=true";
    let cp = with_node_a(&[&format!("--feature-gates={gate}")]);
    schedulable(&cp);
    let scheduling = cp
        .start_scheduling(&["resourceclaim-controller"], gate, 100)
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &["--compatibility-groups"]);
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    let groups = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then(|| consumption_groups(&items))
    });
    println!("the real server's groups: {groups:?}");
    assert_eq!(groups.len(), 6, "{groups:?}");
    for (device, g) in &groups {
        let want = if device.contains("-vf") { "sriov" } else { "pf" };
        assert_eq!(g, &[want], "{device}");
    }
    assert!(admin_get(node.admin, "/metrics").contains("mock_accel_compatibility_groups 1"));
    let placed = |name: &str| {
        wait_for("the pod scheduled", &logs, || {
            pod(&cp, name)["spec"]["nodeName"].as_str().map(|_| ())
        });
        let got = allocated(&cp, name);
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        got[0].clone()
    };
    claim_and_pod(&cp, "whole", "mock-accel-pf", None);
    let whole = placed("whole");
    claim_and_pod(&cp, "vf-a", "mock-accel-vf", None);
    let vf_a = placed("vf-a");
    claim_and_pod(&cp, "vf-b", "mock-accel-vf", None);
    let vf_b = placed("vf-b");
    println!("whole {whole}, then VFs {vf_a} and {vf_b}");
    for vf in [&vf_a, &vf_b] {
        assert!(
            !vf.starts_with(&format!("{whole}-")),
            "a VF of the PF taken whole: {vf}"
        );
    }
    // One PF whole, the other in SR-IOV mode: no PF for a second claim.
    claim_and_pod(&cp, "whole-2", "mock-accel-pf", None);
    let why = wait_for("the pod left unscheduled", &logs, || {
        unschedulable(&pod(&cp, "whole-2"))
    });
    println!("a second whole PF: {why}");
    assert!(allocated(&cp, "whole-2").is_empty());
    // A scheduler with the gate off: the pool has groups, so it is skipped
    // whole — even the VF left free is not given.
    drop(scheduling);
    let scheduling = cp
        .start_scheduling(&["resourceclaim-controller"], "", 100)
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    claim_and_pod(&cp, "vf-c", "mock-accel-vf", None);
    let why = wait_for("the pod left unscheduled", &logs, || unschedulable(&pod(&cp, "vf-c")));
    println!("the scheduler without the gate: {why}");
    assert!(allocated(&cp, "vf-c").is_empty());
}

/// With DRADeviceCompatibilityGroups off (1.37's default) the real server
/// strips the groups: the agent notices, says so, and publishes without
/// them, the counters intact (they keep the modes apart), no write storm.
#[test]
fn with_the_groups_gate_off_the_agent_publishes_without_groups() {
    let cp = with_node_a(&[]);
    let node = FakeNode::start(&cp, &["--compatibility-groups"]);
    let logs = || agent_logs(&cp, &node.log);
    noticed_and_settled(
        &cp,
        &node,
        "mock_accel_compatibility_groups 0",
        "does not keep compatibility groups",
    );
    let items = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then_some(items)
    });
    let groups = consumption_groups(&items);
    assert_eq!(groups.len(), 6, "every device still consumes its counters: {groups:?}");
    assert!(groups.values().all(|g| g.is_empty()), "{groups:?}");
    assert!(admin_get(node.admin, "/metrics").contains("mock_accel_shared_counters 1"));
}

/// Each device's host memory overhead per pod as the server keeps it.
fn host_overheads(items: &[Value]) -> std::collections::BTreeMap<String, String> {
    items
        .iter()
        .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            let q = d["nodeAllocatableResources"]["memory"]["overhead"]["perPod"]
                .as_str()?
                .to_string();
            Some((d["name"].as_str().unwrap().to_string(), q))
        })
        .collect()
}

/// NodeAllocatableResources (KEP-5517, alpha: DRANodeAllocatableResources on
/// in the API server and the scheduler): with `--host-memory-overhead-mib`
/// every device declares the host memory a pod using it needs beside it,
/// and the real scheduler counts it against the node's allocatable memory
/// (8Gi here): a pod asking 7.5Gi and a PF (1Gi overhead) does not fit, one
/// asking 6.5Gi does. (The kubelet's part, the pod's cgroup, needs a node:
/// not shown.)
#[test]
fn host_memory_overhead_under_the_real_scheduler() {
    let gate = "DRANodeAllocatableResources=true";
    let cp = with_node_a(&[&format!("--feature-gates={gate}")]);
    // (the kubelet with the gate on declares it: admission refuses the
    // field for a node that does not)
    schedulable_declaring(&cp, &["DRANodeAllocatableResources"]);
    let scheduling = cp
        .start_scheduling(&["resourceclaim-controller"], gate, 100)
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &["--host-memory-overhead-mib=1024"]);
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    let overheads = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then(|| host_overheads(&items))
    });
    assert_eq!(overheads.len(), 6, "{overheads:?}");
    assert!(overheads.values().all(|q| q == "1Gi"), "{overheads:?}");
    assert!(admin_get(node.admin, "/metrics").contains("mock_accel_host_memory_overhead_bytes 1073741824"));
    claim_and_pod_asking(
        &cp,
        "big",
        "mock-accel-pf",
        None,
        serde_json::json!({"memory": "7680Mi"}),
    );
    let why = wait_for("the pod left unscheduled", &logs, || unschedulable(&pod(&cp, "big")));
    println!("7.5Gi and a PF's 1Gi on a node of 8Gi: {why}");
    assert!(allocated(&cp, "big").is_empty());
    claim_and_pod_asking(
        &cp,
        "fits",
        "mock-accel-pf",
        None,
        serde_json::json!({"memory": "6656Mi"}),
    );
    wait_for("the pod scheduled", &logs, || {
        pod(&cp, "fits")["spec"]["nodeName"].as_str().map(|_| ())
    });
    assert_eq!(allocated(&cp, "fits").len(), 1);
    assert!(unschedulable(&pod(&cp, "big")).is_some(), "big still waits");
}

/// With DRANodeAllocatableResources off (1.37's default) the real server
/// drops the field; with it on, a node whose kubelet does not declare the
/// feature gets its slices refused (403, the node declared features'
/// admission): either way the agent notices, says so, and publishes
/// without it, no write storm.
#[test]
fn with_the_node_resources_gate_off_the_agent_publishes_without_overhead() {
    for flags in [&[][..], &["--feature-gates=DRANodeAllocatableResources=true"][..]] {
        without_overhead(flags);
    }
}

fn without_overhead(flags: &[&str]) {
    let cp = with_node_a(flags);
    let node = FakeNode::start(&cp, &["--host-memory-overhead-mib=1024"]);
    let logs = || agent_logs(&cp, &node.log);
    noticed_and_settled(
        &cp,
        &node,
        "mock_accel_host_memory_overhead_bytes 0",
        "does not keep node allocatable resources",
    );
    let items = wait_for("the devices", &logs, || {
        let (names, items) = published(&cp);
        (names.len() == 6).then_some(items)
    });
    assert!(host_overheads(&items).is_empty(), "{items:?}");
}

/// Claims shared by a pod group (KEP-5729, DRAWorkloadResourceClaims, beta
/// and off in 1.37, with GenericWorkload and scheduling.k8s.io/v1beta1):
/// a PodGroup names a ResourceClaimTemplate; the real controller-manager
/// makes one claim for the group (owned by it, annotated with the group's
/// name for it), the real scheduler allocates one of our VFs once and
/// reserves it for the PodGroup, and both pods of the group get that
/// claim on node-a. The driver's part is the same as for any claim: its
/// prepare reads the allocation and never `reservedFor`, and the
/// device metadata of such a claim goes under the group's own name for it
/// (`resourceclaimtemplates/<name>/…`), which is the pods' name for it too.
#[test]
fn a_pod_groups_claim_under_the_real_scheduler() {
    let gates = "DRAWorkloadResourceClaims=true,GenericWorkload=true";
    let cp = with_node_a(&[
        &format!("--feature-gates={gates}"),
        "--runtime-config=scheduling.k8s.io/v1beta1=true",
    ]);
    schedulable(&cp);
    let scheduling = cp
        .start_scheduling(&["resourceclaim-controller"], gates, 100)
        .unwrap_or_else(|e| panic!("the scheduler: {e}"));
    let node = FakeNode::start(&cp, &[]);
    let logs = || scheduled_logs(&cp, &node, &scheduling);
    wait_for("the devices", &logs, || (published(&cp).0.len() == 6).then_some(()));
    let group_claims = serde_json::json!([{"name": "shared", "resourceClaimTemplateName": "vf"}]);
    let mut objects = vec![
        serde_json::json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": "vf", "namespace": "dra"},
            "spec": {"spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "mock-accel-vf"}}]}}}}),
        serde_json::json!({"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
            "metadata": {"name": "train", "namespace": "dra"},
            "spec": {"schedulingPolicy": {"basic": {}}, "resourceClaims": group_claims}}),
    ];
    for name in ["worker-0", "worker-1"] {
        objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "dra"},
            "spec": {"automountServiceAccountToken": false,
                     "schedulingGroup": {"podGroupName": "train"},
                     "resourceClaims": group_claims,
                     "containers": [{"name": "c", "image": "registry.example/none:1",
                                     "resources": {"claims": [{"name": "shared"}]}}]}}));
    }
    cp.apply(&list(objects).to_string()).unwrap();
    let claim_of = |p: &Value| {
        p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
            .as_str()
            .map(String::from)
    };
    let names: Vec<String> = ["worker-0", "worker-1"]
        .iter()
        .map(|name| {
            wait_for("the pod scheduled with its claim", &logs, || {
                let p = pod(&cp, name);
                p["spec"]["nodeName"].as_str()?;
                claim_of(&p)
            })
        })
        .collect();
    println!("the pods' claim: {names:?}");
    assert_eq!(names[0], names[1], "one claim for the group");
    let claim = kubectl_json(&cp, &["get", "resourceclaim", "-n", "dra", &names[0], "-o", "json"]);
    let owner = &claim["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("PodGroup"), Some("train")),
        "{claim}"
    );
    assert_eq!(
        claim["metadata"]["annotations"]["resource.kubernetes.io/pod-claim-name"],
        "shared"
    );
    let reserved = claim["status"]["reservedFor"].as_array().cloned().unwrap_or_default();
    println!("reserved for: {reserved:?}");
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    assert_eq!(
        (reserved[0]["resource"].as_str(), reserved[0]["name"].as_str()),
        (Some("podgroups"), Some("train"))
    );
    let devices = allocated(&cp, &names[0]);
    assert!(devices.len() == 1 && devices[0].contains("-vf"), "{devices:?}");
    let claims = kubectl_json(&cp, &["get", "resourceclaims", "-n", "dra", "-o", "json"]);
    assert_eq!(claims["items"].as_array().map(Vec::len), Some(1), "no claim per pod");
}
