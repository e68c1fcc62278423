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

use super::apply::Devices;
use super::checkpoint::{self, Checkpoint, ClaimState, Claims, PreparedClaim, PreparedDevice};
pub use super::resolve::ClaimError;
use super::resolve::{self, check_ref};
use super::{cdi, policy};
use crate::backend::Backend;
use crate::claims::ClaimRef;
use crate::inventory::Inventory;
use crate::metrics as m;

/// How long a prepare waits for the first scan of the devices.
const FIRST_SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// A temporary file of [`cdi::write_atomic`] this old is no live writer's
/// (a write takes milliseconds): its writer was killed before the rename.
const TEMPORARY_FILE_AGE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    pub driver: String,
    pub node: String,
    pub cdi_root: PathBuf,
    pub plugin_dir: PathBuf,
    pub boot_id_path: PathBuf,
    /// Serialise with other pods of this driver on the node (rolling update).
    pub cross_pod_lock: bool,
    /// Write each request's device metadata and mount it (KEP-5304).
    pub device_metadata: bool,
}

pub struct Driver {
    cfg: Config,
    /// The devices and the CDI directory, as claims change them.
    devices: Devices,
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
        let devices = Devices {
            backend,
            driver: cfg.driver.clone(),
            cdi_root: cfg.cdi_root.clone(),
            metadata_root: cfg
                .device_metadata
                .then(|| cfg.plugin_dir.join(super::metadata::SUBDIR)),
        };
        Driver {
            status,
            cfg,
            devices,
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
            return self.complete(state, claim, rec, &inv, boot);
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
        let here = resolve::Here {
            driver: &self.cfg.driver,
            node: &self.cfg.node,
            cdi_root: &self.cfg.cdi_root,
        };
        let rec = resolve::resolve(&here, claim, &api_claim, &inv, boot)?;
        policy::check_exclusive(claim, &rec.devices, state)?;
        self.devices.check_free(claim, &rec.devices, state)?;
        // Record first: a crash from here on is completed or undone later.
        state.0.insert(claim.uid.clone(), rec.clone());
        if let Err(e) = self.save(state) {
            state.0.remove(&claim.uid);
            return Err(e);
        }
        crate::failpoints::crash("prepare/recorded");
        let done = self.devices.apply(&claim.uid, &rec, &inv).and_then(|()| {
            crate::failpoints::crash("prepare/applied");
            let completed = PreparedClaim {
                state: ClaimState::PrepareCompleted,
                ..rec.clone()
            };
            state.0.insert(claim.uid.clone(), completed);
            self.save(state)
        });
        if let Err(e) = done {
            return Err(self.undo(state, claim, rec, e));
        }
        crate::failpoints::crash("prepare/completed");
        Ok(rec.devices)
    }

    /// A claim prepared before: again (a kubelet restart), after a crash
    /// half-way, or after a reboot or module reload: everything made true again.
    fn complete(
        &self,
        state: &mut Claims,
        claim: &ClaimRef,
        rec: PreparedClaim,
        inv: &Inventory,
        boot: &str,
    ) -> Result<Vec<PreparedDevice>, ClaimError> {
        if rec.namespace != claim.namespace || rec.name != claim.name {
            return Err(ClaimError::new(
                "uid_mismatch",
                format!(
                    "claim UID {} is prepared as {}/{}, not {}/{}",
                    claim.uid, rec.namespace, rec.name, claim.namespace, claim.name
                ),
            ));
        }
        let spec_there = rec.cdi_spec.exists();
        if rec.state == ClaimState::PrepareCompleted && rec.boot_id == boot && spec_there {
            debug!(claim = %claim, "already prepared");
        } else {
            info!(claim = %claim, state = ?rec.state, same_boot = rec.boot_id == boot, spec_there, "completing an earlier preparation");
        }
        self.devices.apply(&claim.uid, &rec, inv)?;
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
        Ok(devices)
    }

    /// Undoes a preparation that failed with `e`; the claim was never
    /// prepared. What cannot be undone stays recorded, as a preparation
    /// begun: the kubelet's next prepare of the claim completes it, its
    /// unprepare releases it. Dropping the record would leave `status=1`
    /// (or a CDI spec) owned by no claim.
    fn undo(&self, state: &mut Claims, claim: &ClaimRef, rec: PreparedClaim, e: ClaimError) -> ClaimError {
        let others = policy::shared_by_others(state, &claim.uid);
        if let Err(undo) = self.devices.release(&rec, &others)
            && self.devices.holds_anything(&rec, &others)
        {
            state.0.insert(claim.uid.clone(), rec);
            let kept = self.save(state);
            warn!(claim = %claim, error = %undo.message, kept = kept.is_ok(), "could not undo a failed preparation; it stays in the checkpoint");
            return ClaimError::new(
                e.reason,
                format!(
                    "{}; undoing it failed too ({}): the claim stays recorded and is released at its unprepare",
                    e.message, undo.message
                ),
            );
        }
        state.0.remove(&claim.uid);
        if let Err(save) = self.save(state) {
            warn!(claim = %claim, error = %save.message, "could not drop the failed claim from the checkpoint");
        }
        e
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
                    .devices
                    .release(&rec, &policy::shared_by_others(&state, &claim.uid))
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
