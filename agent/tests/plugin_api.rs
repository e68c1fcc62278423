//! The kubelet plugin, with the tests playing the kubelet over the real
//! unix sockets: registration, NodePrepareResources and
//! NodeUnprepareResources in v1 and v1beta1, the CDI specs, the checkpoint
//! across restarts (in-process and a killed agent process), bad input, and
//! the health stream. Devices are a fake sysfs tree; claims live in the
//! test API server.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_accel_agent::backend::Trigger;
use mock_accel_agent::backend::sysfs::write_fake_tree;
use mock_accel_agent::plugin::cdi;
use mock_accel_agent::plugin::checkpoint::{Checkpoint, ClaimState};
use mock_accel_agent::{Agent, Args, Options};
use mock_device_testkit::apiserver::{ApiServer, Config, Fault};
use mock_device_testkit::http_get as get;
use mock_device_testkit::kubelet::{self, Api as DraApi, Claim, Kubelet};
use mock_device_testkit::promtool_check;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;

const DRIVER: &str = "mock-accel.example.com";
const NODE: &str = "node-a";

struct Rig {
    server: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Rig {
    async fn new(pfs: u32, vfs: u32) -> Rig {
        let server = ApiServer::start(Config::default()).unwrap();
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        Api::<Node>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap(),
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, pfs, vfs).unwrap();
        fs::write(dir.path().join("boot_id"), "boot-1\n").unwrap();
        Rig {
            server,
            client,
            dir,
            root,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn plugin_dir(&self) -> PathBuf {
        self.path("plugins").join(DRIVER)
    }

    fn cdi_dir(&self) -> PathBuf {
        self.path("cdi")
    }

    fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "agent".to_string(),
            format!("--node-name={NODE}"),
            format!("--sysfs-root={}", self.root.display()),
            "--uevents=false".into(),
            "--ebpf=false".into(),
            "--rescan-interval=0".into(),
            "--admin-address=127.0.0.1:0".into(),
            format!("--plugin-socket={}", self.plugin_dir().display()),
            format!("--registry-dir={}", self.path("registry").display()),
            format!("--cdi-root={}", self.cdi_dir().display()),
            format!("--boot-id-path={}", self.path("boot_id").display()),
            "--namespace=default".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    async fn agent(&self, extra: &[&str]) -> (Agent, mpsc::Sender<Trigger>) {
        let (tx, rx) = mpsc::channel(1024);
        let args = Args::try_parse_from(self.argv(extra)).unwrap();
        let agent = Agent::start(Options {
            args,
            api: Some(kube::Config::new(self.server.url().parse().unwrap())),
            injected: Some(rx),
        })
        .await
        .unwrap();
        (agent, tx)
    }

    /// Waits for the registration socket and registers like the kubelet.
    async fn kubelet(&self) -> Kubelet {
        common::kubelet(&self.path("registry")).await.unwrap()
    }

    fn claims(&self) -> Api<ResourceClaim> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn claim(&self, name: &str, devices: &[(&str, &str, &str)]) -> Claim {
        common::allocated_claim(&self.client, name, "mock-accel-pf", devices).await
    }

    fn status(&self, function: &str) -> String {
        fs::read_to_string(self.root.join(function).join("status"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn cdi_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.cdi_dir())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::new(&self.plugin_dir(), DRIVER, NODE)
    }
}

/// The value of one series in a /metrics text (0 when absent). The
/// recorder is process-wide: tests compare values before and after.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Kills the agent process if the test fails half-way.
use common::Killed as Child;

/// Checks a CDI spec file against the CDI specification on its own terms
/// (not the agent's validator): only the fields the spec defines, at each
/// level; names and values in the spec's syntax; and a version no lower
/// than the fields need.
fn check_cdi_file(path: &Path) -> Value {
    let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let keys = |o: &Value, allowed: &[&str], at: &str| {
        for k in o.as_object().unwrap_or_else(|| panic!("{at} is not an object")).keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "{at}: unknown field {k:?} in {}",
                path.display()
            );
        }
    };
    keys(
        &v,
        &["cdiVersion", "kind", "devices", "containerEdits", "annotations"],
        "spec",
    );
    let edits_fields = ["env", "deviceNodes", "hooks", "mounts", "intelRdt", "additionalGids"];
    let node_fields = [
        "path",
        "hostPath",
        "type",
        "major",
        "minor",
        "fileMode",
        "permissions",
        "uid",
        "gid",
    ];
    let check_edits = |e: &Value, at: &str| {
        keys(e, &edits_fields, at);
        for env in e["env"].as_array().into_iter().flatten() {
            let s = env.as_str().unwrap();
            assert!(s.split_once('=').is_some_and(|(k, _)| !k.is_empty()), "{at}: env {s:?}");
        }
        for m in e["mounts"].as_array().into_iter().flatten() {
            keys(m, &["hostPath", "containerPath", "options", "type"], at);
            assert!(m["hostPath"].as_str().unwrap().starts_with('/'), "{at}: {m}");
            assert!(m["containerPath"].as_str().unwrap().starts_with('/'), "{at}: {m}");
        }
        for n in e["deviceNodes"].as_array().into_iter().flatten() {
            keys(n, &node_fields, at);
            assert!(n["path"].as_str().unwrap().starts_with('/'));
            if let Some(t) = n["type"].as_str() {
                assert!(["b", "c", "u", "p"].contains(&t));
            }
            if let Some(p) = n["permissions"].as_str() {
                assert!(!p.is_empty() && p.chars().all(|c| "rwm".contains(c)));
            }
        }
    };
    let kind = v["kind"].as_str().unwrap();
    let (vendor, class) = kind.split_once('/').unwrap();
    let ident = |s: &str, extra: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    assert!(ident(vendor, "-_.") && ident(class, "-_"), "kind {kind}");
    let version = v["cdiVersion"].as_str().unwrap();
    let mut needs_050 = false;
    for d in v["devices"].as_array().unwrap() {
        keys(d, &["name", "annotations", "containerEdits"], "device");
        let name = d["name"].as_str().unwrap();
        assert!(
            name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)),
            "device name {name}"
        );
        needs_050 |= !name.starts_with(|c: char| c.is_ascii_alphabetic());
        check_edits(&d["containerEdits"], name);
    }
    if let Some(e) = v.get("containerEdits") {
        check_edits(e, "spec");
    }
    // The lowest version these fields allow: 0.5.0 for a device name that
    // starts with a digit, else 0.3.0.
    assert_eq!(version, if needs_050 { "0.5.0" } else { "0.3.0" }, "{}", path.display());
    // And the agent's own strict types read it back.
    let spec: cdi::Spec = serde_json::from_value(v.clone()).unwrap();
    cdi::validate(&spec).unwrap();
    v
}

fn env_of(spec: &Value, device: usize) -> BTreeMap<String, String> {
    spec["devices"][device]["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn sysfs(root: &Path, function: &str, attr: &str) -> String {
    fs::read_to_string(root.join(function).join(attr))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_then_prepares_and_unprepares_in_v1_and_v1beta1() {
    let rig = Rig::new(2, 2).await;
    let (agent, _events) = rig.agent(&[]).await;

    // Published but not registered: not ready, and it says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(agent.admin_addr, "/readyz").await;
        if body.contains("kubelet has not registered") {
            assert_eq!(code, 503);
            break;
        }
        assert!(Instant::now() < deadline, "readyz: {code} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = get(agent.admin_addr, "/metrics").await.1;
    let kubelet = rig.kubelet().await;
    let info = &kubelet.info;
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(PathBuf::from(&info.endpoint), rig.plugin_dir().join("dra.sock"));
    assert_eq!(
        info.supported_versions,
        [
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1.DRAResourceHealth",
            "v1alpha1.DRAResourceHealth"
        ]
    );
    assert_eq!(
        kubelet::registration_sockets(&rig.path("registry")).unwrap(),
        [rig.path("registry").join(format!("{DRIVER}-reg.sock"))]
    );
    assert_eq!(get(agent.admin_addr, "/readyz").await, (200, "ok\n".into()));

    // v1: one PF.
    let c1 = rig.claim("c1", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c1)).await.unwrap();
    let devices = out[&c1.uid].clone().unwrap();
    assert_eq!(
        devices,
        [kubelet::Device {
            requests: vec!["r0".into()],
            pool: NODE.into(),
            device: "mock0".into(),
            cdi_ids: vec![format!("k8s.{DRIVER}/accel={}-mock0", c1.uid)],
            share_id: None,
        }]
    );
    assert_eq!(rig.status("mock0"), "1");
    let spec_file = rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c1.uid));
    let spec = check_cdi_file(&spec_file);
    assert_eq!(spec["kind"], format!("k8s.{DRIVER}/accel"));
    assert_eq!(spec["devices"][0]["name"], format!("{}-mock0", c1.uid));
    let env = env_of(&spec, 0);
    assert_eq!(env["MOCK_ACCEL_UUID"], sysfs(&rig.root, "mock0", "uuid"));
    assert_eq!(env["MOCK_ACCEL_PCI"], "0000:1a:00.0");
    assert_eq!(env["MOCK_ACCEL_DEVICE"], "mock0");
    assert_eq!(
        spec["devices"][0]["containerEdits"]["deviceNodes"][0],
        json!({"path": "/dev/mock-accel/mock0", "type": "c", "major": 240, "minor": 0, "permissions": "rw"})
    );
    assert_eq!(spec["containerEdits"]["env"], json!(["MOCK_ACCEL_DEVICES=mock0"]));

    // Idempotent: the kubelet repeats after its restarts.
    let cp_before = fs::read(rig.checkpoint().path).unwrap();
    let again = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c1)).await.unwrap();
    assert_eq!(again, out);
    assert_eq!(fs::read(rig.checkpoint().path).unwrap(), cp_before);

    // v1beta1: two VFs of the other PF in one claim.
    let c2 = rig
        .claim("c2", &[(DRIVER, NODE, "mock1-vf0"), (DRIVER, NODE, "mock1-vf1")])
        .await;
    let out2 = kubelet
        .prepare(DraApi::V1beta1, std::slice::from_ref(&c2))
        .await
        .unwrap();
    let names: Vec<String> = out2[&c2.uid].clone().unwrap().into_iter().map(|d| d.device).collect();
    assert_eq!(names, ["mock1-vf0", "mock1-vf1"]);
    assert_eq!(
        (rig.status("mock1_vf0"), rig.status("mock1_vf1")),
        ("1".into(), "1".into())
    );
    let spec2 = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c2.uid)));
    assert_eq!(env_of(&spec2, 1)["MOCK_ACCEL_PCI"], "0000:1b:00.2");
    assert_eq!(rig.cdi_files().len(), 2);
    let recorded = rig.checkpoint().load().unwrap();
    assert_eq!(recorded.0.len(), 2);
    assert!(
        recorded
            .0
            .values()
            .all(|c| c.state == ClaimState::PrepareCompleted && c.boot_id == "boot-1")
    );

    // Unprepare both, each in the other API version; then again (idempotent).
    let un = kubelet
        .unprepare(DraApi::V1beta1, std::slice::from_ref(&c1))
        .await
        .unwrap();
    assert_eq!(un[&c1.uid], Ok(()));
    let un = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c2)).await.unwrap();
    assert_eq!(un[&c2.uid], Ok(()));
    for f in ["mock0", "mock1_vf0", "mock1_vf1"] {
        assert_eq!(rig.status(f), "0", "{f}");
    }
    assert!(rig.cdi_files().is_empty(), "{:?}", rig.cdi_files());
    assert!(rig.checkpoint().load().unwrap().0.is_empty());
    let un = kubelet.unprepare(DraApi::V1, &[c1.clone(), c2.clone()]).await.unwrap();
    assert!(un.values().all(|r| r.is_ok()));

    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    let delta = |series: &str| value(&metrics, series) - value(&before, series);
    // Other tests in this process count too: at least ours.
    assert!(delta("mock_accel_prepares_total{result=\"success\",reason=\"none\"}") >= 3.0);
    assert!(delta("mock_accel_unprepares_total{result=\"success\",reason=\"none\"}") >= 4.0);
    assert!(delta("mock_accel_plugin_registrations_total{result=\"accepted\"}") >= 1.0);
    assert!(delta("mock_accel_plugin_requests_total{api=\"v1beta1\",method=\"NodePrepareResources\"}") >= 1.0);
    assert!(delta("mock_accel_prepare_duration_seconds_count") >= 3.0);
    promtool_check(&metrics);

    // On the way out the agent removes its own sockets.
    agent.stop().await.unwrap();
    assert!(kubelet::registration_sockets(&rig.path("registry")).unwrap().is_empty());
    assert!(!rig.plugin_dir().join("dra.sock").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_claims_get_clear_errors_and_the_rest_of_the_batch_is_prepared() {
    let rig = Rig::new(3, 2).await;
    let (agent, events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;

    let good = rig.claim("good", &[(DRIVER, NODE, "mock0")]).await;
    let missing = Claim::new("default", "missing", "0c0c0c0c-0000-4000-8000-000000000000");
    let mut mismatch = rig.claim("mismatch", &[(DRIVER, NODE, "mock2")]).await;
    mismatch.uid = "11111111-2222-4333-8444-555555555555".into();
    let unallocated = rig.claim("unallocated", &[]).await;
    let other_node = rig.claim("other-node", &[(DRIVER, "node-b", "mock2")]).await;
    let other_driver = rig.claim("other-driver", &[("gpu.example.com", NODE, "gpu0")]).await;
    let unknown = rig.claim("unknown", &[(DRIVER, NODE, "mock9")]).await;
    let empty = Claim::new("default", "", "22222222-2222-4222-8222-222222222222");
    let batch = [
        good.clone(),
        missing.clone(),
        mismatch.clone(),
        unallocated.clone(),
        other_node.clone(),
        other_driver.clone(),
        unknown.clone(),
        empty.clone(),
    ];
    let out = kubelet.prepare(DraApi::V1, &batch).await.unwrap();
    assert_eq!(out.len(), batch.len());
    assert_eq!(out[&good.uid].as_ref().unwrap()[0].device, "mock0");
    let err = |c: &Claim| out[&c.uid].clone().unwrap_err();
    let expect = [
        (&missing, "ResourceClaim default/missing not found"),
        (&mismatch, "deleted and created again"),
        (&unallocated, "ResourceClaim default/unallocated is not allocated"),
        (
            &other_node,
            "device mock2 is in pool node-b, another node's; this is node node-a",
        ),
        (
            &other_driver,
            "has no device of driver mock-accel.example.com (allocated: [gpu.example.com/node-a/gpu0])",
        ),
        (&unknown, "device mock9 is not on this node"),
        (&empty, "the claim's name is empty"),
    ];
    for (c, want) in expect {
        assert!(err(c).contains(want), "{}: {:?} lacks {want:?}", c.name, err(c));
    }
    // Nothing of the failed claims was left behind.
    assert_eq!(rig.cdi_files().len(), 1);
    assert_eq!(rig.checkpoint().load().unwrap().0.len(), 1);
    assert_eq!(rig.status("mock2"), "0");

    // Exclusive: the same device, a VF of a held PF, the PF of a held VF.
    let twice = rig.claim("twice", &[(DRIVER, NODE, "mock0")]).await;
    let vf_of_held = rig.claim("vf-of-held", &[(DRIVER, NODE, "mock0-vf1")]).await;
    let vf = rig.claim("vf", &[(DRIVER, NODE, "mock1-vf0")]).await;
    let pf_of_held = rig.claim("pf-of-held", &[(DRIVER, NODE, "mock1")]).await;
    let both = rig
        .claim("both", &[(DRIVER, NODE, "mock2"), (DRIVER, NODE, "mock2-vf1")])
        .await;
    let out = kubelet
        .prepare(
            DraApi::V1,
            &[
                twice.clone(),
                vf_of_held.clone(),
                vf.clone(),
                pf_of_held.clone(),
                both.clone(),
            ],
        )
        .await
        .unwrap();
    let err = |c: &Claim| out[&c.uid].clone().unwrap_err();
    assert!(err(&twice).contains(&format!(
        "device mock0 is already prepared for claim default/good ({})",
        good.uid
    )));
    assert!(
        err(&vf_of_held).contains("VF mock0-vf1 cannot be prepared: its PF mock0 is prepared for claim default/good")
    );
    assert!(out[&vf.uid].is_ok());
    assert!(
        err(&pf_of_held).contains("PF mock1 cannot be prepared: its VF mock1-vf0 is prepared for claim default/vf"),
        "{}",
        err(&pf_of_held)
    );
    assert!(
        err(&both).contains("asks for PF mock2 and its VF mock2-vf1 together"),
        "{}",
        err(&both)
    );
    assert_eq!((rig.status("mock2"), rig.status("mock2_vf1")), ("0".into(), "0".into()));

    // The same claim prepared twice at once: one preparation, same answer.
    let race = rig.claim("race", &[(DRIVER, NODE, "mock2-vf0")]).await;
    let (a, b) = tokio::join!(
        kubelet.prepare(DraApi::V1, std::slice::from_ref(&race)),
        kubelet.prepare(DraApi::V1beta1, std::slice::from_ref(&race))
    );
    assert_eq!(a.unwrap()[&race.uid], b.unwrap()[&race.uid]);
    assert_eq!(rig.checkpoint().load().unwrap().0.len(), 3);

    // A device that went away since the allocation.
    let gone = rig.claim("gone", &[(DRIVER, NODE, "mock2")]).await;
    for f in ["mock2_vf1", "mock2"] {
        fs::remove_file(rig.root.join(f)).unwrap();
    }
    events.send(Trigger::Overflow { at: Instant::now() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let msg = loop {
        let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&gone)).await.unwrap();
        let msg = out[&gone.uid].clone().unwrap_err();
        if msg.contains("not on this node") || Instant::now() > deadline {
            break msg;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(msg.contains("device mock2 is not on this node"), "{msg}");

    // A sysfs write that fails: the claim fails, nothing is left half done.
    let sysfs_fail = rig.claim("sysfs-fail", &[(DRIVER, NODE, "mock1-vf1")]).await;
    let status = fs::canonicalize(rig.root.join("mock1_vf1")).unwrap().join("status");
    fs::remove_file(&status).unwrap();
    fs::create_dir(&status).unwrap();
    let out = kubelet
        .prepare(DraApi::V1, std::slice::from_ref(&sysfs_fail))
        .await
        .unwrap();
    let msg = out[&sysfs_fail.uid].clone().unwrap_err();
    assert!(
        msg.contains("writing 1 to") && msg.contains("mock1_vf1/status"),
        "{msg}"
    );
    assert_eq!(rig.checkpoint().load().unwrap().0.len(), 3);
    assert_eq!(rig.cdi_files().len(), 3);

    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    for reason in [
        "not_found",
        "uid_mismatch",
        "not_allocated",
        "wrong_node",
        "wrong_driver",
        "unknown_device",
        "invalid",
        "conflict",
        "sysfs",
    ] {
        let want = format!("mock_accel_prepares_total{{result=\"error\",reason=\"{reason}\"}}");
        assert!(metrics.contains(&want), "no {want} in\n{metrics}");
    }
    // Still serving, still alive.
    assert_eq!(get(agent.admin_addr, "/livez").await.0, 200);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_cdi_directory_fails_the_claim_and_undoes_it() {
    let rig = Rig::new(1, 0).await;
    fs::write(rig.path("not-a-dir"), "").unwrap();
    let cdi_root = format!("--cdi-root={}", rig.path("not-a-dir").join("cdi").display());
    let (agent, _events) = rig.agent(&[&cdi_root]).await;
    let kubelet = rig.kubelet().await;
    let c = rig.claim("c", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    let msg = out[&c.uid].clone().unwrap_err();
    assert!(msg.contains("creating the CDI directory"), "{msg}");
    assert_eq!(rig.status("mock0"), "0", "the device was released again");
    assert!(rig.checkpoint().load().unwrap().0.is_empty());
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(metrics.contains("mock_accel_prepares_total{result=\"error\",reason=\"cdi\"}"));
    agent.stop().await.unwrap();
}

/// Issue 18 #8: a failed prepare whose undo fails too (the device's
/// status cannot be written back to 0) dropped the claim from the
/// checkpoint, leaving `status=1` owned by no claim for good. It now stays
/// recorded, as begun, and the claim's unprepare frees it.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the agent's failpoints: --features failpoints"
)]
async fn a_failed_prepare_that_cannot_be_undone_stays_recorded() {
    let rig = Rig::new(1, 0).await;
    fs::write(rig.path("not-a-dir"), "").unwrap();
    let cdi_root = format!("--cdi-root={}", rig.path("not-a-dir").join("cdi").display());
    let (agent, _events) = rig.agent(&[&cdi_root]).await;
    let kubelet = rig.kubelet().await;
    let c = rig.claim("stuck", &[(DRIVER, NODE, "mock0")]).await;
    fail::cfg("release-status/stuck", "return").unwrap();
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    fail::remove("release-status/stuck");
    let msg = out[&c.uid].clone().unwrap_err();
    assert!(msg.contains("creating the CDI directory"), "{msg}");
    assert!(msg.contains("undoing it failed too"), "{msg}");
    assert_eq!(rig.status("mock0"), "1", "the fault kept the device allocated");
    let kept = rig.checkpoint().load().unwrap();
    assert_eq!(
        kept.0.get(&c.uid).map(|r| r.state),
        Some(ClaimState::PrepareStarted),
        "the allocated device must stay owned by its claim: {kept:?}"
    );
    // The kubelet gives up on the pod: its unprepare frees the device.
    let out = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(out[&c.uid], Ok(()));
    assert_eq!(rig.status("mock0"), "0");
    assert!(rig.checkpoint().load().unwrap().0.is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checkpoint_carries_claims_across_restarts_and_reboots_and_is_never_guessed() {
    let rig = Rig::new(2, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let c = rig.claim("c", &[(DRIVER, NODE, "mock0")]).await;
    let first = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert!(first[&c.uid].is_ok());
    agent.stop().await.unwrap();

    // A new agent: the claim is still held (no double allocation), the
    // repeated prepare answers the same, and unprepare works.
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let other = rig.claim("other", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, &[c.clone(), other.clone()]).await.unwrap();
    assert_eq!(out[&c.uid], first[&c.uid]);
    assert!(
        out[&other.uid]
            .clone()
            .unwrap_err()
            .contains("already prepared for claim default/c")
    );

    // A reboot: new boot ID, the CDI directory (tmpfs) empty, the module
    // reloaded (status 0). The repeated prepare makes it all true again.
    fs::write(rig.path("boot_id"), "boot-2\n").unwrap();
    for f in rig.cdi_files() {
        fs::remove_file(rig.cdi_dir().join(f)).unwrap();
    }
    fs::write(rig.root.join("mock0/status"), "0\n").unwrap();
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(out[&c.uid], first[&c.uid]);
    assert_eq!(rig.status("mock0"), "1");
    assert_eq!(rig.cdi_files().len(), 1);
    check_cdi_file(&rig.cdi_dir().join(&rig.cdi_files()[0]));
    assert_eq!(rig.checkpoint().load().unwrap().0[&c.uid].boot_id, "boot-2");

    // A crash half-way through a prepare (recorded, not applied): the
    // next unprepare undoes whatever may have been done.
    let half = rig.claim("half", &[(DRIVER, NODE, "mock1")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&half)).await.unwrap();
    assert!(out[&half.uid].is_ok());
    let mut claims = rig.checkpoint().load().unwrap();
    claims.0.get_mut(&half.uid).unwrap().state = ClaimState::PrepareStarted;
    rig.checkpoint().save(&claims).unwrap();
    let spec = rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", half.uid));
    fs::remove_file(&spec).unwrap();
    // ...and a prepare completes it.
    let again = kubelet.prepare(DraApi::V1, std::slice::from_ref(&half)).await.unwrap();
    assert_eq!(again[&half.uid], out[&half.uid]);
    assert!(spec.exists());
    assert_eq!(
        rig.checkpoint().load().unwrap().0[&half.uid].state,
        ClaimState::PrepareCompleted
    );

    // Corrupt: refused, kept byte for byte, reported, until moved away.
    let path = rig.checkpoint().path;
    let good = fs::read(&path).unwrap();
    let corrupt = &good[..good.len() - 20];
    fs::write(&path, corrupt).unwrap();
    let out = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    let msg = out[&c.uid].clone().unwrap_err();
    assert!(msg.contains("is corrupt") && msg.contains("kept as is"), "{msg}");
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert!(out[&c.uid].is_err());
    assert_eq!(fs::read(&path).unwrap(), corrupt);
    assert_eq!(rig.status("mock0"), "1", "nothing was released blindly");
    // From a newer agent: also left alone.
    let future = br#"{"version": 2, "claims": {}, "newField": true}"#;
    fs::write(&path, future).unwrap();
    let out = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert!(
        out[&c.uid]
            .clone()
            .unwrap_err()
            .contains("format version 2, newer than")
    );
    assert_eq!(fs::read(&path).unwrap(), future);
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(metrics.contains("mock_accel_checkpoint_errors_total{kind=\"corrupt\"}"));
    assert!(metrics.contains("mock_accel_checkpoint_errors_total{kind=\"future_version\"}"));
    // The operator puts the good file back: service resumes, no restart.
    fs::write(&path, &good).unwrap();
    let out = kubelet.unprepare(DraApi::V1, &[c.clone(), half.clone()]).await.unwrap();
    assert!(out.values().all(|r| r.is_ok()), "{out:?}");
    assert_eq!((rig.status("mock0"), rig.status("mock1")), ("0".into(), "0".into()));
    assert!(rig.cdi_files().is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_process_leaks_nothing() {
    let rig = Rig::new(2, 0).await;
    let kubeconfig = rig.path("kubeconfig");
    rig.server.write_kubeconfig(&kubeconfig).unwrap();
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mock-accel-agent"));
        cmd.args(&rig.argv(&["--v=1"])[1..])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(rig.path("agent.log")).unwrap());
        mock_device_testkit::process::spawn(cmd).unwrap()
    };
    let mut child = Child(spawn());
    let kubelet = rig.kubelet().await;
    let c = rig.claim("c", &[(DRIVER, NODE, "mock1")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    // SIGKILL: no clean-up at all; the sockets stay behind.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(rig.path("registry").join(format!("{DRIVER}-reg.sock")).exists());

    let mut child = Child(spawn());
    // The stale sockets are replaced; the kubelet registers again.
    let kubelet = rig.kubelet().await;
    let thief = rig.claim("thief", &[(DRIVER, NODE, "mock1")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&thief)).await.unwrap();
    assert!(
        out[&thief.uid]
            .clone()
            .unwrap_err()
            .contains("already prepared for claim default/c")
    );
    let out = kubelet
        .unprepare(DraApi::V1beta1, std::slice::from_ref(&c))
        .await
        .unwrap();
    assert_eq!(out[&c.uid], Ok(()));
    assert_eq!(rig.status("mock1"), "0");
    assert!(rig.cdi_files().is_empty());
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&thief)).await.unwrap();
    assert!(out[&thief.uid].is_ok());
    // SIGTERM: a clean stop removes our sockets.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        fs::read_to_string(rig.path("agent.log")).unwrap()
    );
    assert!(kubelet::registration_sockets(&rig.path("registry")).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_update_names_sockets_by_pod_and_recreates_a_deleted_socket() {
    let rig = Rig::new(1, 0).await;
    let (agent, _events) = rig.agent(&["--pod-uid=4f1c2a7e-0000-4000-8000-00000000abcd"]).await;
    let kubelet = rig.kubelet().await;
    let reg_sock = rig
        .path("registry")
        .join(format!("{DRIVER}-4f1c2a7e-0000-4000-8000-00000000abcd-reg.sock"));
    assert!(reg_sock.exists());
    assert_eq!(
        PathBuf::from(&kubelet.info.endpoint),
        rig.plugin_dir().join("dra-4f1c2a7e-0000-4000-8000-00000000abcd.sock")
    );
    let c = rig.claim("c", &[(DRIVER, NODE, "mock0")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    assert!(
        rig.plugin_dir().join("serialize.lock").exists(),
        "calls take the cross-pod lock"
    );

    // Someone deletes our registration socket: it comes back.
    let before = get(agent.admin_addr, "/metrics").await.1;
    fs::remove_file(&reg_sock).unwrap();
    // The file appears at bind(), before listen(): a dial in between is
    // refused (the kubelet's plugin watcher retries too).
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match Kubelet::register(&reg_sock).await {
            Ok(k) => break k,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the registration socket was not recreated and served within 10 s: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(again.info, kubelet.info);
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    let series = "mock_accel_plugin_socket_recreations_total{socket=\"registration\"}";
    assert!(value(&metrics, series) - value(&before, series) >= 1.0, "{metrics}");

    // The kubelet rejects the plugin: not ready, and it says why.
    Kubelet::reject(&reg_sock, "version skew").await.unwrap();
    let (code, body) = get(agent.admin_addr, "/readyz").await;
    assert_eq!(
        (code, body.trim()),
        (503, "not ready: the kubelet has not registered the plugin")
    );
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(value(&metrics, "mock_accel_plugin_registrations_total{result=\"rejected\"}") >= 1.0);
    agent.stop().await.unwrap();
    assert!(!reg_sock.exists());
}

/// Issue 18 #7: a DRA socket that cannot be bound left the plugin waiting
/// for the socket file forever: the pod live, never ready, no error. Now
/// the agent stops with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_dra_socket_that_cannot_be_bound_stops_the_agent_with_the_reason() {
    let rig = Rig::new(1, 0).await;
    let long = rig.path(&"d".repeat(120));
    fs::create_dir_all(rig.path("ro")).unwrap();
    fs::create_dir_all(rig.path("taken")).unwrap();
    fs::write(rig.path("taken/dra.sock"), "not a socket").unwrap();
    let cases = [
        (
            format!("--plugin-socket={}", long.display()),
            "must be shorter than 108 bytes",
        ),
        (
            format!("--plugin-socket={}", rig.path("taken").display()),
            "exists and is not a socket",
        ),
        (
            format!("--plugin-socket={}", rig.path("not-a-dir/x").display()),
            "creating",
        ),
    ];
    fs::write(rig.path("not-a-dir"), "").unwrap();
    for (arg, expected) in cases {
        let (mut agent, _events) = rig.agent(&[&arg]).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await;
        let err = ended
            .unwrap_or_else(|_| panic!("{arg}: the agent is still running, serving nothing"))
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(expected), "{arg}: {text}");
        assert!(
            fs::read_dir(rig.path("registry")).map_or(true, |mut d| d.next().is_none()),
            "{arg}: registered a plugin it cannot serve"
        );
    }
}

/// Issue 18 #4: prepare read its claims from the API while holding the
/// node's batch lock, with no timeout: one claim GET hung on a dead
/// connection held up every other call on the node, for good. The reads
/// now come before the lock, and every request gives up (`--api-timeout`).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_api_read_holds_up_no_other_call() {
    let rig = Rig::new(2, 0).await;
    let (agent, _events) = rig.agent(&["--api-timeout=2s"]).await;
    let kubelet = rig.kubelet().await;
    let b = rig.claim("b", &[(DRIVER, NODE, "mock1")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&b)).await.unwrap()[&b.uid].is_ok());
    let a = rig.claim("a", &[(DRIVER, NODE, "mock0")]).await;
    rig.server
        .inject(Fault::hang(1).only(Some("get"), Some("resourceclaims")));
    let started = Instant::now();
    let hung = {
        let (kubelet, a) = (kubelet.clone(), a.clone());
        tokio::spawn(async move { kubelet.prepare(DraApi::V1, std::slice::from_ref(&a)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        kubelet.unprepare(DraApi::V1, std::slice::from_ref(&b)),
    )
    .await
    .expect("the unprepare waited for the hung read")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(out[&b.uid], Ok(()));
    assert!(
        took < Duration::from_millis(1500),
        "the unprepare waited for a hung read: {took:?}"
    );
    assert_eq!(rig.status("mock1"), "0");
    // The hung read gives up at the timeout; the claim fails, cleanly.
    let out = hung.await.unwrap().unwrap();
    let msg = out[&a.uid].clone().unwrap_err();
    assert!(msg.contains("reading ResourceClaim default/a"), "{msg}");
    assert_eq!(rig.status("mock0"), "0");
    // And the kubelet's retry prepares it.
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&a)).await.unwrap()[&a.uid].is_ok());
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mock_accel_prepares_total{result=\"error\",reason=\"api\"}"),
        "{metrics}"
    );
    agent.stop().await.unwrap();
}

/// Issue 18 #9: a prepare that came before the first scan of the devices
/// (the kubelet calls a remembered socket as soon as it is back) failed
/// with "device mock0 is not on this node". It now waits for the scan.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs the agent's failpoints: --features failpoints"
)]
async fn a_prepare_before_the_first_scan_waits_for_it() {
    let rig = Rig::new(1, 0).await;
    fail::cfg(format!("first-scan/{}", rig.root.display()), "return(1500)").unwrap();
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let c = rig.claim("early", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    fail::remove(format!("first-scan/{}", rig.root.display()));
    assert!(out[&c.uid].is_ok(), "{:?}", out[&c.uid]);
    assert_eq!(rig.status("mock0"), "1");
    agent.stop().await.unwrap();
}

/// Issue 18 #9: without POD_UID two agent pods of a node (a rolling update)
/// use the same socket paths: the new one's bind unlinks the old one's live
/// sockets, the old one noticed its socket "deleted" and bound it again, and
/// so on: a fight over the kubelet's sockets. The newer now keeps them; calls
/// of both are serialised by the node's flock.
#[tokio::test(flavor = "multi_thread")]
async fn two_agents_on_one_socket_path_do_not_fight_over_it() {
    use std::os::unix::fs::MetadataExt;
    common::agent_logs();
    let rig = Rig::new(1, 0).await;
    let (old, _old_events) = rig.agent(&[]).await;
    rig.kubelet().await;
    let dra = rig.plugin_dir().join("dra.sock");
    let reg = rig.path("registry").join(format!("{DRIVER}-reg.sock"));
    // A socket's identity: its inode number and when it was made (a file
    // system may give a new socket the number of the one just unlinked).
    let inode = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
            .ok()
    };
    let (old_dra, old_reg) = (inode(&dra), inode(&reg));
    let (new, _new_events) = rig.agent(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while inode(&dra) == old_dra || inode(&reg) == old_reg {
        assert!(Instant::now() < deadline, "the new agent never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first sockets that replace the old ones are the new agent's, for
    // good: the path is never absent (plugin::bind renames the new socket
    // over the old), so the old agent never binds it again. It once did, in
    // the moment between an unlink and a bind, and under load won that race
    // until the new agent gave up.
    let (new_dra, new_reg) = (inode(&dra), inode(&reg));
    assert!(
        new_dra.is_some() && new_reg.is_some(),
        "a socket went missing: {new_dra:?} {new_reg:?}"
    );
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            (inode(&dra), inode(&reg)),
            (new_dra, new_reg),
            "the sockets changed hands again"
        );
    }
    for d in [rig.plugin_dir(), rig.path("registry")] {
        let temps: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(temps.is_empty(), "temporary sockets left in {}: {temps:?}", d.display());
    }
    // The kubelet registers the new one and prepares through it.
    let kubelet = rig.kubelet().await;
    let c = rig.claim("c", &[(DRIVER, NODE, "mock0")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    assert!(rig.plugin_dir().join("serialize.lock").exists());
    // The old one ends without taking the new one's sockets along.
    old.stop().await.unwrap();
    assert_eq!((inode(&dra), inode(&reg)), (new_dra, new_reg));
    new.stop().await.unwrap();
}

/// Device name → (health, message), from one health stream message.
type HealthMap = BTreeMap<String, (i32, String)>;

#[tokio::test(flavor = "multi_thread")]
async fn the_health_stream_follows_the_devices() {
    use mock_accel_proto::health::v1::HealthStatus;
    let rig = Rig::new(2, 0).await;
    let (agent, events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    // An older kubelet's v1alpha1 stream says the same as v1's.
    let mut alpha = kubelet.watch_health_v1alpha1().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), alpha.message())
        .await
        .expect("a v1alpha1 health message within 10 s")
        .unwrap()
        .expect("the v1alpha1 stream stays open");
    assert_eq!(first.devices.len(), 2, "{first:?}");
    drop(alpha);
    let mut stream = kubelet.watch_health().await.unwrap();
    let mut next_until = async |pred: &dyn Fn(&HealthMap) -> bool| {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("a health message within 10 s")
                .unwrap()
                .expect("the stream stays open");
            let map: HealthMap = msg
                .devices
                .iter()
                .map(|d| {
                    let id = d.device.clone().unwrap();
                    assert_eq!(id.pool_name, NODE);
                    assert!(d.last_updated_time > 1_700_000_000);
                    (id.device_name, (d.health, d.message.clone()))
                })
                .collect();
            if pred(&map) {
                return map;
            }
        }
    };
    let healthy = HealthStatus::Healthy as i32;
    let unhealthy = HealthStatus::Unhealthy as i32;
    next_until(&|m| m.len() == 2 && m.values().all(|(h, _)| *h == healthy)).await;

    // The module marks mock0 failed and says so with a change uevent.
    fs::write(rig.root.join("mock0/health"), "failed\n").unwrap();
    events.send(Trigger::Overflow { at: Instant::now() }).await.unwrap();
    let m = next_until(&|m| m.get("mock0").is_some_and(|(h, _)| *h == unhealthy)).await;
    assert!(m["mock0"].1.contains("failed"));

    // A prepared device goes away: unhealthy, "removed"; unprepare still works.
    let c = rig.claim("c", &[(DRIVER, NODE, "mock1")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    fs::remove_file(rig.root.join("mock1")).unwrap();
    events.send(Trigger::Overflow { at: Instant::now() }).await.unwrap();
    let m = next_until(&|m| m.get("mock1").is_some_and(|(h, _)| *h == unhealthy)).await;
    assert!(m["mock1"].1.contains("removed"), "{m:?}");
    let out = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(out[&c.uid], Ok(()));
    // Released and gone: no longer reported.
    next_until(&|m| !m.contains_key("mock1")).await;
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    // Gauges are process-wide (other tests' agents set them too): present.
    assert!(value(&metrics, "mock_accel_health_streams") >= 1.0, "{metrics}");
    assert!(
        metrics.contains("mock_accel_device_health{health=\"unhealthy\"}"),
        "{metrics}"
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_access_shares_a_held_device_without_allocating_it() {
    let rig = Rig::new(1, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let owner = rig.claim("owner", &[(DRIVER, NODE, "mock0")]).await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&owner)).await.unwrap()[&owner.uid].is_ok());

    // A monitoring claim with admin access to the same device.
    let created = rig
        .claims()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "admin"}, "spec": {"devices": {"requests": [
                {"name": "r0", "exactly": {"deviceClassName": "mock-accel-pf", "adminAccess": true}}]}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    rig.claims()
        .patch_status(
            "admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                {"request": "r0", "driver": DRIVER, "pool": NODE, "device": "mock0", "adminAccess": true}]}}}})),
        )
        .await
        .unwrap();
    let admin = Claim::new("default", "admin", &created.uid().unwrap());
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&admin)).await.unwrap();
    assert_eq!(out[&admin.uid].as_ref().unwrap()[0].device, "mock0");
    let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", admin.uid)));
    assert_eq!(
        spec["devices"][0]["containerEdits"]["deviceNodes"][0]["permissions"],
        "r"
    );
    // Releasing the admin claim leaves the owner's allocation alone.
    assert_eq!(
        kubelet
            .unprepare(DraApi::V1, std::slice::from_ref(&admin))
            .await
            .unwrap()[&admin.uid],
        Ok(())
    );
    assert_eq!(rig.status("mock0"), "1");
    assert_eq!(
        kubelet
            .unprepare(DraApi::V1, std::slice::from_ref(&owner))
            .await
            .unwrap()[&owner.uid],
        Ok(())
    );
    assert_eq!(rig.status("mock0"), "0");
    agent.stop().await.unwrap();
}

/// A claim allocated a share of `device` (consumable capacity): its share
/// ID and the memory it took, as the scheduler writes them.
async fn share_claim(rig: &Rig, name: &str, device: &str, share: &str, memory: &str) -> Claim {
    let created = rig
        .claims()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"devices": {"requests": [
                {"name": "r0", "exactly": {"deviceClassName": "mock-accel-pf",
                    "capacity": {"requests": {"memory": memory}}}}]}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    rig.claims()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                {"request": "r0", "driver": DRIVER, "pool": NODE, "device": device,
                 "shareID": share, "consumedCapacity": {"memory": memory}}]}}}})),
        )
        .await
        .unwrap();
    Claim::new("default", name, &created.uid().unwrap())
}

/// Consumable capacity: two claims hold shares of one PF; each container
/// sees its share; the PF is marked allocated from the first share to the
/// last; a claim for the whole PF meanwhile is refused; the status names
/// each share.
#[tokio::test(flavor = "multi_thread")]
async fn shares_of_one_device_are_prepared_side_by_side_and_freed_by_the_last() {
    let rig = Rig::new(1, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let a = share_claim(&rig, "share-a", "mock0", "0f0e0d0c-0000-4000-8000-00000000000a", "4Gi").await;
    let b = share_claim(&rig, "share-b", "mock0", "0f0e0d0c-0000-4000-8000-00000000000b", "6Gi").await;
    let out = kubelet.prepare(DraApi::V1, &[a.clone(), b.clone()]).await.unwrap();
    for (claim, share, memory) in [(&a, "a", "4Gi"), (&b, "b", "6Gi")] {
        let devices = out[&claim.uid].as_ref().unwrap();
        assert_eq!(devices[0].device, "mock0");
        assert_eq!(
            devices[0].share_id.as_deref(),
            Some(format!("0f0e0d0c-0000-4000-8000-00000000000{share}").as_str())
        );
        let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", claim.uid)));
        let env = env_of(&spec, 0);
        assert_eq!(env["MOCK_ACCEL_MEMORY"], memory);
        assert_eq!(
            env["MOCK_ACCEL_SHARE_ID"],
            format!("0f0e0d0c-0000-4000-8000-00000000000{share}")
        );
    }
    assert_eq!(rig.status("mock0"), "1");
    // The status names each share (the API requires it to match).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = device_status(&rig, "share-b").await;
        if let Some(first) = d.first() {
            assert_eq!(first["shareID"], "0f0e0d0c-0000-4000-8000-00000000000b", "{d:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no device status for share-b");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The whole PF, while shares are held: refused.
    let whole = rig.claim("whole", &[(DRIVER, NODE, "mock0")]).await;
    let refused = kubelet.prepare(DraApi::V1, std::slice::from_ref(&whole)).await.unwrap();
    let e = refused[&whole.uid].as_ref().unwrap_err();
    assert!(e.contains("already prepared for claim default/share-"), "{e}");
    // The first share released: the PF stays allocated for the other.
    assert_eq!(
        kubelet.unprepare(DraApi::V1, std::slice::from_ref(&a)).await.unwrap()[&a.uid],
        Ok(())
    );
    assert_eq!(rig.status("mock0"), "1");
    assert_eq!(
        kubelet.unprepare(DraApi::V1, std::slice::from_ref(&b)).await.unwrap()[&b.uid],
        Ok(())
    );
    assert_eq!(rig.status("mock0"), "0");
    assert!(rig.cdi_files().is_empty(), "{:?}", rig.cdi_files());

    // One claim, two requests, two shares of one device: two CDI devices.
    let created = rig
        .claims()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "two"}, "spec": {"devices": {"requests": [
                {"name": "r0", "exactly": {"deviceClassName": "mock-accel-pf"}},
                {"name": "r1", "exactly": {"deviceClassName": "mock-accel-pf"}}]}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    rig.claims()
        .patch_status(
            "two",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                {"request": "r0", "driver": DRIVER, "pool": NODE, "device": "mock0",
                 "shareID": "0f0e0d0c-0000-4000-8000-000000000001", "consumedCapacity": {"memory": "1Gi"}},
                {"request": "r1", "driver": DRIVER, "pool": NODE, "device": "mock0",
                 "shareID": "0f0e0d0c-0000-4000-8000-000000000002", "consumedCapacity": {"memory": "2Gi"}}]}}}})),
        )
        .await
        .unwrap();
    let two = Claim::new("default", "two", &created.uid().unwrap());
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&two)).await.unwrap();
    let devices = out[&two.uid].as_ref().unwrap();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_ne!(devices[0].cdi_ids, devices[1].cdi_ids);
    let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", two.uid)));
    let memories: Vec<String> = (0..2).map(|i| env_of(&spec, i)["MOCK_ACCEL_MEMORY"].clone()).collect();
    assert_eq!(memories, ["1Gi", "2Gi"]);
    assert_eq!(rig.status("mock0"), "1");
    assert_eq!(
        kubelet.unprepare(DraApi::V1, std::slice::from_ref(&two)).await.unwrap()[&two.uid],
        Ok(())
    );
    assert_eq!(rig.status("mock0"), "0");
    agent.stop().await.unwrap();
}

/// The claim's `status.devices` carries our devices while prepared.
async fn device_status(rig: &Rig, name: &str) -> Vec<Value> {
    let claims: Api<ResourceClaim> = Api::namespaced(rig.client.clone(), "default");
    let c = serde_json::to_value(claims.get(name).await.unwrap()).unwrap();
    c["status"]["devices"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_devices_are_reported_in_the_claim_status() {
    let rig = Rig::new(2, 0).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let c = rig
        .claim("reported", &[(DRIVER, NODE, "mock0"), (DRIVER, NODE, "mock1")])
        .await;
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    let devices = loop {
        let d = device_status(&rig, "reported").await;
        if d.len() == 2 {
            break d;
        }
        assert!(Instant::now() < deadline, "no device status: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut names: Vec<&str> = devices.iter().map(|d| d["device"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["mock0", "mock1"]);
    for d in &devices {
        assert_eq!(d["driver"], DRIVER);
        assert_eq!(d["pool"], NODE);
        let cond = &d["conditions"][0];
        assert_eq!(
            (&cond["type"], &cond["status"], &cond["reason"]),
            (&json!("Ready"), &json!("True"), &json!("Prepared"))
        );
        assert!(cond["lastTransitionTime"].is_string());
    }
    // Prepared again (a kubelet restart): nothing rewritten.
    rig.server.reset_counts();
    assert!(kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid].is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.server.requests("update", "resourceclaims/status"),
        0,
        "{:?}",
        rig.server.request_counts()
    );
    assert_eq!(device_status(&rig, "reported").await, devices);
    // Released: our entries go.
    assert_eq!(
        kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap()[&c.uid],
        Ok(())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !device_status(&rig, "reported").await.is_empty() {
        assert!(Instant::now() < deadline, "device status left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = get(agent.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mock_accel_claim_status_updates_total{result=\"written\"}"),
        "{metrics}"
    );
    agent.stop().await.unwrap();
}

/// Issue 16 §4: kubelet plugins are called by tools other than the kubelet.
/// A client on gRPC's C core (Python's grpcio, `tests/interop/`) calls both
/// sockets as `unix:PATH` and `unix://PATH`, and with the socket path itself
/// and the `unix:` target set as the authority: every call is answered. Through the
/// `:authority` relay (plugin/authority.rs): without it on the DRA socket,
/// all four calls to it were reset (RST_STREAM, PROTOCOL_ERROR) — C core
/// sends the socket path for `unix:` targets too; the relay's canary shows
/// h2's refusal on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_c_core_client_is_answered_whatever_its_authority() {
    let rig = Rig::new(1, 0).await;
    let (_agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let reg = rig.path("registry").join(format!("{DRIVER}-reg.sock"));
    let dra = PathBuf::from(&kubelet.info.endpoint);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/grpc_c_core_client.py");
    // The blocking client runs on its own thread; the agent serves
    // meanwhile. Its 8 calls have 10 s deadlines each: 120 s in all, past
    // which it is killed and the test says so.
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg(&reg)
            .arg(&dra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = mock_device_testkit::process::spawn(cmd).expect("python3");
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let (out, err) = (read(Box::new(out)), read(Box::new(err)));
        let status = mock_device_testkit::process::wait_for(&mut child, Duration::from_secs(120)).unwrap();
        (status, out.join().unwrap(), err.join().unwrap())
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = out;
    let Some(status) = status else {
        panic!("the grpcio client had not finished after 120 s (killed):\n{stdout}{stderr}");
    };
    let text = format!("{stdout}{stderr}");
    assert!(
        !text.contains("No module named 'grpc'"),
        "grpcio is missing (./dev setup installs it):\n{text}"
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("fail "))
        .collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert!(status.success(), "calls failed:\n{text}");
    // GetInfo's reply names the plugin (raw protobuf, hex).
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let info: Vec<&&str> = lines.iter().filter(|l| l.contains("GetInfo")).collect();
    assert_eq!(info.len(), 4);
    for l in info {
        assert!(l.contains(&hex("DRAPlugin")) && l.contains(&hex(DRIVER)), "{l}");
    }
}

/// The sim backend (`--devices=sim`) through the kubelet's calls: a
/// container gets the CDI env and, in place of the device node, a
/// read-only bind mount of the function's identity file; the sim's own
/// refusals (a failed function) reach the kubelet as the module's do.
#[tokio::test(flavor = "multi_thread")]
async fn the_sim_backend_prepares_with_an_identity_file() {
    use mock_accel_agent::backend::sim::control;
    let rig = Rig::new(0, 0).await;
    let sim_dir = rig.path("sim");
    let sim_arg = format!("--sim-dir={}", sim_dir.display());
    let sim_args = ["--devices=sim", sim_arg.as_str(), "--sim-pfs=2"];
    let (agent, _events) = rig.agent(&sim_args).await;
    let kubelet = rig.kubelet().await;
    let ctl = |line: &'static str| {
        let socket = sim_dir.join("control.sock");
        async move { control::request(&socket, line).await.unwrap() }
    };

    let c1 = rig.claim("c1", &[(DRIVER, NODE, "mock1")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c1)).await.unwrap();
    assert!(out[&c1.uid].is_ok(), "{out:?}");
    assert_eq!(ctl("read class/mock1/status").await, Ok("1".into()));
    let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c1.uid)));
    let edits = &spec["devices"][0]["containerEdits"];
    assert_eq!(edits.get("deviceNodes"), None, "no device node in sim mode: {edits}");
    let identity = sim_dir.join("dev/mock1");
    assert_eq!(
        edits["mounts"][0],
        json!({
            "hostPath": identity.display().to_string(),
            "containerPath": "/dev/mock-accel/mock1",
            "options": ["ro", "nosuid", "nodev", "noexec", "bind"]
        })
    );
    // (and its request's device metadata: see device_metadata_…)
    assert_eq!(edits["mounts"].as_array().unwrap().len(), 2, "{edits}");
    let env = env_of(&spec, 0);
    let text = fs::read_to_string(&identity).unwrap();
    for key in [
        "MOCK_ACCEL_DEVICE",
        "MOCK_ACCEL_UUID",
        "MOCK_ACCEL_PCI",
        "MOCK_ACCEL_TYPE",
        "MOCK_ACCEL_NUMA_NODE",
    ] {
        assert!(
            text.contains(&format!("{key}={}\n", env[key])),
            "{key}: {text} vs {env:?}"
        );
    }
    assert!(
        !env["MOCK_ACCEL_PCI"].starts_with("0000:"),
        "a PCI domain of the node's own: {env:?}"
    );

    // A restarted agent finds the sim's devices as they were: the claim
    // still held, its repeated prepare the same, the same identities.
    assert_eq!(ctl("write bus/new_device 5").await, Ok(String::new()));
    agent.stop().await.unwrap();
    let (agent, _events) = rig.agent(&sim_args).await;
    let kubelet = rig.kubelet().await;
    assert_eq!(ctl("list").await, Ok("mock0 mock1 mock5".into()));
    assert_eq!(ctl("read class/mock1/status").await, Ok("1".into()));
    let again = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c1)).await.unwrap();
    assert_eq!(again, out);
    assert_eq!(fs::read_to_string(&identity).unwrap(), text);

    // The sim refuses a failed function, as the module does.
    assert_eq!(ctl("write class/mock0/health failed").await, Ok(String::new()));
    let c2 = rig.claim("c2", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c2)).await.unwrap();
    let err = out[&c2.uid].clone().unwrap_err();
    assert!(err.contains("failed"), "{err}");
    assert_eq!(ctl("read class/mock0/status").await, Ok("0".into()));

    let out = kubelet.unprepare(DraApi::V1, &[c1.clone(), c2.clone()]).await.unwrap();
    assert!(out.values().all(Result::is_ok), "{out:?}");
    assert_eq!(ctl("read class/mock1/status").await, Ok("0".into()));
    assert!(rig.cdi_files().is_empty(), "{:?}", rig.cdi_files());
    agent.stop().await.unwrap();
}

/// The objects of a device metadata file (a JSON stream).
fn metadata_stream(path: &Path) -> Vec<Value> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Device metadata (KEP-5304): each prepared request's devices and their
/// attributes in a file of the plugin directory, a stream of v1beta1 then
/// v1alpha1, mounted read-only by the request's first device where the KEP
/// puts it (`resourceclaims/<claim>/…`, or `resourceclaimtemplates/<pod
/// claim name>/…` for a claim from a template); gone at unprepare; none
/// with `--device-metadata=false`.
#[tokio::test(flavor = "multi_thread")]
async fn device_metadata_is_written_per_request_and_mounted_by_its_first_device() {
    let rig = Rig::new(2, 2).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let root = rig.plugin_dir().join("dra-device-metadata");
    let c1 = rig
        .claim("c1", &[(DRIVER, NODE, "mock0"), (DRIVER, NODE, "mock1-vf1")])
        .await;
    // c2 made from a template: the pod's name for it is on the claim.
    let c2 = rig.claim("pod-acc-x7k2q", &[(DRIVER, NODE, "mock1-vf0")]).await;
    rig.claims()
        .patch(
            "pod-acc-x7k2q",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"resource.kubernetes.io/pod-claim-name": "acc"}}})),
        )
        .await
        .unwrap();
    let out = kubelet.prepare(DraApi::V1, &[c1.clone(), c2.clone()]).await.unwrap();
    assert!(out.values().all(Result::is_ok), "{out:?}");
    // The CDI IDs are the devices' own: the mount rides on them.
    assert_eq!(
        out[&c1.uid].clone().unwrap()[0].cdi_ids,
        [format!("k8s.{DRIVER}/accel={}-mock0", c1.uid)]
    );
    for (request, device, function, pci) in [
        ("r0", "mock0", "mock0", "0000:1a:00.0"),
        ("r1", "mock1-vf1", "mock1_vf1", "0000:1b:00.2"),
    ] {
        let file = root.join("default_c1").join(request).join("metadata.json");
        let objects = metadata_stream(&file);
        let versions: Vec<&str> = objects.iter().map(|o| o["apiVersion"].as_str().unwrap()).collect();
        assert_eq!(
            versions,
            ["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"]
        );
        let o = &objects[0];
        assert_eq!(o["kind"], "DeviceMetadata");
        assert_eq!(
            o["metadata"],
            json!({"name": "c1", "namespace": "default", "uid": c1.uid, "generation": 1})
        );
        assert_eq!(o.get("podClaimName"), None);
        let devices = o["requests"][0]["devices"].as_array().unwrap();
        assert_eq!(o["requests"][0]["name"], request);
        assert_eq!(devices.len(), 1, "{o}");
        assert_eq!(
            (devices[0]["driver"].as_str(), devices[0]["pool"].as_str()),
            (Some(DRIVER), Some(NODE))
        );
        assert_eq!(devices[0]["name"], device);
        let attrs = &devices[0]["attributes"];
        assert_eq!(attrs["uuid"]["string"], sysfs(&rig.root, function, "uuid"));
        assert_eq!(attrs["pciAddress"]["string"], pci);
    }
    let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c1.uid)));
    for (i, request) in ["r0", "r1"].iter().enumerate() {
        let mounts = spec["devices"][i]["containerEdits"]["mounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            mounts,
            [json!({
                "hostPath": root.join("default_c1").join(request).join("metadata.json").display().to_string(),
                "containerPath": format!("/var/run/kubernetes.io/dra-device-attributes/resourceclaims/c1/{request}/{DRIVER}-metadata.json"),
                "options": ["ro", "nosuid", "nodev", "noexec", "bind"]
            })],
            "device {i}"
        );
    }
    let spec2 = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c2.uid)));
    assert_eq!(
        spec2["devices"][0]["containerEdits"]["mounts"][0]["containerPath"],
        format!("/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/acc/r0/{DRIVER}-metadata.json")
    );
    let template = metadata_stream(&root.join("default_pod-acc-x7k2q/r0/metadata.json"));
    assert_eq!(template[0]["podClaimName"], "acc");
    assert_eq!(template[1]["podClaimName"], "acc");
    // The checkpoint keeps the pod's name for the claim: a repeated
    // prepare (a kubelet restart) mounts it at the same place.
    let again = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c2)).await.unwrap();
    assert_eq!(again[&c2.uid], out[&c2.uid]);
    assert_eq!(
        check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c2.uid))),
        spec2
    );
    let un = kubelet.unprepare(DraApi::V1, &[c1.clone(), c2.clone()]).await.unwrap();
    assert!(un.values().all(Result::is_ok), "{un:?}");
    let left: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
    agent.stop().await.unwrap();

    // Turned off: no files, no mounts.
    let (agent, _events) = rig.agent(&["--device-metadata=false"]).await;
    let kubelet = rig.kubelet().await;
    let c3 = rig.claim("c3", &[(DRIVER, NODE, "mock0")]).await;
    let out = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c3)).await.unwrap();
    assert!(out[&c3.uid].is_ok(), "{out:?}");
    let spec3 = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c3.uid)));
    assert_eq!(spec3["devices"][0]["containerEdits"].get("mounts"), None, "{spec3}");
    assert!(!root.join("default_c3").exists());
    agent.stop().await.unwrap();
}

/// A claim shared by a pod group (KEP-5729): reserved for a PodGroup, not
/// for pods, made from the group's template (`pod-claim-name` the group's
/// name for it). The kubelet asks for it as for any claim, once per node
/// and again for each pod it starts; the plugin prepares it from its
/// allocation, reports its device in the claim's status, mounts its
/// metadata under the group's name for it, and releases it at unprepare.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_groups_claim_is_prepared_like_any_other() {
    let rig = Rig::new(2, 2).await;
    let (agent, _events) = rig.agent(&[]).await;
    let kubelet = rig.kubelet().await;
    let c = rig.claim("train-shared-x7k2q", &[(DRIVER, NODE, "mock1-vf0")]).await;
    rig.claims()
        .patch(
            "train-shared-x7k2q",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"resource.kubernetes.io/pod-claim-name": "shared"}}})),
        )
        .await
        .unwrap();
    rig.claims()
        .patch_status(
            "train-shared-x7k2q",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"reservedFor": [
                {"apiGroup": "scheduling.k8s.io", "resource": "podgroups", "name": "train", "uid": "uid-train"}]}})),
        )
        .await
        .unwrap();
    let first = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert!(first[&c.uid].is_ok(), "{first:?}");
    // The second pod of the group on this node: the same answer.
    let second = kubelet.prepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(rig.status("mock1_vf0"), "1");
    let spec = check_cdi_file(&rig.cdi_dir().join(format!("k8s.{DRIVER}-accel_{}.json", c.uid)));
    assert_eq!(
        spec["devices"][0]["containerEdits"]["mounts"][0]["containerPath"],
        format!("/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/shared/r0/{DRIVER}-metadata.json")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while device_status(&rig, "train-shared-x7k2q").await.len() != 1 {
        assert!(Instant::now() < deadline, "no device status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let un = kubelet.unprepare(DraApi::V1, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(un[&c.uid], Ok(()));
    assert_eq!(rig.status("mock1_vf0"), "0");
    assert!(rig.cdi_files().is_empty(), "{:?}", rig.cdi_files());
    agent.stop().await.unwrap();
}
