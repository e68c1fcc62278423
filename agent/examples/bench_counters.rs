//! What the shared counters (PF/VF exclusion, KEP-4815) cost in ResourceSlice
//! writes: per `sriov_numvfs` change and per PF hot-plug and unplug, with
//! counters off (the baseline, measured in the same run) and on, as the
//! real kube-apiserver v1.37.2 counts them (`apiserver_request_total`).
//!
//! `just bench-counters` (release). The agent runs in this process on a
//! fake sysfs tree (4 PFs with 2 VFs each), the kernel's uevents injected
//! in the order the module sends them; BENCH_ROUNDS (default 5) of each.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use mock_accel_agent::backend::Trigger;
use mock_accel_agent::backend::sysfs::{write_fake_function, write_fake_tree};
use mock_accel_agent::{Agent, Args, Options};
use mock_device_testkit::cluster::ControlPlane;
use tokio::sync::mpsc;

#[path = "../tests/common/mod.rs"]
mod common;

const PFS: u32 = 4;

/// The devices of NODE's slices, sorted, once the pool is consistent.
async fn published(slices: &Api<ResourceSlice>, node: &str) -> Vec<String> {
    let list = slices
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .unwrap();
    let generation = list.items.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0);
    let consistent = list
        .items
        .iter()
        .all(|s| s.spec.pool.generation == generation && s.spec.pool.resource_slice_count == list.items.len() as i64);
    if !consistent {
        return Vec::new();
    }
    let mut names: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten().map(|d| d.name.clone()))
        .collect();
    names.sort();
    names
}

fn names(pfs: &[(u32, u32)]) -> Vec<String> {
    let mut v: Vec<String> = pfs
        .iter()
        .flat_map(|(pf, vfs)| {
            std::iter::once(format!("mock{pf}")).chain((0..*vfs).map(move |vf| format!("mock{pf}-vf{vf}")))
        })
        .collect();
    v.sort();
    v
}

struct Node<'a> {
    cp: &'a ControlPlane,
    slices: Api<ResourceSlice>,
    name: String,
    root: &'a Path,
    devices: std::path::PathBuf,
    events: mpsc::Sender<Trigger>,
}

impl Node<'_> {
    /// The server's slice writes for one change: made, sent as uevents,
    /// published as WANT, then a second of quiet (nothing more may come).
    async fn writes(&self, change: impl FnOnce() -> Vec<(&'static str, String)>, want: Vec<String>) -> u64 {
        let before = self.cp.writes("resourceslices").unwrap();
        for (action, name) in change() {
            self.events.send(common::uevent(action, &name)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while published(&self.slices, &self.name).await != want {
            assert!(Instant::now() < deadline, "{} never published {want:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.cp.writes("resourceslices").unwrap() - before
    }

    /// sriov_numvfs of PF 1 from FROM to TO VFs (through 0, as the PCI
    /// core wants): the VFs removed, the new ones added, the PF changed.
    fn sriov(&self, from: u32, to: u32) -> Vec<(&'static str, String)> {
        let mut events = Vec::new();
        for vf in 0..from {
            let name = format!("mock1_vf{vf}");
            std::fs::remove_file(self.root.join(&name)).unwrap();
            events.push(("remove", name));
        }
        write_fake_function(self.root, &self.devices, 1, None, to).unwrap();
        for vf in 0..to {
            write_fake_function(self.root, &self.devices, 1, Some(vf), to).unwrap();
            events.push(("add", format!("mock1_vf{vf}")));
        }
        events.push(("change", "mock1".to_string()));
        events
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cp = tokio::task::spawn_blocking(ControlPlane::start).await??;
    let kubeconfig = Kubeconfig::read_from(&cp.admin_kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let slices: Api<ResourceSlice> = Api::all(kube::Client::try_from(config.clone())?);
    println!(
        "ResourceSlice writes per change, as kube-apiserver {} counts them ({rounds} rounds each)",
        mock_device_testkit::cluster::VERSION
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "change", "counters off", "counters on", "ratio"
    );
    let mut results: Vec<(String, [f64; 2])> = Vec::new();
    for (mode, counters) in [(0usize, false), (1, true)] {
        let name = format!("bench-{}", if counters { "on" } else { "off" });
        cp.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{name}"}}}}"#
        ))?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, PFS, 2)?;
        std::fs::write(dir.path().join("boot_id"), "boot-1\n")?;
        let p = |s: &str| dir.path().join(s).display().to_string();
        let args = Args::try_parse_from([
            "agent".to_string(),
            format!("--node-name={name}"),
            format!("--sysfs-root={}", root.display()),
            "--uevents=false".into(),
            "--ebpf=false".into(),
            "--rescan-interval=0".into(),
            "--kubelet-plugin=false".into(),
            "--admin-address=127.0.0.1:0".into(),
            format!("--plugin-socket={}", p("plugin")),
            format!("--boot-id-path={}", p("boot_id")),
            "--namespace=default".into(),
            format!("--shared-counters={counters}"),
        ])?;
        let (tx, rx) = mpsc::channel(256);
        let agent = Agent::start(Options {
            args,
            api: Some(config.clone()),
            injected: Some(rx),
        })
        .await?;
        let node = Node {
            cp: &cp,
            slices: slices.clone(),
            name: name.clone(),
            root: &root,
            devices: dir.path().join("sys/devices/mock-accel"),
            events: tx,
        };
        let base: Vec<(u32, u32)> = (0..PFS).map(|pf| (pf, 2)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while published(&slices, &name).await != names(&base) {
            anyhow::ensure!(Instant::now() < deadline, "{name}: the first publish never came");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let with = |changed: &[(u32, u32)]| {
            let mut v = base.clone();
            for (pf, vfs) in changed {
                match v.iter_mut().find(|(p, _)| p == pf) {
                    Some(e) => e.1 = *vfs,
                    None => v.push((*pf, *vfs)),
                }
            }
            names(&v)
        };
        let mut totals = [0u64; 4];
        for _ in 0..rounds {
            totals[0] += node.writes(|| node.sriov(2, 4), with(&[(1, 4)])).await;
            totals[1] += node.writes(|| node.sriov(4, 2), names(&base)).await;
            totals[2] += node
                .writes(
                    || {
                        write_fake_function(&root, &node.devices, 9, None, 0).unwrap();
                        vec![("add", "mock9".to_string())]
                    },
                    with(&[(9, 0)]),
                )
                .await;
            totals[3] += node
                .writes(
                    || {
                        std::fs::remove_file(root.join("mock9")).unwrap();
                        vec![("remove", "mock9".to_string())]
                    },
                    names(&base),
                )
                .await;
        }
        for (i, what) in [
            "sriov_numvfs 2 -> 4",
            "sriov_numvfs 4 -> 2",
            "PF hot-plug",
            "PF hot-unplug",
        ]
        .iter()
        .enumerate()
        {
            let per = totals[i] as f64 / rounds as f64;
            match results.iter_mut().find(|(w, _)| w == what) {
                Some((_, r)) => r[mode] = per,
                None => {
                    let mut r = [0.0; 2];
                    r[mode] = per;
                    results.push((what.to_string(), r));
                }
            }
        }
        agent.stop().await?;
    }
    for (what, [off, on]) in &results {
        println!("{what:<34} {off:>12.1} {on:>12.1} {:>7.2}x", on / off);
    }
    Ok(())
}
