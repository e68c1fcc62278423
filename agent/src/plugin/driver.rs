//! Preparing and releasing the devices of ResourceClaims: what the
//! kubelet's NodePrepareResources / NodeUnprepareResources do, whatever the
//! API version they came in. One batch at a time (and one pod at a time
//! during a rolling update, through `flock`); each claim succeeds or fails
//! on its own, and every step is recorded before it is taken so that a
//! crash at any point is completed or undone by the next call.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;
use metrics::{counter, gauge, histogram};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::cdi;
use super::checkpoint::{self, Checkpoint, ClaimState, Claims, PreparedClaim, PreparedDevice};
use crate::backend::{Backend, DeviceError};
use crate::claims::ClaimRef;
use crate::inventory::{Function, Inventory};
use crate::metrics as m;
use crate::slices::device_name;

/// How long a prepare waits for the first scan of the devices.
const FIRST_SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// A temporary file of [`cdi::write_atomic`] this old is no live writer's
/// (a write takes milliseconds): its writer was killed before the rename.
const TEMPORARY_FILE_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a claim failed: a bounded reason (metric label) and the words for
/// the kubelet's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimError {
    pub reason: &'static str,
    pub message: String,
}

impl ClaimError {
    fn new(reason: &'static str, message: impl Into<String>) -> ClaimError {
        ClaimError {
            reason,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub driver: String,
    pub node: String,
    pub cdi_root: PathBuf,
    pub plugin_dir: PathBuf,
    pub boot_id_path: PathBuf,
    /// Serialise with other pods of this driver on the node (rolling update).
    pub cross_pod_lock: bool,
}

pub struct Driver {
    cfg: Config,
    /// The devices: every read and write of them goes through it.
    backend: Arc<dyn Backend>,
    client: kube::Client,
    inventory: watch::Receiver<Arc<Inventory>>,
    checkpoint: Checkpoint,
    batch: tokio::sync::Mutex<()>,
    prepared: watch::Sender<Arc<Claims>>,
    /// Device status reports to the claims (see `status`).
    status: tokio::sync::mpsc::UnboundedSender<super::status::Update>,
}

/// Held while a batch runs: the in-process mutex, and the `flock` on
/// `serialize.lock` when other pods may run beside us.
struct BatchGuard<'a> {
    _mutex: tokio::sync::MutexGuard<'a, ()>,
    _file: Option<fs::File>,
}

fn flock(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    loop {
        // SAFETY: flock on a descriptor we own; it is released on close.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Driver {
    pub fn new(
        cfg: Config,
        backend: Arc<dyn Backend>,
        client: kube::Client,
        inventory: watch::Receiver<Arc<Inventory>>,
    ) -> Driver {
        let checkpoint = Checkpoint::new(&cfg.plugin_dir, &cfg.driver, &cfg.node);
        // Filled by `check_checkpoint` at start, then after every batch.
        let (prepared, _) = watch::channel(Arc::new(Claims::default()));
        let status = super::status::spawn(
            client.clone(),
            cfg.driver.clone(),
            cfg.node.clone(),
            Checkpoint::new(&cfg.plugin_dir, &cfg.driver, &cfg.node),
        );
        Driver {
            status,
            cfg,
            backend,
            client,
            inventory,
            checkpoint,
            batch: tokio::sync::Mutex::new(()),
            prepared,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The prepared claims, as last recorded (for health and metrics).
    pub fn prepared(&self) -> watch::Receiver<Arc<Claims>> {
        self.prepared.subscribe()
    }

    /// Checks the checkpoint at start-up: says loudly if it cannot be used.
    pub fn check_checkpoint(&self) -> Result<usize, checkpoint::Error> {
        let claims = self.checkpoint.load().inspect_err(|e| {
            counter!(m::CHECKPOINT_ERRORS, "kind" => e.kind()).increment(1);
        })?;
        self.publish(&claims);
        Ok(claims.0.len())
    }

    async fn lock(&self) -> Result<BatchGuard<'_>, ClaimError> {
        let mutex = self.batch.lock().await;
        let file = if self.cfg.cross_pod_lock {
            let path = self.cfg.plugin_dir.join("serialize.lock");
            let locked = tokio::task::spawn_blocking(move || {
                fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
                flock(&path)
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
            Some(locked.map_err(|e| ClaimError::new("lock", format!("locking serialize.lock: {e}")))?)
        } else {
            None
        };
        Ok(BatchGuard {
            _mutex: mutex,
            _file: file,
        })
    }

    /// Starts a batch: the lock and the checkpoint, or why every claim of
    /// the batch fails.
    async fn begin(&self) -> (Result<BatchGuard<'_>, ClaimError>, Claims, Option<ClaimError>) {
        let guard = self.lock().await;
        if guard.is_ok() {
            // A writer killed mid-write left its temporary file: ours go.
            for dir in [&self.cfg.cdi_root, &self.cfg.plugin_dir] {
                let swept = cdi::sweep_temporary(dir, TEMPORARY_FILE_AGE);
                if swept > 0 {
                    info!(dir = %dir.display(), files = swept, "removed temporary files a killed writer left");
                }
            }
        }
        match guard.as_ref().map_err(Clone::clone).and_then(|_| self.load()) {
            Ok(state) => (guard, state, None),
            Err(e) => (guard, Claims::default(), Some(e)),
        }
    }

    fn boot_id(&self) -> String {
        fs::read_to_string(&self.cfg.boot_id_path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| {
                warn!(path = %self.cfg.boot_id_path.display(), error = %e, "no boot ID: reboots cannot be told apart");
                "unknown".into()
            })
    }

    fn load(&self) -> Result<Claims, ClaimError> {
        self.checkpoint.load().map_err(|e| {
            counter!(m::CHECKPOINT_ERRORS, "kind" => e.kind()).increment(1);
            ClaimError::new("checkpoint", e.to_string())
        })
    }

    fn save(&self, claims: &Claims) -> Result<(), ClaimError> {
        self.checkpoint.save(claims).map_err(|e| {
            counter!(m::CHECKPOINT_ERRORS, "kind" => "write").increment(1);
            ClaimError::new(
                "checkpoint",
                format!("writing the checkpoint {}: {e}", self.checkpoint.path.display()),
            )
        })
    }

    fn publish(&self, claims: &Claims) {
        let devices: usize = claims.0.values().map(|c| c.devices.len()).sum();
        gauge!(m::PREPARED_CLAIMS).set(claims.0.len() as f64);
        gauge!(m::PREPARED_DEVICES).set(devices as f64);
        self.prepared.send_replace(Arc::new(claims.clone()));
    }

    /// NodePrepareResources: the devices of each claim, or why not.
    pub async fn prepare(&self, claims: &[ClaimRef]) -> BTreeMap<String, Result<Vec<PreparedDevice>, ClaimError>> {
        let mut out = BTreeMap::new();
        if claims.is_empty() {
            return out;
        }
        // Not before the node's devices are known: a call right after start
        // (the kubelet remembers the socket) must not find "no such device".
        if let Err(e) = self.first_scan().await {
            for claim in claims {
                counter!(m::PREPARES, "result" => "error", "reason" => e.reason).increment(1);
                out.insert(claim.uid.clone(), Err(e.clone()));
            }
            return out;
        }
        // The API reads first, at once, for the claims we do not hold yet,
        // and before the lock: a slow API must not hold up every other call
        // on the node. The checkpoint is replaced by rename: reading it
        // without the lock sees one whole version.
        let known: HashSet<String> = self
            .checkpoint
            .load()
            .map(|c| c.0.into_keys().collect())
            .unwrap_or_default();
        let api_claims = futures::future::join_all(claims.iter().map(|c| async {
            if check_ref(c).is_err() || known.contains(&c.uid) {
                return None;
            }
            let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &c.namespace);
            Some(api.get_opt(&c.name).await)
        }))
        .await;
        let (_guard, mut state, batch_err) = self.begin().await;
        let boot = self.boot_id();
        for (claim, fetched) in claims.iter().zip(api_claims) {
            let started = Instant::now();
            let result = match &batch_err {
                Some(e) => Err(e.clone()),
                None => self.prepare_one(&mut state, claim, fetched, &boot),
            };
            let seconds = started.elapsed().as_secs_f64();
            match &result {
                Ok(devices) => {
                    let _ = self.status.send(super::status::Update { claim: claim.clone() });
                    counter!(m::PREPARES, "result" => "success", "reason" => "none").increment(1);
                    info!(claim = %claim, devices = devices.len(), "claim prepared");
                }
                Err(e) => {
                    counter!(m::PREPARES, "result" => "error", "reason" => e.reason).increment(1);
                    warn!(claim = %claim, reason = e.reason, error = %e.message, "claim not prepared");
                }
            }
            histogram!(m::PREPARE_SECONDS).record(seconds);
            out.insert(claim.uid.clone(), result);
        }
        if batch_err.is_none() {
            self.publish(&state);
        }
        out
    }

    /// Waits (a bounded time) for the first scan of the node's devices.
    async fn first_scan(&self) -> Result<(), ClaimError> {
        let mut rx = self.inventory.clone();
        match tokio::time::timeout(FIRST_SCAN_WAIT, rx.wait_for(|inv| inv.scanned)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClaimError::new(
                "not_scanned",
                format!("the node's devices have not been scanned yet (waited {FIRST_SCAN_WAIT:?}); try again"),
            )),
        }
    }

    fn prepare_one(
        &self,
        state: &mut Claims,
        claim: &ClaimRef,
        fetched: Option<Result<Option<ResourceClaim>, kube::Error>>,
        boot: &str,
    ) -> Result<Vec<PreparedDevice>, ClaimError> {
        check_ref(claim)?;
        let inv = self.inventory.borrow().clone();
        if let Some(rec) = state.0.get(&claim.uid).cloned() {
            if rec.namespace != claim.namespace || rec.name != claim.name {
                return Err(ClaimError::new(
                    "uid_mismatch",
                    format!(
                        "claim UID {} is prepared as {}/{}, not {}/{}",
                        claim.uid, rec.namespace, rec.name, claim.namespace, claim.name
                    ),
                ));
            }
            // Again (a kubelet restart), after a crash half-way, or after a
            // reboot or module reload: make everything true again.
            let spec_there = rec.cdi_spec.exists();
            if rec.state == ClaimState::PrepareCompleted && rec.boot_id == boot && spec_there {
                debug!(claim = %claim, "already prepared");
            } else {
                info!(claim = %claim, state = ?rec.state, same_boot = rec.boot_id == boot, spec_there, "completing an earlier preparation");
            }
            self.apply(&claim.uid, &rec, &inv)?;
            let devices = rec.devices.clone();
            let updated = PreparedClaim {
                state: ClaimState::PrepareCompleted,
                boot_id: boot.to_string(),
                ..rec.clone()
            };
            if updated != rec {
                state.0.insert(claim.uid.clone(), updated);
                self.save(state)?;
            }
            return Ok(devices);
        }
        let api_claim = match fetched {
            Some(Ok(Some(c))) => c,
            Some(Ok(None)) => {
                return Err(ClaimError::new(
                    "not_found",
                    format!("ResourceClaim {}/{} not found", claim.namespace, claim.name),
                ));
            }
            Some(Err(e)) => {
                return Err(ClaimError::new(
                    "api",
                    format!("reading ResourceClaim {}/{}: {e}", claim.namespace, claim.name),
                ));
            }
            // Held when we looked, released by a call that ran meanwhile.
            None => {
                return Err(ClaimError::new(
                    "retry",
                    format!("claim {claim} was unprepared while this call waited for the lock; try again"),
                ));
            }
        };
        let rec = self.resolve(claim, &api_claim, &inv, state, boot)?;
        // Record first: a crash from here on is completed or undone later.
        state.0.insert(claim.uid.clone(), rec.clone());
        if let Err(e) = self.save(state) {
            state.0.remove(&claim.uid);
            return Err(e);
        }
        crate::failpoints::crash("prepare/recorded");
        let done = self.apply(&claim.uid, &rec, &inv).and_then(|()| {
            crate::failpoints::crash("prepare/applied");
            let completed = PreparedClaim {
                state: ClaimState::PrepareCompleted,
                ..rec.clone()
            };
            state.0.insert(claim.uid.clone(), completed);
            self.save(state)
        });
        if let Err(e) = done {
            // Undo what was done; the claim was never prepared.
            let others = shared_by_others(state, &claim.uid);
            if let Err(undo) = self.release(&rec, &others)
                && self.holds_anything(&rec, &others)
            {
                // What cannot be undone stays recorded, as a preparation
                // begun: the kubelet's next prepare of the claim completes
                // it, its unprepare releases it. Dropping the record would
                // leave `status=1` (or a CDI spec) owned by no claim.
                state.0.insert(claim.uid.clone(), rec);
                let kept = self.save(state);
                warn!(claim = %claim, error = %undo.message, kept = kept.is_ok(), "could not undo a failed preparation; it stays in the checkpoint");
                return Err(ClaimError::new(
                    e.reason,
                    format!(
                        "{}; undoing it failed too ({}): the claim stays recorded and is released at its unprepare",
                        e.message, undo.message
                    ),
                ));
            }
            state.0.remove(&claim.uid);
            if let Err(save) = self.save(state) {
                warn!(claim = %claim, error = %save.message, "could not drop the failed claim from the checkpoint");
            }
            return Err(e);
        }
        crate::failpoints::crash("prepare/completed");
        Ok(rec.devices)
    }

    /// From the API's allocation to what this node prepares.
    fn resolve(
        &self,
        claim: &ClaimRef,
        api: &ResourceClaim,
        inv: &Inventory,
        state: &Claims,
        boot: &str,
    ) -> Result<PreparedClaim, ClaimError> {
        let (drv, node) = (&self.cfg.driver, &self.cfg.node);
        let what = format!("ResourceClaim {}/{}", claim.namespace, claim.name);
        let uid = api.metadata.uid.as_deref().unwrap_or("");
        if uid != claim.uid {
            return Err(ClaimError::new(
                "uid_mismatch",
                format!(
                    "{what} has UID {uid}, the kubelet asked for {} (deleted and created again?)",
                    claim.uid
                ),
            ));
        }
        let results = api
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .map(|a| a.devices.as_ref().and_then(|d| d.results.clone()).unwrap_or_default())
            .ok_or_else(|| ClaimError::new("not_allocated", format!("{what} is not allocated")))?;
        let ours: Vec<_> = results.iter().filter(|r| &r.driver == drv).collect();
        if ours.is_empty() {
            let others: Vec<String> = results
                .iter()
                .map(|r| format!("{}/{}/{}", r.driver, r.pool, r.device))
                .collect();
            return Err(ClaimError::new(
                "wrong_driver",
                format!(
                    "{what} has no device of driver {drv} (allocated: [{}])",
                    others.join(", ")
                ),
            ));
        }
        if let Some(r) = ours.iter().find(|r| &r.pool != node) {
            return Err(ClaimError::new(
                "wrong_node",
                format!(
                    "{what}: device {} is in pool {}, another node's; this is node {node}",
                    r.device, r.pool
                ),
            ));
        }
        let mut devices: Vec<PreparedDevice> = Vec::new();
        for r in ours {
            if r.device.is_empty() || r.request.is_empty() {
                return Err(ClaimError::new(
                    "invalid",
                    format!("{what}: an allocation result has an empty device or request"),
                ));
            }
            let f = find_function(inv, &r.device).ok_or_else(|| unknown_device(inv, &r.device))?;
            let admin = r.admin_access.unwrap_or(false);
            let share = r.share_id.clone();
            if let Some(d) = devices
                .iter_mut()
                .find(|d| d.device == r.device && d.share_id == share && d.admin_access == admin)
            {
                d.requests.push(r.request.clone());
                continue;
            }
            devices.push(PreparedDevice {
                requests: vec![r.request.clone()],
                pool: r.pool.clone(),
                device: r.device.clone(),
                function: f.name.clone(),
                physfn: f.physfn.clone(),
                admin_access: admin,
                consumed_memory: r
                    .consumed_capacity
                    .as_ref()
                    .and_then(|c| c.get("memory"))
                    .map(|q| q.0.clone()),
                share_id: share,
                cdi_device_id: cdi::qualified_name(drv, &claim.uid, &r.device, r.share_id.as_deref()),
            });
        }
        self.check_exclusive(claim, &devices, state)?;
        Ok(PreparedClaim {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            state: ClaimState::PrepareStarted,
            boot_id: boot.to_string(),
            cdi_spec: cdi::spec_path(&self.cfg.cdi_root, drv, &claim.uid),
            devices,
        })
    }

    /// A device goes to one claim at a time (admin access aside), and a PF
    /// and its VFs never to two claims, nor both to one.
    fn check_exclusive(&self, claim: &ClaimRef, devices: &[PreparedDevice], state: &Claims) -> Result<(), ClaimError> {
        let held: Vec<(&String, &PreparedClaim, &PreparedDevice)> = state
            .0
            .iter()
            .flat_map(|(uid, c)| c.devices.iter().map(move |d| (uid, c, d)))
            .filter(|(uid, _, d)| *uid != &claim.uid && !d.admin_access)
            .collect();
        let owner = |c: &PreparedClaim, uid: &str| format!("{}/{} ({uid})", c.namespace, c.name);
        let exclusive: Vec<&PreparedDevice> = devices.iter().filter(|d| !d.admin_access).collect();
        for d in &exclusive {
            for (uid, c, h) in &held {
                // Two shares of one device (consumable capacity): the
                // scheduler keeps their sum within the device's memory.
                let shares = d.share_id.is_some() && h.share_id.is_some() && d.share_id != h.share_id;
                if h.function == d.function && !shares {
                    return Err(ClaimError::new(
                        "conflict",
                        format!("device {} is already prepared for claim {}", d.device, owner(c, uid)),
                    ));
                }
                if h.physfn.as_deref() == Some(d.function.as_str()) {
                    return Err(ClaimError::new(
                        "conflict",
                        format!(
                            "PF {} cannot be prepared: its VF {} is prepared for claim {}",
                            d.device,
                            h.device,
                            owner(c, uid)
                        ),
                    ));
                }
                if d.physfn.as_deref() == Some(h.function.as_str()) {
                    return Err(ClaimError::new(
                        "conflict",
                        format!(
                            "VF {} cannot be prepared: its PF {} is prepared for claim {}",
                            d.device,
                            h.device,
                            owner(c, uid)
                        ),
                    ));
                }
            }
            if let Some(pf) = exclusive
                .iter()
                .find(|other| d.physfn.as_deref() == Some(other.function.as_str()))
            {
                return Err(ClaimError::new(
                    "conflict",
                    format!(
                        "the claim asks for PF {} and its VF {} together: a PF is exclusive with its VFs",
                        pf.device, d.device
                    ),
                ));
            }
            // Read now: the last scan may predate our own last release. (A
            // device another claim holds a share of is marked already.)
            let allocated = self.backend.allocated(&d.function).unwrap_or(false);
            if allocated && !held.iter().any(|(_, _, h)| h.function == d.function) {
                return Err(ClaimError::new(
                    "conflict",
                    format!(
                        "device {} is marked allocated in {} (status=1) but no claim of this driver holds it: \
                         something else uses it; {}",
                        d.device,
                        self.backend.kind(),
                        self.backend.free_hint(&d.function)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Marks a device allocated or free, with the backend's refusals in words.
    fn set_status(&self, d: &PreparedDevice, allocated: bool) -> Result<(), ClaimError> {
        let device = &d.device;
        self.backend.set_allocated(&d.function, allocated).map_err(|e| match e {
            DeviceError::Gone => ClaimError::new("device_gone", format!("device {device} is gone")),
            DeviceError::Removing => ClaimError::new("device_gone", format!("device {device} is being removed")),
            DeviceError::Unhealthy => ClaimError::new(
                "unhealthy",
                format!("device {device} is failed (health=failed): the module refuses to allocate it"),
            ),
            DeviceError::NotAttached => ClaimError::new(
                "not_attached",
                format!(
                    "device {device} is fabric-attached and not attached (attach): the module refuses to allocate it"
                ),
            ),
            e @ DeviceError::Io { .. } => ClaimError::new(self.backend.kind(), e.to_string()),
        })
    }

    /// Marks the devices allocated and writes the claim's CDI spec.
    fn apply(&self, uid: &str, rec: &PreparedClaim, inv: &Inventory) -> Result<(), ClaimError> {
        let mut functions = Vec::new();
        for d in &rec.devices {
            let f = inv
                .functions
                .get(&d.function)
                .ok_or_else(|| unknown_device(inv, &d.device))?;
            functions.push(f);
        }
        for d in rec.devices.iter().filter(|d| !d.admin_access) {
            self.set_status(d, true)?;
        }
        crate::failpoints::crash("prepare/status-written");
        let spec = self.spec(uid, rec, &functions);
        cdi::write_spec(&self.cfg.cdi_root, &rec.cdi_spec, &spec).map_err(|e| ClaimError::new("cdi", e))
    }

    fn spec(&self, uid: &str, rec: &PreparedClaim, functions: &[&Function]) -> cdi::Spec {
        let devices = rec
            .devices
            .iter()
            .zip(functions)
            .map(|(d, f)| cdi::Device {
                name: cdi::device_name(uid, &d.device, d.share_id.as_deref()),
                container_edits: cdi::ContainerEdits {
                    env: [
                        format!("MOCK_ACCEL_UUID={}", f.uuid),
                        format!("MOCK_ACCEL_PCI={}", f.pci_address),
                        format!("MOCK_ACCEL_DEVICE={}", f.name),
                        format!("MOCK_ACCEL_TYPE={}", f.kind.as_str()),
                        format!("MOCK_ACCEL_NUMA_NODE={}", f.numa_node),
                        // The container's share of the memory: what its
                        // claim consumed, else the whole device's.
                        format!(
                            "MOCK_ACCEL_MEMORY={}",
                            d.consumed_memory
                                .clone()
                                .unwrap_or_else(|| crate::slices::bytes_quantity(f.memory_bytes))
                        ),
                    ]
                    .into_iter()
                    .chain(d.share_id.as_ref().map(|s| format!("MOCK_ACCEL_SHARE_ID={s}")))
                    .collect(),
                    device_nodes: vec![cdi::DeviceNode {
                        path: f.device_node(),
                        kind: Some("c".into()),
                        major: f.devnum.map(|(m, _)| m as i64),
                        minor: f.devnum.map(|(_, n)| n as i64),
                        permissions: Some(if d.admin_access { "r" } else { "rw" }.into()),
                        host_path: None,
                    }],
                },
            })
            .collect();
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        let mut spec = cdi::Spec {
            cdi_version: String::new(),
            kind: cdi::kind(&self.cfg.driver),
            devices,
            container_edits: cdi::ContainerEdits {
                env: vec![format!("MOCK_ACCEL_DEVICES={}", names.join(","))],
                device_nodes: vec![],
            },
        };
        spec.cdi_version = cdi::minimum_version(&spec).to_string();
        spec
    }

    /// Frees the devices and removes the spec: all it can, then the first
    /// error. A device another claim still holds a share of (`others`)
    /// stays marked allocated: the last share frees it.
    fn release(&self, rec: &PreparedClaim, others: &HashSet<String>) -> Result<(), ClaimError> {
        let spec = cdi::remove_spec(&rec.cdi_spec).map_err(|e| ClaimError::new("cdi", e));
        crate::failpoints::crash("unprepare/spec-removed");
        let mut first_err = spec.err();
        for d in rec
            .devices
            .iter()
            .filter(|d| !d.admin_access && !others.contains(&d.function))
        {
            // Test-only fault: a write that fails.
            let freed = if crate::failpoints::fails(&format!("release-status/{}", rec.name)) {
                Err(ClaimError::new(
                    self.backend.kind(),
                    format!("freeing {}: injected fault", d.function),
                ))
            } else {
                self.set_status(d, false)
            };
            match freed {
                Ok(()) => {}
                // Gone with the device: nothing left to free.
                Err(e) if e.reason == "device_gone" => {
                    debug!(device = %d.device, "device gone; nothing to free")
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether a device of the claim is still marked allocated, or its CDI
    /// spec still there (after a release that failed: what it could not
    /// undo may never have been done).
    fn holds_anything(&self, rec: &PreparedClaim, others: &HashSet<String>) -> bool {
        rec.cdi_spec.exists()
            || rec
                .devices
                .iter()
                .filter(|d| !d.admin_access && !others.contains(&d.function))
                .any(|d| matches!(self.backend.allocated(&d.function), Ok(true)))
    }

    /// NodeUnprepareResources: undoes exactly what prepare recorded.
    pub async fn unprepare(&self, claims: &[ClaimRef]) -> BTreeMap<String, Result<(), ClaimError>> {
        let mut out = BTreeMap::new();
        if claims.is_empty() {
            return out;
        }
        let (_guard, mut state, batch_err) = self.begin().await;
        for claim in claims {
            let started = Instant::now();
            let checked = match &batch_err {
                Some(e) => Err(e.clone()),
                None => check_ref(claim),
            };
            let result = checked.and_then(|()| match state.0.get(&claim.uid).cloned() {
                // Never prepared here, or already released.
                None => Ok(()),
                Some(rec) => self
                    .release(&rec, &shared_by_others(&state, &claim.uid))
                    .and_then(|()| {
                        crate::failpoints::crash("unprepare/released");
                        state.0.remove(&claim.uid);
                        self.save(&state)
                            .inspect_err(|_| {
                                state.0.insert(claim.uid.clone(), rec.clone());
                            })
                            .inspect(|()| {
                                crate::failpoints::crash("unprepare/saved");
                                let _ = self.status.send(super::status::Update { claim: claim.clone() });
                            })
                    }),
            });
            match &result {
                Ok(()) => {
                    counter!(m::UNPREPARES, "result" => "success", "reason" => "none").increment(1);
                    info!(claim = %claim, "claim unprepared");
                }
                Err(e) => {
                    counter!(m::UNPREPARES, "result" => "error", "reason" => e.reason).increment(1);
                    warn!(claim = %claim, reason = e.reason, error = %e.message, "claim not unprepared");
                }
            }
            histogram!(m::UNPREPARE_SECONDS).record(started.elapsed().as_secs_f64());
            out.insert(claim.uid.clone(), result);
        }
        if batch_err.is_none() {
            self.publish(&state);
        }
        out
    }
}

fn check_ref(c: &ClaimRef) -> Result<(), ClaimError> {
    let mut empty = Vec::new();
    for (field, v) in [("namespace", &c.namespace), ("name", &c.name), ("uid", &c.uid)] {
        if v.is_empty() {
            empty.push(field);
        }
    }
    if empty.is_empty() {
        Ok(())
    } else {
        Err(ClaimError::new(
            "invalid",
            format!("the claim's {} is empty", empty.join(" and ")),
        ))
    }
}

fn find_function<'a>(inv: &'a Inventory, device: &str) -> Option<&'a Function> {
    inv.functions.values().find(|f| device_name(&f.name) == device)
}

fn unknown_device(inv: &Inventory, device: &str) -> ClaimError {
    if let Some(s) = inv.skipped.iter().find(|s| device_name(&s.name) == device) {
        return ClaimError::new(
            "unknown_device",
            format!("device {device} is on this node but unreadable: {}", s.detail),
        );
    }
    ClaimError::new(
        "unknown_device",
        format!("device {device} is not on this node (no such function in sysfs: removed?)"),
    )
}

/// The functions other claims than `uid` hold a share of (consumable
/// capacity): they stay marked allocated while one of those is prepared.
fn shared_by_others(state: &Claims, uid: &str) -> HashSet<String> {
    state
        .0
        .iter()
        .filter(|(other, _)| other.as_str() != uid)
        .flat_map(|(_, c)| c.devices.iter())
        .filter(|d| d.share_id.is_some() && !d.admin_access)
        .map(|d| d.function.clone())
        .collect()
}
