//! The agent against the test API server, on a fake sysfs tree, with
//! injected uevents and API faults. The agent runs in-process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_accel_agent::backend::Trigger;
use mock_accel_agent::backend::sysfs::{write_fake_function, write_fake_tree};
use mock_accel_agent::backend::uevents;
use mock_accel_agent::{Agent, Args, Options};
use mock_device_testkit::apiserver::{ApiServer, Config, Fault};
use mock_device_testkit::http_get as get;
use serde_json::json;
use tokio::sync::mpsc;

mod common;

/// Polls `f` until it holds; a deadline generous for a loaded 2-core machine.
async fn wait<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Rig {
    server: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    root: PathBuf,
    devices: PathBuf,
}

impl Rig {
    async fn new(pfs: u32, vfs: u32) -> Rig {
        let server = ApiServer::start(Config::default()).unwrap();
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, pfs, vfs).unwrap();
        let devices = dir.path().join("sys/devices/mock-accel");
        Rig {
            server,
            client,
            dir,
            root,
            devices,
        }
    }

    async fn agent(&self, extra: &[&str]) -> (Agent, mpsc::Sender<Trigger>) {
        let (tx, rx) = mpsc::channel(1024);
        let mut argv = vec![
            "agent".to_string(),
            "--node-name=node-a".into(),
            format!("--sysfs-root={}", self.root.display()),
            "--uevents=false".into(),
            "--rescan-interval=0".into(),
            "--admin-address=127.0.0.1:0".into(),
            // The kubelet plugin has its own tests (plugin_api.rs).
            "--kubelet-plugin=false".into(),
            // The node's agents share it (the publisher's turn).
            format!("--plugin-socket={}", self.dir.path().join("plugin").display()),
            "--namespace=default".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Args::try_parse_from(argv).unwrap();
        let agent = Agent::start(Options {
            args,
            api: Some(kube::Config::new(self.server.url().parse().unwrap())),
            injected: Some(rx),
        })
        .await
        .unwrap();
        (agent, tx)
    }

    fn slices(&self) -> Api<ResourceSlice> {
        Api::all(self.client.clone())
    }

    /// Device names per device slice (the counter sets' slices left out),
    /// once the API holds `want` devices in a consistent pool (every slice
    /// of the newest generation, count right).
    async fn wait_for(&self, want: usize) -> BTreeMap<String, Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self
                .slices()
                .list(&ListParams::default().labels("driver=mock-accel.example.com"))
                .await
                .unwrap();
            let generation = list.items.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0);
            let consistent = list.items.iter().all(|s| {
                s.spec.pool.generation == generation && s.spec.pool.resource_slice_count == list.items.len() as i64
            });
            let devices: BTreeMap<String, Vec<String>> = list
                .items
                .iter()
                .filter(|s| s.spec.shared_counters.is_none())
                .map(|s| {
                    (
                        s.name_any(),
                        s.spec.devices.iter().flatten().map(|d| d.name.clone()).collect(),
                    )
                })
                .collect();
            if consistent && devices.values().map(Vec::len).sum::<usize>() == want {
                return devices;
            }
            assert!(
                Instant::now() < deadline,
                "the API never held {want} devices: {devices:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A uevent as the kernel would send it for a class device.
    fn uevent(action: &str, name: &str) -> Trigger {
        common::uevent(action, name)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_and_follows_injected_uevents_without_rescans() {
    let rig = Rig::new(2, 2).await;
    let (agent, events) = rig.agent(&[]).await;
    let slices = rig.wait_for(6).await;
    assert_eq!(
        slices.values().next().unwrap(),
        &["mock0", "mock0-vf0", "mock0-vf1", "mock1", "mock1-vf0", "mock1-vf1"]
    );
    assert_eq!(get(agent.admin_addr, "/readyz").await.0, 200);
    assert_eq!(get(agent.admin_addr, "/livez").await.0, 200);

    // Hot-plug: the tree changes and the kernel says so.
    write_fake_function(&rig.root, &rig.devices, 5, None, 0).unwrap();
    events.send(Rig::uevent("add", "mock5")).await.unwrap();
    let slices = rig.wait_for(7).await;
    assert!(slices.values().next().unwrap().contains(&"mock5".to_string()));

    // Hot-unplug.
    for name in ["mock1_vf0", "mock1_vf1", "mock1"] {
        std::fs::remove_file(rig.root.join(name)).unwrap();
        events.send(Rig::uevent("remove", name)).await.unwrap();
    }
    rig.wait_for(4).await;

    // A malformed event is dropped; the agent keeps serving.
    let bad = uevents::parse(b"nonsense", "kernel");
    assert!(bad.is_none());
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mock_accel_uevents_malformed_total{source=\"kernel\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mock_accel_uevents_total{source=\"kernel\",action=\"remove\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("mock_accel_event_to_slice_seconds_count"), "{metrics}");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_slices_after_a_kubelet_wipe_or_a_foreign_edit() {
    let rig = Rig::new(2, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    let first = rig.wait_for(2).await;
    let name = first.keys().next().unwrap().clone();

    // The wipe deletes both: the counter sets' slice and the devices'.
    assert_eq!(rig.server.restart_kubelet("node-a"), 2);
    rig.wait_for(2).await;
    let gen_after_wipe = rig.slices().get(&name).await.unwrap().spec.pool.generation;
    assert!(gen_after_wipe > 1);

    // Someone edits our slice: the agent puts it back.
    rig.slices()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"devices": [{"name": "intruder"}]}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = rig.slices().get(&name).await.unwrap();
        let names: Vec<String> = s.spec.devices.iter().flatten().map(|d| d.name.clone()).collect();
        if names == ["mock0", "mock1"] {
            break;
        }
        assert!(Instant::now() < deadline, "not restored: {names:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await.unwrap();
}

/// Issue 18 #6: the Node's uid was read once at start. A Node deleted and
/// created again (a node re-registered under the same name) left our
/// slices owned by the old uid, for the garbage collector and the
/// controller to delete and the agent to recreate, in a loop. The agent
/// watches its Node and moves the slices to the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_created_again_owns_the_slices() {
    let rig = Rig::new(2, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    rig.wait_for(2).await;
    let nodes: Api<Node> = Api::all(rig.client.clone());
    let owners = || async {
        let list = rig.slices().list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .flat_map(|s| s.metadata.owner_references.iter().flatten().map(|o| o.uid.clone()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let old = nodes.get("node-a").await.unwrap().uid().unwrap();
    assert_eq!(owners().await, [old.clone()].into());
    nodes.delete("node-a", &Default::default()).await.unwrap();
    wait("not ready without a Node", || async {
        get(agent.admin_addr, "/readyz").await.0 == 503
    })
    .await;
    let new = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
        )
        .await
        .unwrap()
        .uid()
        .unwrap();
    assert_ne!(old, new);
    wait("the slices owned by the new Node", || async {
        owners().await == [new.clone()].into()
    })
    .await;
    rig.wait_for(2).await;
    wait("ready again", || async {
        get(agent.admin_addr, "/readyz").await.0 == 200
    })
    .await;
    agent.stop().await.unwrap();
}

/// Issue 18 #2: during a rolling update (maxSurge 1) two agent pods run on
/// a node. Both published: when their output differed, each rewrote the
/// other's slices at API speed until the old one ended. Now the newest
/// publishes and the old one steps aside (and goes on serving the kubelet),
/// without the new one waiting for it to exit.
#[tokio::test(flavor = "multi_thread")]
async fn two_agents_on_a_node_the_newest_publishes_alone() {
    let rig = Rig::new(4, 0).await;
    let (old, _old_events) = rig.agent(&["--max-devices-per-slice=4"]).await;
    assert_eq!(rig.wait_for(4).await.len(), 1);
    // The new version publishes another layout: one device per slice.
    let started = Instant::now();
    let (new, _new_events) = rig.agent(&["--max-devices-per-slice=1"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig.wait_for(4).await.len() != 4 {
        assert!(Instant::now() < deadline, "the new agent's layout never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    // And it stays: nobody rewrites it.
    rig.server.reset_counts();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: u64 = ["create", "update", "delete"]
        .iter()
        .map(|v| rig.server.requests(v, "resourceslices"))
        .sum();
    assert_eq!(writes, 0, "the agents fight: {:?}", rig.server.request_counts());
    assert_eq!(rig.wait_for(4).await.len(), 4);
    println!("the newer agent's layout published {took:?} after it started");
    // The old one is still running (it serves the kubelet until it ends).
    assert_eq!(get(old.admin_addr, "/livez").await.0, 200);
    old.stop().await.unwrap();
    new.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_api_faults_and_converges() {
    let rig = Rig::new(2, 1).await;
    // The first writes fail: 500s, then 429s, then a conflict.
    rig.server
        .inject(Fault::server_errors(3).only(Some("create"), Some("resourceslices")));
    rig.server
        .inject(Fault::too_many_requests(2, 0).only(Some("create"), Some("resourceslices")));
    let (agent, events) = rig.agent(&[]).await;
    rig.wait_for(4).await;
    // 3 failed, 2 throttled (kube-rs's client retries those itself), then
    // the counter sets' slice and the devices' accepted.
    assert_eq!(
        rig.server.requests("create", "resourceslices"),
        7,
        "{:?}",
        rig.server.request_counts()
    );

    rig.server.inject(Fault {
        count: 2,
        code: 409,
        retry_after_seconds: None,
        verb: Some("update".into()),
        resource: Some("resourceslices".into()),
    });
    write_fake_function(&rig.root, &rig.devices, 0, Some(1), 2).unwrap();
    events.send(Rig::uevent("add", "mock0_vf1")).await.unwrap();
    rig.wait_for(5).await;

    // Slow API: still converges.
    rig.server.set_latency(Duration::from_millis(200));
    write_fake_function(&rig.root, &rig.devices, 3, None, 0).unwrap();
    events.send(Rig::uevent("add", "mock3")).await.unwrap();
    rig.wait_for(6).await;
    rig.server.set_latency(Duration::ZERO);

    // The watch is cut: the agent re-watches and still restores a wipe.
    rig.server.close_watches();
    rig.server.restart_kubelet("node-a");
    rig.wait_for(6).await;

    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    for want in [
        "mock_accel_api_errors_total{kind=\"server\"}",
        "mock_accel_api_errors_total{kind=\"conflict\"}",
        "mock_accel_slice_writes_total{verb=\"update\",result=\"conflict\"}",
    ] {
        assert!(
            metrics.contains(want),
            "missing {want} in\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("error"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(get(agent.admin_addr, "/livez").await.0, 200);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_out_an_api_that_is_down_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys/class/mock-accel");
    write_fake_tree(&root, 1, 0).unwrap();
    let client = Client::try_from(kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap())).unwrap();
    let args = Args::try_parse_from([
        "agent",
        "--node-name=node-a",
        &format!("--sysfs-root={}", root.display()),
        "--uevents=false",
        "--rescan-interval=0",
        "--admin-address=127.0.0.1:0",
        "--kubelet-plugin=false",
        &format!("--plugin-socket={}", dir.path().join("plugin").display()),
    ])
    .unwrap();
    let agent = Agent::start(Options {
        args,
        api: Some(kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap())),
        injected: None,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(agent.admin_addr, "/livez").await.0,
        200,
        "alive while the API is down"
    );
    assert_eq!(
        get(agent.admin_addr, "/readyz").await.0,
        503,
        "not ready while the API is down"
    );

    let server = ApiServer::start(Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..Config::default()
    })
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap(),
        )
        .await
        .unwrap();
    let slices: Api<ResourceSlice> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    while slices.list(&ListParams::default()).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ready once the whole pool is written: the first slice seen may be
    // one of several the publisher is still writing (the counter sets go
    // first), so readiness is waited for, not read at once (a CI run read
    // 503 here).
    while get(agent.admin_addr, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready once the API was up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_means_no_writes_and_a_storm_few() {
    let rig = Rig::new(4, 0).await;
    let (agent, events) = rig.agent(&["--rescan-interval=100ms"]).await;
    rig.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.server.reset_counts();
    tokio::time::sleep(Duration::from_secs(2)).await; // 20 rescans
    // No slice writes; the heartbeat Lease is renewed every 10 s at most.
    let slice_writes: u64 = rig
        .server
        .request_counts()
        .iter()
        .filter(|(k, _)| {
            k.ends_with(" resourceslices")
                && !k.starts_with("get ")
                && !k.starts_with("list ")
                && !k.starts_with("watch ")
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(slice_writes, 0, "idle writes: {:?}", rig.server.request_counts());
    assert!(
        rig.server.writes() <= 1,
        "idle writes: {:?}",
        rig.server.request_counts()
    );

    // Storm: every PF enables 16 VFs at once (64 VFs, 3 events each).
    for pf in 0..4 {
        for vf in 0..16 {
            write_fake_function(&rig.root, &rig.devices, pf, Some(vf), 16).unwrap();
        }
    }
    rig.server.reset_counts();
    let t = Instant::now();
    for pf in 0..4 {
        for vf in 0..16 {
            for action in ["add", "add", "bind"] {
                events
                    .send(Rig::uevent(action, &format!("mock{pf}_vf{vf}")))
                    .await
                    .unwrap();
            }
        }
    }
    let slices = rig.wait_for(4 * 17).await;
    let converge = t.elapsed();
    let writes = rig.server.writes();
    eprintln!(
        "storm: {writes} writes for {} slices, converged in {converge:?}",
        slices.len()
    );
    assert!(
        writes as usize <= slices.len() + 2,
        "storm writes {writes}: {:?}",
        rig.server.request_counts()
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_node_and_a_broken_device() {
    let rig = Rig::new(64, 64).await;
    // One broken function: skipped, the rest published.
    let broken = std::fs::canonicalize(rig.root.join("mock7_vf3")).unwrap();
    std::fs::write(broken.join("memory_size"), "lots\n").unwrap();
    let (agent, _events) = rig.agent(&[]).await;
    let slices = rig.wait_for(64 * 65 - 1).await;
    // Devices consuming counters: at most 64 a slice. Each PF group of 65
    // fills one; the 63 PFs left over (mock7 lost a VF: its group fits)
    // share one more.
    assert_eq!(
        slices.len(),
        65,
        "{:?}",
        slices.values().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(slices.values().all(|d| d.len() <= 64));
    let sets: usize = rig
        .slices()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.spec.shared_counters.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(sets, 64, "a counter set per PF");
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mock_accel_devices_skipped_total{reason=\"bad_value\"} 1"),
        "{metrics}"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool() {
    let rig = Rig::new(1, 1).await;
    let (agent, events) = rig.agent(&[]).await;
    rig.wait_for(2).await;
    events.send(Rig::uevent("change", "mock0")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, text) = get(agent.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    mock_device_testkit::promtool_check(&text);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_lease_is_renewed() {
    use k8s_openapi::api::coordination::v1::Lease;
    let rig = Rig::new(1, 0).await;
    let (agent, _events) = rig.agent(&["--heartbeat-interval=200ms"]).await;
    let leases: Api<Lease> = Api::namespaced(rig.client.clone(), "default");
    let name = mock_accel_agent::heartbeat::lease_name("mock-accel.example.com", "node-a");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(l) = leases.get_opt(&name).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "no heartbeat Lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(
        first.labels().get("driver").map(String::as_str),
        Some("mock-accel.example.com")
    );
    // Selected by the controller's selector.
    let selected = leases
        .list(&ListParams::default().labels(&mock_accel_agent::heartbeat::selector("mock-accel.example.com")))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    let renewed = || async { leases.get(&name).await.unwrap().spec.unwrap() };
    let first_renewal = spec.renew_time.clone().unwrap().0;
    wait("renewed", || async {
        renewed().await.renew_time.unwrap().0 > first_renewal
    })
    .await;
    // One request a beat: the Lease it wrote last is renewed as is.
    rig.server.reset_counts();
    wait("three renewals", || async {
        rig.server.requests("update", "leases") >= 3
    })
    .await;
    assert_eq!(
        rig.server.requests("get", "leases"),
        0,
        "{:?}",
        rig.server.request_counts()
    );
    // Someone else writes it (409 for the agent): read again, renewed again.
    let mut theirs = leases.get(&name).await.unwrap();
    theirs.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    leases.replace(&name, &PostParams::default(), &theirs).await.unwrap();
    wait("taken back", || async {
        renewed().await.holder_identity.as_deref() == Some("node-a")
    })
    .await;
    // The API failing does not stop it: its only Lease updates fail three
    // times, so a renewal newer than this comes after the failures.
    let injected = Timestamp::now();
    rig.server
        .inject(Fault::server_errors(3).only(Some("update"), Some("leases")));
    wait("renewed after the failures", || async {
        renewed().await.renew_time.unwrap().0 > injected
    })
    .await;
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(metrics.contains("mock_accel_heartbeat_failures_total"), "{metrics}");
    // Issue 18 #4: a renewal that hangs (a dead connection) stopped every
    // later one: the controller then took the live agent for gone. Now a
    // beat gives up after an interval and the next one renews.
    let hung = Timestamp::now();
    rig.server.inject(Fault::hang(1).only(Some("update"), Some("leases")));
    wait("renewed after a hung request", || async {
        renewed().await.renew_time.unwrap().0 > hung + SignedDuration::from_millis(300)
    })
    .await;
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mock_accel_api_errors_total{kind=\"timeout\"}"),
        "{metrics}"
    );
    agent.stop().await.unwrap();
}
