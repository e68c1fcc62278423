//! Devices without the kernel module (`--devices=sim`): the module's
//! semantics in user space ([`model`]), per node by construction
//! ([`NodeIdentity`]), kept in a state directory that outlives the agent
//! but not the node's boot, driven like the module through a control
//! socket ([`control`], the `mock-accel-agent ctl` command).
//!
//! What a container gets: the CDI environment of kernel mode and, in
//! place of the character device, a read-only file at the same path with
//! what reading the device returns (its identity).

pub mod control;
pub mod model;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use kobject_uevent::{ActionType, UEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use self::model::{AttachState, Errno, Event, Identity, Model, Params};
use super::uevents::SUBSYSTEM;
use super::{Access, Backend, DeviceError, ModuleState, Sources, Trigger};
use crate::inventory::{Attach, Function, Health, Inventory};

/// The state file in the state directory.
const STATE: &str = "state.json";
/// The control socket in the state directory.
pub const SOCKET: &str = "control.sock";
/// How many change events a node agent's sim buffers for its watch task.
const EVENTS: usize = 4096;
/// The identity files mounted into containers, in the state directory.
const IDENTITY_DIR: &str = "dev";

/// A node's device identities: UUIDs (RFC 9562 version 8) and PCI-like
/// addresses derived from the node name and the device index, so two
/// nodes never publish the same device and a node's devices keep theirs.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    node: String,
    domain: u16,
}

impl NodeIdentity {
    pub fn new(node: &str) -> NodeIdentity {
        let h = Sha256::digest(node.as_bytes());
        NodeIdentity {
            node: node.to_string(),
            // PCI domain 0 is the host's own; a node gets one of its own.
            domain: u16::from_be_bytes([h[0], h[1]]).max(1),
        }
    }
}

impl Identity for NodeIdentity {
    fn uuid(&self, pf: u32, vf: Option<u32>) -> String {
        let mut h = Sha256::new();
        h.update(b"mock-accel-sim\0");
        h.update(self.node.as_bytes());
        h.update(pf.to_be_bytes());
        h.update(vf.map_or(u64::MAX, u64::from).to_be_bytes());
        let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = (b[8] & 0x3f) | 0x80; // RFC variant
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// The module's bus/device/function layout under the node's domain.
    fn pci_address(&self, pf: u32, vf: Option<u32>) -> String {
        let devfn = vf.map_or(0, |v| v + 1);
        format!("{:04x}:{:02x}:{:02x}.{}", self.domain, 0x1a + pf, devfn >> 3, devfn & 7)
    }
}

/// What the state file holds: the model, for this node and this boot.
#[derive(Serialize, Deserialize)]
struct Saved {
    node: String,
    boot_id: String,
    model: Model,
}

struct Inner {
    dir: PathBuf,
    identity: NodeIdentity,
    boot_id: String,
    model: Mutex<Model>,
    /// Every change's uevents, for the watch task.
    events: broadcast::Sender<Trigger>,
    /// Attaches started: (function, sequence), for the timer task.
    attaches: mpsc::UnboundedSender<(String, u64)>,
    attaches_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, u64)>>>,
}

/// The user-space backend.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl Sim {
    /// Opens the node's devices in `dir`: the saved ones if they were
    /// saved on this boot for this node with these parameters, else a
    /// fresh load (as the module's state goes with a reboot).
    pub fn open(dir: &Path, node: &str, params: Params, boot_id: &str) -> anyhow::Result<Sim> {
        Sim::open_with(dir, node, params, boot_id, EVENTS)
    }

    /// As [`Sim::open`], its change events buffered `events` deep (the
    /// buffer is allocated whole: a fleet of a thousand nodes keeps each
    /// small; a burst beyond it is a full rescan, never a lost change).
    pub fn open_with(dir: &Path, node: &str, params: Params, boot_id: &str, events: usize) -> anyhow::Result<Sim> {
        fs::create_dir_all(dir.join(IDENTITY_DIR)).with_context(|| format!("creating {}", dir.display()))?;
        let saved = match fs::read(dir.join(STATE)) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, dir = %dir.display(), "the sim's saved state is unreadable: starting afresh");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join(STATE).display())),
        };
        let model = match saved {
            Some(s) if s.node == node && s.boot_id == boot_id && s.model.params == params => {
                info!(
                    functions = s.model.names().len(),
                    "the sim's devices as this boot left them"
                );
                s.model
            }
            Some(s) => {
                info!(
                    same_node = s.node == node,
                    same_boot = s.boot_id == boot_id,
                    same_parameters = s.model.params == params,
                    "the sim's saved devices are another node's, boot's or parameters': loading afresh"
                );
                Model::load(params).map_err(anyhow::Error::msg)?
            }
            None => Model::load(params).map_err(anyhow::Error::msg)?,
        };
        let (events, _) = broadcast::channel(events.max(1));
        let (attaches, attaches_rx) = mpsc::unbounded_channel();
        let sim = Sim {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                identity: NodeIdentity::new(node),
                boot_id: boot_id.to_string(),
                model: Mutex::new(model),
                events,
                attaches,
                attaches_rx: Mutex::new(Some(attaches_rx)),
            }),
        };
        {
            let m = sim.inner.model.lock().expect("not poisoned");
            sim.save(&m, true).context("saving the sim's state")?;
            for started in m.attaching() {
                let _ = sim.inner.attaches.send(started);
            }
        }
        Ok(sim)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Reads a file of the model (`class/mock1/health`).
    pub fn read(&self, path: &str) -> Result<String, Errno> {
        self.inner
            .model
            .lock()
            .expect("not poisoned")
            .read(path, &self.inner.identity)
    }

    /// Writes a file of the model, as the module would take the write:
    /// its errno, or the change saved and its uevents sent.
    pub fn write(&self, path: &str, value: &str) -> Result<(), Errno> {
        let mut m = self.inner.model.lock().expect("not poisoned");
        let events = m.write(path, value)?;
        // Saved even without an event: fail_attach arms silently. The
        // identity files change only with the functions.
        let added_or_removed = events.iter().any(|e| e.change.is_none());
        self.save_or_warn(&m, added_or_removed);
        for e in &events {
            if let Some(("attach", _, state)) = &e.change
                && state == "attaching"
            {
                let name = model::name(e.pf, e.vf);
                if let Some(seq) = m.attach_seq(&name) {
                    let _ = self.inner.attaches.send((name, seq));
                }
            }
        }
        self.send(events);
        Ok(())
    }

    /// The changes' uevents from now on, as they happen (a write's are
    /// queued before it returns).
    pub fn subscribe(&self) -> broadcast::Receiver<Trigger> {
        self.inner.events.subscribe()
    }

    /// Every function's name.
    pub fn names(&self) -> Vec<String> {
        self.inner.model.lock().expect("not poisoned").names()
    }

    /// The sources of a scan but the control socket: the changes (as the
    /// module's uevents) and the attach timers. A fleet's nodes are driven
    /// through the API (DeviceScenarios), not a socket each.
    pub fn watch_changes(
        &self,
        tx: mpsc::Sender<Trigger>,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    ) {
        let mut rx = self.inner.events.subscribe();
        let c = cancel.clone();
        tasks.spawn(
            async move {
                loop {
                    let t = tokio::select! {
                        _ = c.cancelled() => return Ok(()),
                        r = rx.recv() => match r {
                            Ok(t) => t,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                warn!(lost = n, "the sim's events overflowed: rescanning everything");
                                Trigger::Overflow { at: Instant::now() }
                            }
                            Err(broadcast::error::RecvError::Closed) => return Ok(()),
                        },
                    };
                    if tx.send(t).await.is_err() {
                        return Ok(());
                    }
                }
            }
            .instrument(info_span!("sim-events")),
        );
        if let Some(mut started) = self.inner.attaches_rx.lock().expect("not poisoned").take() {
            let (sim, c) = (self.clone(), cancel.clone());
            let delay = Duration::from_millis(
                self.inner
                    .model
                    .lock()
                    .expect("not poisoned")
                    .params
                    .fabric_attach_ms
                    .into(),
            );
            tasks.spawn(
                async move {
                    let mut timers = JoinSet::new();
                    loop {
                        tokio::select! {
                            _ = c.cancelled() => return Ok(()),
                            Some((name, seq)) = started.recv() => {
                                let sim = sim.clone();
                                timers.spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    tokio::task::spawn_blocking(move || sim.complete_attach(&name, seq)).await
                                });
                            }
                            Some(_) = timers.join_next() => {}
                        }
                    }
                }
                .instrument(info_span!("sim-attach")),
            );
        }
    }

    fn complete_attach(&self, name: &str, seq: u64) {
        let mut m = self.inner.model.lock().expect("not poisoned");
        let events = m.complete_attach(name, seq);
        if !events.is_empty() {
            self.save_or_warn(&m, false);
            self.send(events);
        }
    }

    fn save_or_warn(&self, m: &Model, identities: bool) {
        if let Err(e) = self.save(m, identities) {
            warn!(error = %format!("{e:#}"), "cannot save the sim's state: a restart would lose this change");
        }
    }

    /// A change's uevents, to the watch task.
    fn send(&self, events: Vec<Event>) {
        let at = Instant::now();
        for ev in events {
            // No receiver (no watch yet) is fine: the first scan sees it all.
            let _ = self.inner.events.send(Trigger::Uevent {
                source: "sim",
                event: Box::new(self.uevent(&ev)),
                at,
                ebpf_attached: false,
            });
        }
    }

    /// The state file and (`identities`) the identity files, written where
    /// a restarted agent (and the container runtime) finds them.
    fn save(&self, m: &Model, identities: bool) -> anyhow::Result<()> {
        let dir = &self.inner.dir;
        let saved = Saved {
            node: self.inner.identity.node.clone(),
            boot_id: self.inner.boot_id.clone(),
            model: m.clone(),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, &saved)?;
        tmp.persist(dir.join(STATE))?;
        if !identities {
            return Ok(());
        }
        let ids = dir.join(IDENTITY_DIR);
        let mut keep = std::collections::HashSet::new();
        for f in m.functions(&self.inner.identity) {
            let path = ids.join(&f.name);
            let text = identity_text(&f);
            if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                let mut tmp = tempfile::NamedTempFile::new_in(&ids)?;
                io::Write::write_all(&mut tmp, text.as_bytes())?;
                let file = tmp.persist(&path)?;
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            }
            keep.insert(f.name);
        }
        for entry in fs::read_dir(&ids)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = fs::remove_file(ids.join(&name));
            }
        }
        Ok(())
    }

    /// The module's class-device uevent for a change.
    fn uevent(&self, ev: &Event) -> UEvent {
        let name = model::name(ev.pf, ev.vf);
        let pci = self.inner.identity.pci_address(ev.pf, ev.vf);
        let mut env: HashMap<String, String> = [
            ("DEVNAME", format!("mock-accel/{name}")),
            ("MOCK_ACCEL_TYPE", if ev.vf.is_some() { "vf" } else { "pf" }.into()),
            ("MOCK_ACCEL_UUID", self.inner.identity.uuid(ev.pf, ev.vf)),
            ("MOCK_ACCEL_PCI", pci.clone()),
            ("MOCK_ACCEL_NUMA_NODE", ev.numa_node.to_string()),
            ("MOCK_ACCEL_MEMORY_SIZE", ev.memory_size.to_string()),
            ("MOCK_ACCEL_PF_INDEX", ev.pf.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(vf) = ev.vf {
            env.insert("MOCK_ACCEL_VF_INDEX".into(), vf.to_string());
            env.insert("MOCK_ACCEL_PHYSFN".into(), format!("mock{}", ev.pf));
        }
        if let Some((what, key, value)) = &ev.change {
            env.insert("MOCK_ACCEL_EVENT".into(), what.to_string());
            env.insert(key.to_string(), value.clone());
        }
        UEvent {
            action: match ev.action {
                "add" => ActionType::Add,
                "remove" => ActionType::Remove,
                _ => ActionType::Change,
            },
            devpath: PathBuf::from(format!("/devices/mock-accel-sim/{pci}/mock-accel/{name}")),
            subsystem: SUBSYSTEM.into(),
            env,
            seq: 0,
        }
    }

    fn device_error(&self, what: String, e: Errno) -> DeviceError {
        match e.0 {
            libc::ENOENT => DeviceError::Gone,
            libc::ENODEV => DeviceError::Removing,
            libc::EIO => DeviceError::Unhealthy,
            libc::ENOLINK => DeviceError::NotAttached,
            n => DeviceError::Io {
                what,
                source: io::Error::from_raw_os_error(n),
            },
        }
    }

    fn write_for(&self, path: String, value: &str) -> Result<(), DeviceError> {
        self.write(&path, value)
            .map_err(|e| self.device_error(format!("writing {value} to {path} (sim)"), e))
    }
}

/// What reading the module's character device returns.
pub fn identity_text(f: &Function) -> String {
    format!(
        "MOCK_ACCEL_DEVICE={}\nMOCK_ACCEL_UUID={}\nMOCK_ACCEL_PCI={}\nMOCK_ACCEL_TYPE={}\nMOCK_ACCEL_NUMA_NODE={}\nMOCK_ACCEL_MEMORY_SIZE={}\n",
        f.name,
        f.uuid,
        f.pci_address,
        f.kind.as_str(),
        f.numa_node,
        f.memory_bytes
    )
}

impl Backend for Sim {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn location(&self) -> String {
        format!("the sim in {}", self.inner.dir.display())
    }

    fn scan(&self) -> io::Result<Inventory> {
        let m = self.inner.model.lock().expect("not poisoned");
        Ok(Inventory {
            scanned: true,
            functions: m
                .functions(&self.inner.identity)
                .into_iter()
                .map(|f| (f.name.clone(), f))
                .collect(),
            skipped: vec![],
        })
    }

    fn allocated(&self, function: &str) -> Result<bool, DeviceError> {
        let path = format!("class/{function}/status");
        self.read(&path)
            .map(|s| s.trim() == "1")
            .map_err(|e| self.device_error(format!("reading {path} (sim)"), e))
    }

    fn set_allocated(&self, function: &str, allocated: bool) -> Result<(), DeviceError> {
        self.write_for(format!("class/{function}/status"), if allocated { "1" } else { "0" })
    }

    fn attach_state(&self, function: &str) -> Result<Option<Attach>, DeviceError> {
        let m = self.inner.model.lock().expect("not poisoned");
        Ok(m.attach_state(function).and_then(AttachState::published))
    }

    fn set_attached(&self, function: &str, attached: bool) -> Result<(), DeviceError> {
        self.write_for(
            format!("class/{function}/attach"),
            if attached { "attach" } else { "detach" },
        )
    }

    fn free_hint(&self, function: &str) -> String {
        format!("run `mock-accel-agent ctl write class/{function}/status 0` in the agent's container to free it")
    }

    fn add_pf(&self, pf: u32, numa_node: Option<u32>) -> Result<(), DeviceError> {
        let value = match numa_node {
            Some(n) => format!("{pf} {n}"),
            None => pf.to_string(),
        };
        self.write_for("bus/new_device".into(), &value)
    }

    fn remove_pf(&self, pf: u32) -> Result<(), DeviceError> {
        self.write_for("bus/del_device".into(), &pf.to_string())
    }

    fn set_vfs(&self, pf: &str, vfs: u32) -> Result<(), DeviceError> {
        self.write_for(format!("class/{pf}/sriov_numvfs"), &vfs.to_string())
    }

    fn set_health(&self, function: &str, health: Health) -> Result<(), DeviceError> {
        self.write_for(format!("class/{function}/health"), health.as_str())
    }

    fn fail_attaches(&self, function: &str, n: u32) -> Result<(), DeviceError> {
        self.write_for(format!("class/{function}/fail_attach"), &n.to_string())
    }

    fn parameters(&self) -> Result<Params, DeviceError> {
        Ok(self.inner.model.lock().expect("not poisoned").params.clone())
    }

    fn module_state(&self) -> ModuleState {
        ModuleState { loaded: true, loads: 1 }
    }

    fn access(&self, f: &Function) -> Access {
        Access::File {
            host_path: self.inner.dir.join(IDENTITY_DIR).join(&f.name),
            path: f.device_node(),
        }
    }

    /// The sim's own sources: its changes (as the module's uevents), the
    /// attach timers, and the control socket. `sources` is for the kernel.
    fn watch(
        &self,
        _sources: Sources,
        tx: mpsc::Sender<Trigger>,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    ) {
        self.watch_changes(tx, tasks, cancel);
        let (sim, c) = (self.clone(), cancel.clone());
        tasks.spawn(control::serve(sim, self.inner.dir.join(SOCKET), c).instrument(info_span!("sim-control")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, node: &str, boot: &str) -> Sim {
        Sim::open(dir, node, Params::default(), boot).unwrap()
    }

    #[test]
    fn identities_are_per_node_and_stable() {
        let a = NodeIdentity::new("node-a");
        let b = NodeIdentity::new("node-b");
        assert_ne!(a.uuid(0, None), b.uuid(0, None));
        assert_ne!(a.pci_address(0, None), b.pci_address(0, None));
        assert_ne!(a.uuid(0, None), a.uuid(0, Some(0)));
        assert_ne!(a.uuid(1, Some(0)), a.uuid(0, Some(1)));
        assert_eq!(a.uuid(3, Some(2)), NodeIdentity::new("node-a").uuid(3, Some(2)));
        let u = a.uuid(0, None);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8", "version 8: {u}");
        assert!("89ab".contains(&u[19..20]), "RFC variant: {u}");
        assert!(a.pci_address(1, Some(15)).ends_with(":1b:02.0"));
    }

    #[test]
    fn state_survives_a_restart_but_not_a_reboot_or_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let sim = open(dir.path(), "n1", "boot-1");
        sim.write("class/mock1/sriov_numvfs", "2").unwrap();
        sim.write("class/mock1_vf0/status", "1").unwrap();
        sim.write("bus/del_device", "3").unwrap();
        assert_eq!(sim.write("class/mock1_vf0/status", "7"), Err(Errno(libc::ERANGE)));
        let before = sim.scan().unwrap();
        drop(sim);

        let again = open(dir.path(), "n1", "boot-1");
        assert_eq!(again.scan().unwrap().functions, before.functions);
        assert!(again.allocated("mock1_vf0").unwrap());
        let ids: Vec<String> = fs::read_dir(dir.path().join(IDENTITY_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ids.len(), 5, "{ids:?}");
        let text = fs::read_to_string(dir.path().join("dev/mock1_vf0")).unwrap();
        assert!(
            text.starts_with("MOCK_ACCEL_DEVICE=mock1_vf0\nMOCK_ACCEL_UUID="),
            "{text}"
        );
        assert!(text.contains("MOCK_ACCEL_TYPE=vf\n"), "{text}");

        let rebooted = open(dir.path(), "n1", "boot-2");
        assert_eq!(rebooted.names(), ["mock0", "mock1", "mock2", "mock3"]);
        assert!(!rebooted.allocated("mock1").unwrap());
        assert!(
            !dir.path().join("dev/mock1_vf0").exists(),
            "identity files follow the devices"
        );
        let other = open(dir.path(), "n2", "boot-2");
        assert_ne!(
            other.scan().unwrap().functions["mock0"].uuid,
            rebooted.scan().unwrap().functions["mock0"].uuid
        );
    }

    #[test]
    fn a_silent_change_is_kept_too() {
        let dir = tempfile::tempdir().unwrap();
        let params = Params {
            fabric_attach_ms: 10,
            ..Default::default()
        };
        let sim = Sim::open(dir.path(), "n1", params.clone(), "b").unwrap();
        sim.write("class/mock2/fail_attach", "3").unwrap();
        drop(sim);
        let again = Sim::open(dir.path(), "n1", params, "b").unwrap();
        assert_eq!(again.read("class/mock2/fail_attach").unwrap(), "3\n");
    }

    #[test]
    fn backend_errors_are_the_kernel_backends() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::open(
            dir.path(),
            "n1",
            Params {
                fabric_attach_ms: 10,
                ..Default::default()
            },
            "b",
        )
        .unwrap();
        assert!(matches!(sim.set_allocated("mock9", true), Err(DeviceError::Gone)));
        assert!(matches!(
            sim.set_allocated("mock0", true),
            Err(DeviceError::NotAttached)
        ));
        sim.write("class/mock1/health", "failed").unwrap();
        assert!(matches!(sim.remove_pf(7), Err(DeviceError::Removing)));
        let e = sim.add_pf(0, None).unwrap_err().to_string();
        assert!(e.contains("bus/new_device") && e.contains("File exists"), "{e}");
        assert_eq!(sim.attach_state("mock0").unwrap(), Some(Attach::Detached));
        assert_eq!(sim.attach_state("mock9").unwrap(), None);
    }

    #[tokio::test]
    async fn changes_come_out_as_the_modules_uevents_and_attaches_complete() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::open(
            dir.path(),
            "n1",
            Params {
                num_pfs: 1,
                fabric_attach_ms: 20,
                ..Default::default()
            },
            "b",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        let cancel = CancellationToken::new();
        sim.watch(
            Sources {
                uevents: true,
                ebpf: false,
            },
            tx,
            &mut tasks,
            &cancel,
        );
        sim.set_attached("mock0", true).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let Trigger::Uevent { event, source, .. } = rx.recv().await.unwrap() else {
                panic!("not a uevent")
            };
            assert_eq!(source, "sim");
            assert_eq!(event.env["DEVNAME"], "mock-accel/mock0");
            assert_eq!(event.env["MOCK_ACCEL_EVENT"], "attach");
            seen.push(event.env["MOCK_ACCEL_ATTACH"].clone());
        }
        assert_eq!(seen, ["attaching", "attached"]);
        sim.set_vfs("mock0", 2).unwrap();
        let mut actions = Vec::new();
        for _ in 0..3 {
            let Trigger::Uevent { event, .. } = rx.recv().await.unwrap() else {
                panic!()
            };
            actions.push(format!("{:?} {}", event.action, event.env["DEVNAME"]));
            if event.action == ActionType::Add {
                assert_eq!(event.env["MOCK_ACCEL_PHYSFN"], "mock0");
                assert_eq!(
                    crate::events::DeviceEvent::from_uevent(&event).map(|d| (d.added, d.pf, d.vf)),
                    Some((true, 0, Some(actions.len() as u32 - 1)))
                );
            }
        }
        assert_eq!(
            actions,
            [
                "Add mock-accel/mock0_vf0",
                "Add mock-accel/mock0_vf1",
                "Change mock-accel/mock0"
            ]
        );
        cancel.cancel();
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
    }
}
