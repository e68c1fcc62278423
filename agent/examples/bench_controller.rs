//! The controller at fleet scale, against the test API server on loopback:
//! start → leading with the whole cluster in view, the cost of a /metrics
//! scrape (the fleet view is computed at each), Node deleted → its slice
//! deleted, and the API requests it makes while nothing changes.
//!
//! `just bench-controller` (release). BENCH_NODES (default 500) nodes, each
//! with a heartbeat, one slice of 8 devices and 4 claims (half allocated).

use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_accel_agent::{Agent, Args, Options, heartbeat};
use mock_device_testkit::apiserver::{ApiServer, Config};
use mock_device_testkit::http_get;
use serde_json::{Value, json};

#[path = "../tests/common/mod.rs"]
mod common;

const DRIVER: &str = "mock-accel.example.com";

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes_n: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let server = ApiServer::start(Config::default())?;
    let client = Client::try_from(kube::Config::new(server.url().parse()?))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    for (name, kind) in [("mock-accel-pf", "pf"), ("mock-accel-vf", "vf")] {
        let expr = format!("device.driver == \"{DRIVER}\" && device.attributes[\"{DRIVER}\"].deviceType == \"{kind}\"");
        Api::<DeviceClass>::all(client.clone())
            .create(
                &pp,
                &obj(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}})),
            )
            .await?;
    }
    let started = Instant::now();
    let far = Timestamp::now() + SignedDuration::from_hours(1);
    for i in 0..nodes_n {
        let node = format!("node-{i:04}");
        let uid = nodes
            .create(&pp, &obj(json!({"metadata": {"name": node}})))
            .await?
            .uid()
            .unwrap();
        leases
            .create(
                &pp,
                &obj(json!({"metadata": {"name": heartbeat::lease_name(DRIVER, &node),
                                         "labels": {"driver": DRIVER, "app.kubernetes.io/managed-by": "mock-accel-agent"}},
                            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": far.to_string()}})),
            )
            .await?;
        let devices: Vec<Value> = (0..8)
            .map(|d| {
                let (name, kind) = if d < 2 {
                    (format!("mock{d}"), "pf")
                } else {
                    (format!("mock{}-vf{}", d % 2, d / 2 - 1), "vf")
                };
                json!({"name": name, "attributes": {"deviceType": {"string": kind}, "numaNode": {"int": d % 2}}})
            })
            .collect();
        slices
            .create(
                &pp,
                &obj(json!({"metadata": {"name": format!("{node}-{DRIVER}-0"), "labels": {"driver": DRIVER},
                                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]},
                            "spec": {"driver": DRIVER, "nodeName": node,
                                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": devices}})),
            )
            .await?;
        for c in 0..4 {
            let name = format!("{node}-claim-{c}");
            claims
                .create(
                    &pp,
                    &obj(json!({"metadata": {"name": name},
                                "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "mock-accel-vf"}}]}}})),
                )
                .await?;
            if c < 2 {
                claims
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                            {"request": "r", "driver": DRIVER, "pool": node, "device": format!("mock{c}-vf0")}]}}}})),
                    )
                    .await?;
            }
        }
    }
    println!(
        "controller at scale: {nodes_n} nodes, {nodes_n} slices ({} devices), {} claims; created in {:.1} s",
        nodes_n * 8,
        nodes_n * 4,
        started.elapsed().as_secs_f64()
    );

    let args = Args::try_parse_from([
        "agent",
        "--mode=controller",
        "--namespace=default",
        "--admin-address=127.0.0.1:0",
        "--rescan-interval=30s",
        "--v=0",
    ])?;
    let t = Instant::now();
    let agent = Agent::start(Options {
        args,
        api: Some(kube::Config::new(server.url().parse()?)),
        injected: None,
    })
    .await?;
    let devices_series = "mock_accel_fleet_nodes";
    loop {
        let m = http_get(agent.admin_addr, "/metrics").await.1;
        if value(&m, devices_series) == Some(nodes_n as f64) {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "the fleet view never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "start -> leading with every object in view: {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..100 {
        let t = Instant::now();
        size = http_get(agent.admin_addr, "/metrics").await.1.len();
        scrapes.push(t.elapsed());
    }
    common::report(&format!("GET /metrics ({} KiB)", size / 1024), scrapes);

    // Idle: what it asks of the API while nothing changes.
    server.reset_counts();
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    let counts = server.request_counts();
    let total: u64 = counts.values().sum();
    println!(
        "idle {} s: {total} API requests ({:?}) -> {} per hour",
        idle.as_secs(),
        counts,
        total * 3600 / idle.as_secs()
    );

    // Node deleted (no garbage collector) -> its slice deleted by the
    // controller: one at a time (quiet before each), then back to back
    // (passes are at most every 100 ms: bursts fold into one).
    let deleted = 50.min(nodes_n / 4);
    for (what, pause, first) in [
        (
            "Node deleted -> slice deleted (isolated)",
            Duration::from_millis(250),
            0,
        ),
        ("Node deleted -> slice deleted (back to back)", Duration::ZERO, deleted),
    ] {
        let mut cleanups = Vec::new();
        for i in first..first + deleted {
            tokio::time::sleep(pause).await;
            let node = format!("node-{i:04}");
            let slice = format!("{node}-{DRIVER}-0");
            let t = Instant::now();
            nodes.delete(&node, &DeleteParams::orphan()).await?;
            while slices.get_opt(&slice).await?.is_some() {
                anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "{slice} never deleted");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            cleanups.push(t.elapsed());
        }
        common::report(what, cleanups);
    }
    let deleted = 2 * deleted;
    let left = slices.list(&ListParams::default()).await?.items.len();
    anyhow::ensure!(left == nodes_n - deleted, "{left} slices left");
    agent.stop().await?;
    Ok(())
}
