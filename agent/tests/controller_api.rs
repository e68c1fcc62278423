//! `--mode=controller` against the test API server: the real binary, as
//! separate processes (each its own metrics, leader election between
//! them), with nodes, agents' heartbeats, slices and claims created,
//! changed and deleted in sequence, and API faults.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_accel_agent::heartbeat;
use mock_device_testkit::apiserver::{ApiServer, Config, Fault};
use mock_device_testkit::{http_get as get, promtool_check};
use serde_json::{Value, json};

mod common;

const DRIVER: &str = "mock-accel.example.com";
const NS: &str = "default";

struct Rig {
    server: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
}

/// A controller process, killed when dropped.
struct Controller {
    child: common::Killed,
    admin: SocketAddr,
    log: PathBuf,
}

impl Controller {
    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the admin port to listen first (the process is starting).
    async fn metrics(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.admin).await.is_err() {
            assert!(Instant::now() < deadline, "admin port never listened\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        get(self.admin, "/metrics").await.1
    }

    /// A sample's value, `None` when the series is absent.
    async fn metric(&self, series: &str) -> Option<f64> {
        value(&self.metrics().await, series)
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        self.child.0.wait().unwrap()
    }
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

async fn wait_until<F, Fut>(what: &str, c: &Controller, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n--- controller log ---\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

impl Rig {
    async fn new() -> Rig {
        let server = ApiServer::start(Config::default()).unwrap();
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        server.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
        let classes: Api<DeviceClass> = Api::all(client.clone());
        for (name, kind) in [("mock-accel-pf", "pf"), ("mock-accel-vf", "vf")] {
            let expr =
                format!("device.driver == \"{DRIVER}\" && device.attributes[\"{DRIVER}\"].deviceType == \"{kind}\"");
            classes
                .create(
                    &PostParams::default(),
                    &obj(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}})),
                )
                .await
                .unwrap();
        }
        classes
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": "gpu"}, "spec": {"selectors": [{"cel": {"expression": "device.driver == \"gpu.example.com\""}}]}})),
            )
            .await
            .unwrap();
        Rig { server, client, dir }
    }

    fn controller(&self, name: &str, extra: &[&str]) -> Controller {
        let admin = common::free_port();
        let log = self.dir.path().join(format!("{name}.log"));
        let mut args = vec![
            "--mode=controller".to_string(),
            format!("--namespace={NS}"),
            format!("--admin-address={admin}"),
            "--rescan-interval=1s".into(),
            "--agent-grace-period=2s".into(),
            "--leader-elect-lease-duration=2s".into(),
            "--leader-elect-renew-deadline=1500ms".into(),
            "--leader-elect-retry-period=200ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"));
        cmd.args(&args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("POD_NAME", name)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let child = mock_device_testkit::process::spawn(cmd).unwrap();
        Controller {
            child: common::Killed(child),
            admin,
            log,
        }
    }

    async fn node(&self, name: &str) -> String {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = nodes
            .create(&PostParams::default(), &obj(json!({"metadata": {"name": name}})))
            .await
            .unwrap();
        n.uid().unwrap()
    }

    /// A node agent renewing its 1 s heartbeat every 200 ms by a clock
    /// `skew` off the controller's, until dropped.
    fn agent(&self, node: &str, skew: SignedDuration) -> Agent {
        let (client, node) = (self.client.clone(), node.to_string());
        Agent(tokio::spawn(async move {
            loop {
                heartbeat_once(&client, &node, Timestamp::now() + skew).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }

    /// A slice as a node agent writes it.
    async fn slice(&self, name: &str, node: &str, node_uid: &str, generation: i64, devices: &[(&str, &str, i64)]) {
        let devices: Vec<Value> = devices
            .iter()
            .map(|(n, t, numa)| json!({"name": n, "attributes": {"deviceType": {"string": t}, "numaNode": {"int": numa}}}))
            .collect();
        self.slices()
            .create(
                &PostParams::default(),
                &obj(json!({
                    "metadata": {"name": name, "labels": {"driver": DRIVER},
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid, "controller": true}]},
                    "spec": {"driver": DRIVER, "nodeName": node,
                             "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                             "devices": devices}
                })),
            )
            .await
            .unwrap();
    }

    fn slices(&self) -> Api<ResourceSlice> {
        Api::all(self.client.clone())
    }

    async fn slice_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .slices()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        v.sort();
        v
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::all(self.client.clone());
        events
            .list(&ListParams::default().fields(&format!("reason={reason}")))
            .await
            .unwrap()
            .items
    }

    /// The `reason` Events once `enough` says they are all there: the
    /// controller records them after the deletions they explain, so a read
    /// right after a slice went may come too early.
    async fn events_once(&self, reason: &str, c: &Controller, enough: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ev = self.events(reason).await;
            if enough(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the {reason} Events: {ev:?}\n--- controller log ---\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn claims(&self) -> Api<ResourceClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn claim_status(&self, name: &str, status: Value) {
        self.claims()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .unwrap();
    }
}

/// A heartbeating agent; it stops when dropped.
struct Agent(tokio::task::JoinHandle<()>);

impl Drop for Agent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn heartbeat_once(client: &Client, node: &str, renewed: Timestamp) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let name = heartbeat::lease_name(DRIVER, node);
    let lease: Lease = obj(json!({
        "metadata": {"name": name, "labels": {"driver": DRIVER, "app.kubernetes.io/managed-by": "mock-accel-agent"}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 1, "renewTime": renewed}
    }));
    match leases.get_opt(&name).await.unwrap() {
        None => {
            leases.create(&PostParams::default(), &lease).await.unwrap();
        }
        Some(old) => {
            let mut l = lease;
            l.metadata.resource_version = old.resource_version();
            leases.replace(&name, &PostParams::default(), &l).await.unwrap();
        }
    }
}

fn allocation(node: &str, device: &str) -> Value {
    json!({"devices": {"results": [{"request": "r", "driver": DRIVER, "pool": node, "device": device}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_follows_the_cluster_and_cleans_up() {
    let rig = Rig::new().await;
    let n1 = rig.node("n1").await;
    let n2 = rig.node("n2").await;
    let _n3 = rig.node("n3").await;
    // Live agents, their clocks off the controller's (issue 18 #3): n1's an
    // hour behind (its renewTime always looks expired), n3's an hour ahead.
    let hour = SignedDuration::from_secs(3600);
    let n1_agent = rig.agent("n1", -hour);
    let _n2_agent = rig.agent("n2", SignedDuration::ZERO);
    let n3_agent = rig.agent("n3", hour);
    rig.slice(
        "n1-a",
        "n1",
        &n1,
        1,
        &[("mock0", "pf", 0), ("mock0-vf0", "vf", 0), ("mock1", "pf", 1)],
    )
    .await;
    rig.slice("n2-a", "n2", &n2, 1, &[("mock0", "pf", 0)]).await;
    let c = rig.controller("ctl", &[]);
    wait_until("leading", &c, || async {
        c.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    wait_until("the fleet view", &c, || async {
        c.metric("mock_accel_fleet_devices{node=\"n1\",type=\"pf\",numa_node=\"1\",state=\"free\"}")
            .await
            == Some(1.0)
    })
    .await;
    let m = c.metrics().await;
    assert_eq!(
        value(
            &m,
            "mock_accel_fleet_devices{node=\"n2\",type=\"pf\",numa_node=\"0\",state=\"free\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "mock_accel_fleet_devices{node=\"n1\",type=\"vf\",numa_node=\"0\",state=\"free\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&m, "mock_accel_fleet_device_classes"), Some(2.0));
    assert_eq!(value(&m, "mock_accel_fleet_nodes"), Some(3.0));
    // n3 runs an agent and publishes nothing.
    assert_eq!(value(&m, "mock_accel_fleet_nodes_without_slices"), Some(1.0));
    assert_eq!(value(&m, "mock_accel_fleet_node_slices{node=\"n3\"}"), Some(0.0));
    assert_eq!(
        value(
            &m,
            "mock_accel_fleet_claims{device_class=\"mock-accel-pf\",state=\"pending\"}"
        ),
        Some(0.0)
    );
    assert!(
        !m.contains("device_class=\"gpu\""),
        "another driver's class is not ours"
    );

    // A claim goes pending → allocated → reserved → prepared.
    rig.claims()
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "c1", "namespace": NS},
                        "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "mock-accel-pf"}}]}}})),
        )
        .await
        .unwrap();
    let state = |s: &'static str| format!("mock_accel_fleet_claims{{device_class=\"mock-accel-pf\",state=\"{s}\"}}");
    wait_until("pending", &c, || async {
        c.metric(&state("pending")).await == Some(1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let age = c
        .metric("mock_accel_fleet_oldest_pending_claim_seconds{device_class=\"mock-accel-pf\"}")
        .await
        .unwrap();
    assert!(age >= 1.0, "{age}\n{}", c.metrics().await);
    rig.claim_status("c1", json!({"allocation": allocation("n1", "mock1")}))
        .await;
    wait_until("allocated", &c, || async {
        c.metric(&state("allocated")).await == Some(1.0)
    })
    .await;
    let m = c.metrics().await;
    assert_eq!(value(&m, &state("pending")), Some(0.0));
    assert_eq!(
        value(
            &m,
            "mock_accel_fleet_devices{node=\"n1\",type=\"pf\",numa_node=\"1\",state=\"allocated\"}"
        ),
        Some(1.0)
    );
    assert!(
        value(
            &m,
            "mock_accel_fleet_devices{node=\"n1\",type=\"pf\",numa_node=\"1\",state=\"free\"}"
        )
        .is_none()
    );
    let waited = value(
        &m,
        "mock_accel_fleet_claim_allocation_seconds_sum{device_class=\"mock-accel-pf\"}",
    )
    .unwrap();
    assert_eq!(
        value(
            &m,
            "mock_accel_fleet_claim_allocation_seconds_count{device_class=\"mock-accel-pf\"}"
        ),
        Some(1.0)
    );
    assert!(waited >= 0.0, "{waited}");
    rig.claim_status(
        "c1",
        json!({"reservedFor": [{"resource": "pods", "name": "p", "uid": "pod-uid"}]}),
    )
    .await;
    wait_until("reserved", &c, || async {
        c.metric(&state("reserved")).await == Some(1.0)
    })
    .await;
    rig.claim_status(
        "c1",
        json!({"devices": [{"driver": DRIVER, "pool": "n1", "device": "mock1",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared", "message": "", "lastTransitionTime": Timestamp::now().to_string()}]}]}),
    )
    .await;
    wait_until("prepared", &c, || async {
        c.metric(&state("prepared")).await == Some(1.0)
    })
    .await;
    assert_eq!(c.metric(&state("reserved")).await, Some(0.0));

    // A Node deleted: its slice goes at once, with an Event, without the
    // garbage collector (Orphan: the dependents are left as if it never ran).
    let nodes: Api<Node> = Api::all(rig.client.clone());
    let orphan = DeleteParams::orphan();
    nodes.delete("n2", &orphan).await.unwrap();
    wait_until("n2's slice deleted", &c, || async {
        !rig.slice_names().await.contains(&"n2-a".to_string())
    })
    .await;
    let ev = rig.events_once("NodeGone", &c, |ev| !ev.is_empty()).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].involved_object.name.as_deref(), Some("n2-a"));
    assert_eq!(ev[0].involved_object.kind.as_deref(), Some("ResourceSlice"));
    assert!(
        ev[0].message.as_deref().unwrap().contains("Node n2 no longer exists"),
        "{ev:?}"
    );
    assert_eq!(ev[0].metadata.namespace.as_deref(), Some("default"));
    wait_until("counted", &c, || async {
        c.metric("mock_accel_controller_cleanups_total{reason=\"NodeGone\"}")
            .await
            == Some(1.0)
    })
    .await;

    // Out-of-date generation. n3's agent heartbeats: its pool is its own
    // business (it may be rewriting it slice by slice), never touched. ns
    // has no heartbeat: its old slice goes once the pool has been at the
    // newer generation for the grace period (by the controller's clock).
    let n3 = nodes.get("n3").await.unwrap().uid().unwrap();
    rig.slice("n3-old", "n3", &n3, 1, &[("mock0", "pf", 0)]).await;
    rig.slice("n3-new", "n3", &n3, 2, &[("mock0", "pf", 0)]).await;
    let ns = rig.node("ns").await;
    rig.slice("ns-old", "ns", &ns, 1, &[("mock0", "pf", 0)]).await;
    rig.slice("ns-new", "ns", &ns, 2, &[("mock0", "pf", 0)]).await;
    wait_until("stale counted", &c, || async {
        c.metric("mock_accel_fleet_stale_slices{node=\"ns\"}").await == Some(1.0)
    })
    .await;
    wait_until("stale slice deleted", &c, || async {
        !rig.slice_names().await.contains(&"ns-old".to_string())
    })
    .await;
    let names = rig.slice_names().await;
    assert!(names.contains(&"ns-new".to_string()), "{names:?}");
    assert!(
        names.contains(&"n3-old".to_string()),
        "a heartbeating agent's pool was touched: {names:?}"
    );
    let ev = rig.events_once("StaleGeneration", &c, |ev| !ev.is_empty()).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].involved_object.name.as_deref(), Some("ns-old"));

    // n1's agent, an hour behind all along, still has its slices. It stops
    // renewing: after its lease (1 s) and the grace period (2 s), by the
    // controller's clock, its slices go, and `kubectl describe node n1` says why.
    assert!(rig.slice_names().await.contains(&"n1-a".to_string()));
    assert_eq!(c.metric("mock_accel_fleet_agent_up{node=\"n1\"}").await, Some(1.0));
    drop(n1_agent);
    let stopped = Instant::now();
    wait_until("agent_up 0", &c, || async {
        c.metric("mock_accel_fleet_agent_up{node=\"n1\"}").await == Some(0.0)
    })
    .await;
    wait_until("n1's slice deleted", &c, || async {
        !rig.slice_names().await.contains(&"n1-a".to_string())
    })
    .await;
    let ev = rig
        .events_once("AgentGone", &c, |ev| {
            let kinds: Vec<_> = ev.iter().filter_map(|e| e.involved_object.kind.as_deref()).collect();
            kinds.contains(&"Node") && kinds.contains(&"ResourceSlice")
        })
        .await;
    // Not before the grace period: last renewal (≤ 200 ms before it
    // stopped) + 1 s lease + 2 s grace.
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_millis(2500),
        "deleted before the grace period: {after:?}"
    );
    let on_node = ev
        .iter()
        .find(|e| e.involved_object.kind.as_deref() == Some("Node"))
        .unwrap();
    assert_eq!(on_node.involved_object.name.as_deref(), Some("n1"));
    assert!(on_node.message.as_deref().unwrap().contains("n1-a"));
    // The prepared claim's device is gone from the fleet with its slice.
    wait_until("n1 devices gone", &c, || async {
        !c.metrics().await.contains("node=\"n1\",type=")
    })
    .await;

    // n3's agent, an hour ahead, stops: its renewTime still lies an hour in
    // the future, and its slices go all the same, after lease and grace.
    assert!(rig.slice_names().await.contains(&"n3-new".to_string()));
    drop(n3_agent);
    wait_until("n3's slices deleted", &c, || async {
        !rig.slice_names().await.iter().any(|s| s.starts_with("n3-"))
    })
    .await;

    // A watch that misses a deletion: the audit (every 1 s) finds and fixes it.
    let n4 = rig.node("n4").await;
    let _n4_agent = rig.agent("n4", SignedDuration::ZERO);
    rig.slice("n4-a", "n4", &n4, 1, &[("mock0", "pf", 0)]).await;
    wait_until("n4 seen", &c, || async {
        c.metric("mock_accel_fleet_node_slices{node=\"n4\"}").await == Some(1.0)
    })
    .await;
    rig.server
        .inject(Fault::server_errors(1_000_000).only(Some("watch"), Some("nodes")));
    rig.server.close_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes.delete("n4", &orphan).await.unwrap();
    wait_until("audit fixed it", &c, || async {
        !rig.slice_names().await.contains(&"n4-a".to_string())
    })
    .await;
    wait_until("drift counted", &c, || async {
        c.metric("mock_accel_controller_drift_total{kind=\"NodeGone\"}").await == Some(1.0)
    })
    .await;
    let m = c.metrics().await;
    assert!(
        value(&m, "mock_accel_controller_drift_total{kind=\"cache\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert!(value(&m, "mock_accel_controller_audits_total{result=\"drift\"}").unwrap() >= 1.0);
    assert!(value(&m, "mock_accel_controller_watch_errors_total{resource=\"nodes\"}").unwrap() >= 1.0);
    rig.server.clear_faults();

    // Deletes failing for a while: retried until done.
    let n5 = rig.node("n5").await;
    rig.slice("n5-a", "n5", &n5, 1, &[("mock0", "pf", 0)]).await;
    wait_until("n5 seen", &c, || async {
        c.metric("mock_accel_fleet_node_slices{node=\"n5\"}").await == Some(1.0)
    })
    .await;
    rig.server
        .inject(Fault::server_errors(3).only(Some("delete"), Some("resourceslices")));
    nodes.delete("n5", &orphan).await.unwrap();
    wait_until("deleted despite faults", &c, || async {
        !rig.slice_names().await.contains(&"n5-a".to_string())
    })
    .await;
    assert!(
        c.metric("mock_accel_controller_api_errors_total{op=\"delete\",kind=\"server\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // Every request failing for a moment: it steps down or holds on, and comes back.
    rig.server.inject(Fault::server_errors(40));
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.server.clear_faults();
    wait_until("leading again", &c, || async {
        c.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    let n6 = rig.node("n6").await;
    rig.slice("n6-a", "n6", &n6, 1, &[("mock0", "pf", 0)]).await;
    nodes.delete("n6", &orphan).await.unwrap();
    wait_until("working after the faults", &c, || async {
        !rig.slice_names().await.contains(&"n6-a".to_string())
    })
    .await;

    // The claim's deletion takes it out of the counts.
    rig.claims().delete("c1", &DeleteParams::default()).await.unwrap();
    wait_until("claim gone", &c, || async {
        c.metric(&state("prepared")).await == Some(0.0)
    })
    .await;
    promtool_check(&c.metrics().await);
    let mut c = c;
    let status = c.sigterm();
    assert!(status.success(), "{status:?}\n{}", c.logs());
}

async fn holder(rig: &Rig) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(rig.client.clone(), NS);
    leases
        .get_opt(&format!("{DRIVER}-controller"))
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_controllers_one_acts() {
    let rig = Rig::new().await;
    let mut a = rig.controller("ctl-a", &[]);
    wait_until("a leads", &a, || async {
        a.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    let b = rig.controller("ctl-b", &[]);
    wait_until("b up", &b, || async {
        b.metric("mock_accel_controller_leader").await == Some(0.0)
    })
    .await;
    // Several retry periods later b still stands by, with no fleet view.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.metric("mock_accel_controller_leader").await, Some(0.0));
    assert!(!b.metrics().await.contains("mock_accel_fleet_nodes"));
    assert!(holder(&rig).await.unwrap().starts_with("ctl-a_"));
    assert_eq!(get(b.admin, "/readyz").await.0, 200, "a standby is ready");

    // An orphan slice: cleaned up once, by the leader alone.
    rig.slice("ghost-a", "ghost", "gone-uid", 1, &[("mock0", "pf", 0)])
        .await;
    wait_until("ghost deleted", &a, || async { rig.slice_names().await.is_empty() }).await;
    rig.events_once("NodeGone", &a, |ev| !ev.is_empty()).await;
    // Several passes of both later, still one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.events("NodeGone").await.len(), 1);
    assert_eq!(
        a.metric("mock_accel_controller_cleanups_total{reason=\"NodeGone\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        b.metric("mock_accel_controller_cleanups_total{reason=\"NodeGone\"}")
            .await,
        Some(0.0)
    );

    // a stops cleanly and hands the lease back: b leads at once.
    let status = a.sigterm();
    assert!(status.success(), "{}", a.logs());
    assert!(a.logs().contains("handed the lease back"), "{}", a.logs());
    let t = Instant::now();
    wait_until("b leads", &b, || async {
        b.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    let handover = t.elapsed();
    rig.slice("ghost-b", "ghost", "gone-uid", 1, &[("mock0", "pf", 0)])
        .await;
    wait_until("b cleans", &b, || async { rig.slice_names().await.is_empty() }).await;
    // Its Event follows the delete: wait for it before the SIGKILL below,
    // or the kill may land between the two (CI saw it: two Events of three).
    rig.events_once("NodeGone", &b, |ev| ev.len() >= 2).await;
    assert!(holder(&rig).await.unwrap().starts_with("ctl-b_"));

    // b dies without a word (SIGKILL): c takes over once the lease expires.
    drop(b);
    let c = rig.controller("ctl-c", &[]);
    let t = Instant::now();
    wait_until("c leads", &c, || async {
        c.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    let takeover = t.elapsed();
    assert!(
        takeover >= Duration::from_millis(1500),
        "took a live lease? {takeover:?}"
    );
    rig.slice("ghost-c", "ghost", "gone-uid", 1, &[("mock0", "pf", 0)])
        .await;
    wait_until("c cleans", &c, || async { rig.slice_names().await.is_empty() }).await;
    let ev = rig.events_once("NodeGone", &c, |ev| ev.len() >= 3).await;
    assert_eq!(ev.len(), 3, "{ev:?}");
    println!("handover after SIGTERM: {handover:?}; takeover after SIGKILL: {takeover:?}");
}

/// Issue 18 #4: a leader whose renewal hangs (a dead pooled connection,
/// no timeout) went on leading while a standby took the expired Lease: two
/// leaders. It now steps down at its renew deadline, whatever the request
/// is doing, before the Lease can expire.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_renewal_hangs_steps_down_at_its_renew_deadline() {
    let rig = Rig::new().await;
    let a = rig.controller("ctl-a", &[]);
    wait_until("a leads", &a, || async {
        a.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
    let b = rig.controller("ctl-b", &[]);
    wait_until("b stands by", &b, || async {
        b.metric("mock_accel_controller_leader").await == Some(0.0)
    })
    .await;
    // The next Lease update hangs: a's renewal (b only reads a held Lease).
    // Its Lease expires 2 s after its last renewal; b may take it then.
    rig.server.inject(Fault::hang(1).only(Some("update"), Some("leases")));
    let t = Instant::now();
    let mut a_down = None;
    while t.elapsed() < Duration::from_secs(4) {
        let (la, lb) = tokio::join!(
            a.metric("mock_accel_controller_leader"),
            b.metric("mock_accel_controller_leader")
        );
        // The dip may be too short to sample (a takes its own, still
        // valid, Lease back at once): its log says when.
        if a_down.is_none() && (la == Some(0.0) || a.logs().contains("renew deadline")) {
            a_down = Some(t.elapsed());
        }
        assert!(
            !(la == Some(1.0) && lb == Some(1.0)),
            "two leaders at {:?}\n--- a ---\n{}",
            t.elapsed(),
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Down at its renew deadline (1.5 s), not when the request ends (never).
    let a_down = a_down.unwrap_or_else(|| panic!("a never stepped down\n{}", a.logs()));
    assert!(a_down < Duration::from_millis(2500), "{a_down:?}");
    println!("a stepped down {a_down:?} after its renewal hung");
    // Someone leads again (a, whose Lease it still is, or b).
    wait_until("a leader again", &a, || async {
        a.metric("mock_accel_controller_leader").await == Some(1.0)
            || b.metric("mock_accel_controller_leader").await == Some(1.0)
    })
    .await;
}

#[test]
fn bad_leader_timings_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"))
        .args([
            "--mode=controller",
            "--leader-elect-lease-duration=5s",
            "--leader-elect-renew-deadline=10s",
        ])
        .env("KUBECONFIG", Path::new("/nonexistent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--leader-elect-lease-duration must be greater than"),
        "{err}"
    );
}
