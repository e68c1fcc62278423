//! The real Prometheus server (Debian's `prometheus`) scrapes a node agent
//! (fake sysfs, kubelet plugin on, test API server) and the controller
//! (the binary) on loopback while devices are hot-plugged and claims
//! prepared; then every PromQL expression of the Grafana dashboards must
//! parse and return data.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_accel_agent::backend::sysfs::{write_fake_function, write_fake_tree};
use mock_accel_agent::{Agent, Args, Options};
use mock_device_testkit::apiserver::{ApiServer, Config, Fault};
use mock_device_testkit::kubelet::{Api as DraApi, Claim};
use mock_device_testkit::{dashboards, http_get as get, promtool_check, workspace_root};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "node-a";

/// Expressions with no data off a real kernel: the eBPF probes cannot load
/// on the build host (they are tested in the guest kernel, ebpf.sh).
const NEEDS_EBPF: [&str; 2] = ["mock_accel_ebpf_events_total", "mock_accel_ebpf_attached"];

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A GET on loopback with a query, the body as JSON.
async fn query(prom: SocketAddr, path: &str, params: &[(&str, &str)]) -> Value {
    let q = form_urlencoded(params);
    let (code, body) = get(prom, &format!("{path}?{q}")).await;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code} {body}: {e}"));
    assert_eq!(code, 200, "{path}?{q}: {v}");
    v
}

fn form_urlencoded(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_and_every_dashboard_query_returns_data() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("prometheus not found: apt-get install -y prometheus (./dev setup does)");
    let server = ApiServer::start(Config::default()).unwrap();
    let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": NODE}})))
        .await
        .unwrap();
    for (name, kind) in [("mock-accel-pf", "pf"), ("mock-accel-vf", "vf")] {
        let expr = format!("device.driver == \"{DRIVER}\" && device.attributes[\"{DRIVER}\"].deviceType == \"{kind}\"");
        Api::<DeviceClass>::all(client.clone())
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}})),
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys/class/mock-accel");
    let devices = dir.path().join("sys/devices/mock-accel");
    write_fake_tree(&root, 2, 2).unwrap();
    fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();

    // The node agent, in this process (events injected).
    let (tx, rx) = mpsc::channel(64);
    let p = |s: &str| dir.path().join(s).display().to_string();
    let args = Args::try_parse_from([
        "agent".to_string(),
        format!("--node-name={NODE}"),
        format!("--sysfs-root={}", root.display()),
        "--uevents=false".into(),
        "--ebpf=false".into(),
        "--rescan-interval=0".into(),
        "--admin-address=127.0.0.1:0".into(),
        format!("--plugin-socket={}", p(&format!("plugins/{DRIVER}"))),
        format!("--registry-dir={}", p("registry")),
        format!("--cdi-root={}", p("cdi")),
        format!("--boot-id-path={}", p("boot_id")),
        "--namespace=default".into(),
        "--heartbeat-interval=1s".into(),
    ])
    .unwrap();
    let agent = Agent::start(Options {
        args,
        api: Some(kube::Config::new(server.url().parse().unwrap())),
        injected: Some(rx),
    })
    .await
    .unwrap();

    // The controller, as a process.
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let controller_addr = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"));
    cmd.args([
        "--mode=controller",
        "--namespace=default",
        "--rescan-interval=1s",
        "--agent-grace-period=1m",
        "--leader-elect-lease-duration=2s",
        "--leader-elect-renew-deadline=1500ms",
        "--leader-elect-retry-period=200ms",
        &format!("--admin-address={controller_addr}"),
    ])
    .env("KUBECONFIG", &kubeconfig)
    .stdout(Stdio::null())
    .stderr(fs::File::create(dir.path().join("controller.log")).unwrap());
    let _controller = common::Killed(mock_device_testkit::process::spawn(cmd).unwrap());

    // Prometheus, scraping both every second.
    let prom_addr = common::free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: node-agent\n    static_configs:\n      - targets: ['{}']\n  - job_name: controller\n    static_configs:\n      - targets: ['{}']\n",
        agent.admin_addr, controller_addr
    );
    fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let mut cmd = Command::new(&prometheus);
    cmd.args([
        &format!("--config.file={}", p("prometheus.yml")),
        &format!("--storage.tsdb.path={}", p("tsdb")),
        &format!("--web.listen-address={prom_addr}"),
        "--log.level=warn",
    ])
    .stdout(Stdio::null())
    .stderr(fs::File::create(dir.path().join("prometheus.log")).unwrap());
    let _prom = common::Killed(mock_device_testkit::process::spawn(cmd).unwrap());
    wait_for("both targets up", 60, async || {
        if tokio::net::TcpStream::connect(prom_addr).await.is_err() {
            return false;
        }
        let v = query(prom_addr, "/api/v1/query", &[("query", "sum(up)")]).await;
        v["data"]["result"][0]["value"][1] == "2"
    })
    .await;

    // Activity while it scrapes: hot-plug, a claim waiting then allocated,
    // prepare and unprepare, a failed prepare, an orphan slice cleaned up.
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    wait_for("published", 30, async || {
        !slices.list(&Default::default()).await.unwrap().items.is_empty()
    })
    .await;
    let registry = dir.path().join("registry");
    let kubelet = common::kubelet(&registry).await.unwrap();
    // Spread over several scrapes: a series' first sample already holds its
    // first observation, so rates need changes after it.
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(common::allocated_claim(&client, &format!("waiting-{i}"), "mock-accel-vf", &[]).await);
    }
    let held = common::allocated_claim(&client, "held", "mock-accel-pf", &[(DRIVER, NODE, "mock0")]).await;
    for round in 0..3u32 {
        if round == 1 {
            // One failed slice write (retried): the API error series.
            server.inject(Fault::server_errors(1).only(Some("update"), Some("resourceslices")));
        }
        write_fake_function(&root, &devices, 1, Some(2 + round), 5).unwrap();
        tx.send(common::uevent("add", &format!("mock1_vf{}", 2 + round)))
            .await
            .unwrap();
        let device = format!("mock1-vf{}", 2 + round);
        wait_for("the new VF published", 30, async || {
            slices
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|s| s.spec.devices.iter().flatten().any(|d| d.name == device))
        })
        .await;
        claims
            .patch_status(
                &format!("waiting-{round}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                    {"request": "r0", "driver": DRIVER, "pool": NODE, "device": device}]}}}})),
            )
            .await
            .unwrap();
        let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&held)).await.unwrap();
        assert!(out[&held.uid].is_ok(), "{out:?}");
        if round < 2 {
            assert_eq!(
                kubelet
                    .unprepare(DraApi::V1, std::slice::from_ref(&held))
                    .await
                    .unwrap()[&held.uid],
                Ok(())
            );
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let w = &waiting[0];
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(w)).await.unwrap()[&w.uid].is_ok());
    let ghost = Claim::new("default", "ghost", "no-such-uid");
    assert!(
        kubelet
            .prepare(DraApi::V1, &[ghost])
            .await
            .unwrap()
            .values()
            .all(|r| r.is_err())
    );
    slices
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "orphan"},
                "spec": {"driver": DRIVER, "nodeName": "gone", "pool": {"name": "gone", "generation": 1, "resourceSliceCount": 1}, "devices": []}})),
        )
        .await
        .unwrap();
    wait_for("the orphan cleaned up", 30, async || {
        !slices
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|s| s.name_any() == "orphan")
    })
    .await;
    // Prepared claims show as such in the fleet view.
    wait_for("the fleet sees a prepared claim", 30, async || {
        let v = query(
            prom_addr,
            "/api/v1/query",
            &[("query", "sum(mock_accel_fleet_claims{state=\"prepared\"})")],
        )
        .await;
        v["data"]["result"][0]["value"][1] == "2"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The template variable of the node view.
    let v = query(
        prom_addr,
        "/api/v1/label/node/values",
        &[("match[]", "mock_accel_agent_info")],
    )
    .await;
    assert_eq!(v["data"], json!([NODE]), "{v}");

    let mut checked = 0;
    let mut failures = Vec::new();
    for q in dashboards::queries(&workspace_root().join("dashboards")).unwrap() {
        let promql = q.promql("1m", ".*");
        let (_, body) = get(
            prom_addr,
            &format!("/api/v1/query?{}", form_urlencoded(&[("query", &promql)])),
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let ebpf_only = NEEDS_EBPF.iter().any(|m| promql.contains(m));
        match dashboards::judge(&v) {
            Ok(_) => {}
            Err(why) if why == "no data" && ebpf_only => {}
            Err(why) => failures.push(format!("{} / {}: {why}: {promql}", q.file, q.title)),
        }
        checked += 1;
    }
    // The exempted names are the agent's real ones (no typo hides there).
    assert_eq!(
        NEEDS_EBPF,
        [
            mock_accel_agent::metrics::EBPF_EVENTS,
            mock_accel_agent::metrics::EBPF_ATTACHED
        ]
    );
    println!("{checked} dashboard queries checked against Prometheus");
    assert!(
        failures.is_empty(),
        "{}\n--- prometheus log ---\n{}",
        failures.join("\n"),
        fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    promtool_check(&get(agent.admin_addr, "/metrics").await.1);
    promtool_check(&get(controller_addr, "/metrics").await.1);
    agent.stop().await.unwrap();
}
