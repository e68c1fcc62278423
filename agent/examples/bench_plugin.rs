//! `just bench`: NodePrepareResources / NodeUnprepareResources latency,
//! played as the kubelet over the agent's real unix socket, against the
//! test API server on loopback, for a 1-device and an 8-device claim.
//!
//! Where things live, as on a node: the checkpoint (fsync'ed) on disk
//! under target/, the CDI directory and the fake sysfs on tmpfs
//! (/dev/shm) when there is one. Each round is a full cycle: the claim is
//! read from the API again, devices marked, the spec written, and undone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, PostParams};
use mock_accel_agent::backend::sysfs::write_fake_tree;
use mock_accel_agent::{Agent, Args, Options};
use mock_device_testkit::apiserver::{ApiServer, Config};
use mock_device_testkit::kubelet::{Api as DraApi, Claim};
use serde_json::json;

#[path = "../tests/common/mod.rs"]
mod common;

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "bench-node";

async fn claim(client: &Client, name: &str, devices: &[String]) -> Claim {
    let devices: Vec<(&str, &str, &str)> = devices.iter().map(|d| (DRIVER, NODE, d.as_str())).collect();
    common::allocated_claim(client, name, "mock-accel-vf", &devices).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let server = ApiServer::start(Config::default())?;
    let client = Client::try_from(kube::Config::new(server.url().parse()?))?;
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE}}))?,
        )
        .await?;
    let shm = PathBuf::from("/dev/shm");
    let fast = tempfile::tempdir_in(if shm.is_dir() { shm } else { std::env::temp_dir() })?;
    let disk = tempfile::tempdir_in(mock_device_testkit::workspace_root().join("target"))?;
    let root = fast.path().join("sys/class/mock-accel");
    write_fake_tree(&root, 2, 8)?;
    std::fs::write(fast.path().join("boot_id"), "bench\n")?;
    let args = Args::try_parse_from([
        "agent".to_string(),
        format!("--node-name={NODE}"),
        format!("--sysfs-root={}", root.display()),
        "--uevents=false".into(),
        "--ebpf=false".into(),
        "--rescan-interval=0".into(),
        "--admin-address=127.0.0.1:0".into(),
        "--v=0".into(),
        format!("--plugin-socket={}", disk.path().join("plugin").display()),
        format!("--registry-dir={}", disk.path().join("registry").display()),
        format!("--cdi-root={}", fast.path().join("cdi").display()),
        format!("--boot-id-path={}", fast.path().join("boot_id").display()),
    ])?;
    let agent = Agent::start(Options {
        args,
        api: Some(kube::Config::new(server.url().parse()?)),
        injected: None,
    })
    .await?;
    let registry = disk.path().join("registry");
    let kubelet = common::kubelet(&registry).await?;
    // The agent publishes its inventory shortly after start.
    tokio::time::sleep(Duration::from_millis(300)).await;

    println!("kubelet plugin: {rounds} prepare/unprepare rounds per case, gRPC over a unix socket, API on loopback");
    for (label, devices) in [
        ("1 device (PF)", vec!["mock0".to_string()]),
        ("8 devices (VFs)", (0..8).map(|v| format!("mock1-vf{v}")).collect()),
    ] {
        let c = claim(&client, &format!("bench-{}", devices.len()), &devices).await;
        for api in [DraApi::V1, DraApi::V1beta1] {
            let (mut prep, mut unprep) = (Vec::new(), Vec::new());
            for round in 0..rounds + 10 {
                let t = Instant::now();
                let out = kubelet.prepare(api, std::slice::from_ref(&c)).await?;
                let dt = t.elapsed();
                let devs = out[&c.uid].clone().map_err(anyhow::Error::msg)?;
                anyhow::ensure!(devs.len() == devices.len(), "prepared {} devices", devs.len());
                let t = Instant::now();
                let out = kubelet.unprepare(api, std::slice::from_ref(&c)).await?;
                let du = t.elapsed();
                out[&c.uid].clone().map_err(anyhow::Error::msg)?;
                // The first rounds warm connections and caches up.
                if round >= 10 {
                    prep.push(dt);
                    unprep.push(du);
                }
            }
            common::report(&format!("NodePrepareResources {api:?} {label}"), prep);
            common::report(&format!("NodeUnprepareResources {api:?} {label}"), unprep);
        }
    }
    // The already-prepared path (a kubelet restart repeats the call).
    let c = claim(&client, "bench-repeat", &["mock0".to_string()]).await;
    kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await?;
    let mut again = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await?;
        again.push(t.elapsed());
    }
    common::report("NodePrepareResources V1 repeated (prepared)", again);
    agent.stop().await?;
    Ok(())
}
