//! The user-space sim (`--devices=sim`) against the real kube-apiserver
//! v1.37.2 on the host, release builds, one run:
//!
//! 1. a sim change (a PF's 7 VFs disabled or enabled again through
//!    `sriov_numvfs`, over the control socket as `mock-accel-agent ctl`
//!    sends it) -> the node's slice with the change seen on a watch,
//!    p50/p99, against the same run's bare API write of the same change (the
//!    same slice replaced by a client, seen on the same kind of watch): the
//!    ratio. SR-IOV, not health: health flipping is damped by design
//!    (flapping.rs); not PF hot-plug: a slice of devices that consume
//!    counters holds at most 64, which the bare copy must keep to;
//! 2. the same change declared through the API (a DeviceScenario for the
//!    node, its PF's `vfs` patched: the agent sees it on its watch, plans,
//!    writes the sim, publishes) -> the slice seen on the watch, p50/p99,
//!    against the same bare write: the ratio (two API writes and two
//!    watch deliveries against one);
//! 3. the agent's resident memory with 64 devices (8 PFs x 7 VFs), in sim
//!    mode and in kernel mode (on a tree of files the module's shape: the
//!    module's own kernel memory is not the agent's).
//!
//! `just bench-sim`; BENCH_CHANGES (default 200) changes each.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use mock_accel_agent::backend::sim::control;
use mock_accel_agent::backend::sysfs::write_fake_tree;
use mock_device_testkit::cluster::ControlPlane;
use tokio::sync::mpsc;

mod common;
use common::{Proc, percentiles};

const PFS: u32 = 8;
const VFS: u32 = 7;
const DEVICES: usize = (PFS * (1 + VFS)) as usize;

/// An agent process (release build), killed when dropped.
fn start_agent(kubeconfig: &Path, dir: &Path, node: &str, extra: &[String]) -> anyhow::Result<Proc> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/mock-accel-agent");
    anyhow::ensure!(bin.exists(), "{} is missing: `just bench-sim` builds it", bin.display());
    std::fs::write(dir.join("boot_id"), "bench-boot\n")?;
    let child = Command::new(bin)
        .args([
            format!("--node-name={node}"),
            "--kubelet-plugin=false".into(),
            "--admin-address=127.0.0.1:0".into(),
            format!("--plugin-socket={}", dir.join("plugin").display()),
            format!("--boot-id-path={}", dir.join("boot_id").display()),
            "--namespace=default".into(),
            "--heartbeat-interval=0".into(),
            "--rescan-interval=0".into(),
            "--ebpf=false".into(),
            "--v=0".into(),
        ])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proc(child))
}

/// Every slice of the watched nodes as it changes, with when it was seen.
type Seen = mpsc::UnboundedReceiver<(Instant, ResourceSlice)>;

fn watch(slices: Api<ResourceSlice>) -> Seen {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(slices, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev
                && tx.send((Instant::now(), s)).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Whether the slice has `device`; `None` for a slice of counters only.
fn has(s: &ResourceSlice, device: &str) -> Option<bool> {
    let devices = s.spec.devices.as_ref().filter(|d| !d.is_empty())?;
    Some(devices.iter().any(|d| d.name == device))
}

/// Waits for a slice of `node` that has `device` (or not, `want`); when seen.
async fn seen(rx: &mut Seen, node: &str, device: &str, want: bool) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (at, s) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{node}/{device}: the change was never seen"))?
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        if s.spec.node_name.as_deref() == Some(node) && has(&s, device) == Some(want) {
            return Ok(at);
        }
    }
}

async fn devices(slices: &Api<ResourceSlice>, node: &str) -> anyhow::Result<usize> {
    let list = slices
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    Ok(list
        .items
        .iter()
        .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
        .sum())
}

async fn wait_devices(slices: &Api<ResourceSlice>, node: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while devices(slices, node).await? != n {
        anyhow::ensure!(Instant::now() < deadline, "{node}: never published {n} devices");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let changes: usize = std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let cp = tokio::task::spawn_blocking(ControlPlane::start).await??;
    let kubeconfig = Kubeconfig::read_from(&cp.admin_kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    for node in ["sim-node", "kernel-node", "bare-node"] {
        cp.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{node}"}}}}"#
        ))?;
    }
    println!(
        "The sim against kube-apiserver {} on this host ({changes} changes each)",
        mock_device_testkit::cluster::VERSION
    );

    // The sim agent, 64 devices made through its control socket.
    let sim_dir = tempfile::tempdir()?;
    let sim = start_agent(
        &cp.admin_kubeconfig,
        sim_dir.path(),
        "sim-node",
        &[
            "--devices=sim".into(),
            format!("--sim-dir={}", sim_dir.path().join("sim").display()),
            format!("--sim-pfs={PFS}"),
            format!("--sim-max-vfs={VFS}"),
        ],
    )?;
    let socket = sim_dir.path().join("sim").join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the sim's control socket never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ctl = |line: String| {
        let socket = socket.clone();
        async move {
            control::request(&socket, &line)
                .await?
                .map_err(|e| anyhow::anyhow!("{line}: {e}"))
        }
    };
    for pf in 0..PFS {
        ctl(format!("write class/mock{pf}/sriov_numvfs {VFS}")).await?;
    }
    wait_devices(&slices, "sim-node", DEVICES).await?;
    let (sim_rss, _) = sim.memory()?;

    // Sim changes: each PF's VFs disabled in turn, then enabled, and again.
    let mut rx = watch(slices.clone());
    let change = |i: usize| (i % PFS as usize, !(i / PFS as usize).is_multiple_of(2));
    let mut sim_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let (pf, add) = change(i);
        let t = Instant::now();
        ctl(format!(
            "write class/mock{pf}/sriov_numvfs {}",
            if add { VFS } else { 0 }
        ))
        .await?;
        let at = seen(&mut rx, "sim-node", &format!("mock{pf}-vf0"), add).await?;
        sim_ms.push(at.duration_since(t).as_secs_f64() * 1000.0);
    }
    let (sim_rss_after, sim_hwm) = sim.memory()?;

    // Declared: a DeviceScenario for sim-node (the chart's CRD), each
    // change a patch of one PF's vfs.
    for pf in 0..PFS {
        ctl(format!("write class/mock{pf}/sriov_numvfs {VFS}")).await.ok();
    }
    wait_devices(&slices, "sim-node", DEVICES).await?;
    let crd = mock_device_testkit::render_chart(&serde_json::json!({"devices": {"mode": "sim"}}))
        ["mock-device/templates/devicescenarios.yaml"]
        .clone();
    cp.apply(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": crd}).to_string())?;
    let ar = mock_accel_agent::declared::api_resource("mock-accel.example.com");
    let scenarios: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let pfs = |vfs: &[u32]| -> serde_json::Value {
        vfs.iter()
            .enumerate()
            .map(|(id, v)| serde_json::json!({"id": id, "vfs": v}))
            .collect()
    };
    let mut vfs = vec![VFS; PFS as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = scenarios
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "apiVersion": "mock-accel.example.com/v1alpha1", "kind": "DeviceScenario",
                    "metadata": {"name": "bench"},
                    "spec": {"nodeName": "sim-node", "pfs": pfs(&vfs)},
                }))?,
            )
            .await;
        match created {
            Ok(_) => break,
            // The CRD just created: served a moment later.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut declared_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let (pf, add) = change(i);
        vfs[pf] = if add { VFS } else { 0 };
        let patch = serde_json::json!({"spec": {"pfs": pfs(&vfs)}});
        let t = Instant::now();
        scenarios
            .patch(
                "bench",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        let at = seen(&mut rx, "sim-node", &format!("mock{pf}-vf0"), add).await?;
        declared_ms.push(at.duration_since(t).as_secs_f64() * 1000.0);
    }
    scenarios.delete("bench", &Default::default()).await?;

    // The bare write: the sim's slice of devices with every VF, copied to
    // another node, the same VFs removed and added by a client's replace.
    for pf in 0..PFS {
        ctl(format!("write class/mock{pf}/sriov_numvfs {VFS}")).await.ok();
    }
    wait_devices(&slices, "sim-node", DEVICES).await?;
    let list = slices
        .list(&ListParams::default().fields("spec.nodeName=sim-node"))
        .await?;
    let template = list
        .items
        .into_iter()
        .find(|s| s.spec.devices.as_ref().is_some_and(|d| !d.is_empty()))
        .ok_or_else(|| anyhow::anyhow!("no slice of devices"))?;
    let mut bare = ResourceSlice {
        metadata: kube::api::ObjectMeta {
            name: Some("bench-bare".into()),
            ..Default::default()
        },
        spec: template.spec.clone(),
    };
    bare.spec.node_name = Some("bare-node".into());
    bare.spec.pool.name = "bare-node".into();
    bare.spec.pool.resource_slice_count = 1;
    let all = bare.spec.devices.clone().unwrap_or_default();
    anyhow::ensure!(all.len() == DEVICES, "the copied slice holds {} devices", all.len());
    bare = slices.create(&PostParams::default(), &bare).await?;
    let mut bare_ms = Vec::with_capacity(changes);
    for i in 0..changes {
        let (pf, add) = change(i);
        let vfs = format!("mock{pf}-vf");
        let devices = bare.spec.devices.get_or_insert_default();
        if add {
            devices.extend(all.iter().filter(|d| d.name.starts_with(&vfs)).cloned());
        } else {
            devices.retain(|d| !d.name.starts_with(&vfs));
        }
        let t = Instant::now();
        bare = slices.replace("bench-bare", &PostParams::default(), &bare).await?;
        let at = seen(&mut rx, "bare-node", &format!("{vfs}0"), add).await?;
        bare_ms.push(at.duration_since(t).as_secs_f64() * 1000.0);
    }
    drop(sim);

    // The kernel backend with the same 64 devices (files of the module's shape).
    let kernel_dir = tempfile::tempdir()?;
    let root = kernel_dir.path().join("sys/class/mock-accel");
    write_fake_tree(&root, PFS, VFS)?;
    let kernel = start_agent(
        &cp.admin_kubeconfig,
        kernel_dir.path(),
        "kernel-node",
        &[format!("--sysfs-root={}", root.display()), "--uevents=false".into()],
    )?;
    wait_devices(&slices, "kernel-node", DEVICES).await?;
    let (kernel_rss, _) = kernel.memory()?;
    drop(kernel);

    let (s50, s99) = percentiles(sim_ms);
    let (d50, d99) = percentiles(declared_ms);
    let (b50, b99) = percentiles(bare_ms);
    println!("{:<58} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<58} {s50:>9.2} {s99:>9.2}",
        "sim sriov_numvfs 7<->0 -> slice seen on a watch"
    );
    println!(
        "{:<58} {b50:>9.2} {b99:>9.2}",
        "bare replace with the same change -> seen on a watch"
    );
    println!("{:<58} {:>9.2} {:>9.2}", "ratio (goal <= 2)", s50 / b50, s99 / b99);
    println!(
        "{:<58} {d50:>9.2} {d99:>9.2}",
        "declared (DeviceScenario vfs patched) -> slice seen"
    );
    println!(
        "{:<58} {:>9.2} {:>9.2}",
        "ratio to the bare replace (goal <= 2)",
        d50 / b50,
        d99 / b99
    );
    println!("agent RSS with {DEVICES} devices, published (KiB):");
    println!("  sim    {sim_rss:>8} (after the {changes} changes {sim_rss_after}, peak {sim_hwm})");
    println!("  kernel {kernel_rss:>8} (files of the module's shape, no uevents)");
    println!("  ratio  {:>8.2}", sim_rss as f64 / kernel_rss as f64);
    Ok(())
}
