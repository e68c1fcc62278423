//! Leader election on a `coordination.k8s.io/v1` Lease, by client-go's
//! algorithm (`tools/leaderelection`): read the Lease; take it when it is
//! free or its holder has not renewed it for a whole lease duration (as
//! measured by our own clock since we last saw it change, so clock skew
//! between nodes does not matter); renew it every retry period; write it
//! only with the resourceVersion we read, so of two candidates racing for
//! it exactly one wins (the other gets 409). A leader that cannot renew
//! within the renew deadline steps down before anyone else can take over.
//!
//! (kube-lease-manager was considered: its safety rests on server-side
//! apply field ownership; this one only needs optimistic concurrency.)

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use metrics::{counter, gauge};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics as m;

/// Timings, as client-go's `LeaderElectionConfig`.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (< lease_duration).
    pub renew_deadline: Duration,
    /// How often to try to take or renew the Lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub timing: Timing,
}

/// What we last saw of the Lease, and when (our clock).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

enum Attempt {
    Leader,
    Follower(Option<String>),
}

impl Elector {
    /// Runs until cancelled, publishing whether we lead. On cancel a leader
    /// hands the Lease back at once, so a standby takes over without waiting
    /// for it to expire.
    pub async fn run(self, leading: watch::Sender<bool>, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut observed: Option<Observed> = None;
        let mut last_renew = Instant::now();
        gauge!(m::CONTROLLER_LEADER).set(0.0);
        // The Lease goes with the controller's ServiceAccount (helm uninstall).
        let mut owner = crate::api::LeaseOwner::new(self.api.clone().into_client(), self.api.namespace());
        loop {
            let is_leader = *leading.borrow();
            // As client-go: a leader's renewal gives up at the renew
            // deadline whatever its request is doing (it may hang on a dead
            // connection); it must not lead on while a standby takes over.
            let budget = if is_leader {
                self.timing.renew_deadline.saturating_sub(last_renew.elapsed())
            } else {
                self.timing.renew_deadline
            };
            let attempt = tokio::select! {
                _ = cancel.cancelled() => break,
                a = tokio::time::timeout(budget, async {
                    let owner = owner.get().await;
                    self.attempt(&mut observed, owner.as_ref()).await
                }) => a,
            };
            let Ok(attempt) = attempt else {
                counter!(m::CONTROLLER_API_ERRORS, "op" => "lease", "kind" => "timeout").increment(1);
                if is_leader {
                    warn!(lease = %self.name, deadline = ?self.timing.renew_deadline, "renewing the lease did not finish within the renew deadline; stepping down");
                    self.step_down(&leading);
                } else {
                    debug!(lease = %self.name, "lease request timed out; retrying");
                }
                continue;
            };
            match attempt {
                Ok(Attempt::Leader) => {
                    last_renew = Instant::now();
                    if !is_leader {
                        info!(lease = %self.name, identity = %self.identity, "became the leader");
                        counter!(m::CONTROLLER_LEADER_TRANSITIONS).increment(1);
                        gauge!(m::CONTROLLER_LEADER).set(1.0);
                        leading.send_replace(true);
                    }
                }
                Ok(Attempt::Follower(holder)) => {
                    if is_leader {
                        warn!(lease = %self.name, holder = ?holder, "lost the lease to another instance; stepping down");
                        self.step_down(&leading);
                    } else {
                        debug!(lease = %self.name, holder = ?holder, "standing by");
                    }
                }
                Err(e) => {
                    counter!(m::CONTROLLER_API_ERRORS, "op" => "lease", "kind" => m::api_error_kind(&e)).increment(1);
                    if is_leader && last_renew.elapsed() >= self.timing.renew_deadline {
                        warn!(lease = %self.name, error = %e, "could not renew the lease within the renew deadline; stepping down");
                        self.step_down(&leading);
                    } else {
                        debug!(lease = %self.name, error = %e, "lease request failed; retrying");
                    }
                }
            }
            // client-go waits the retry period with jitter 1.2 between tries.
            let jitter = self.timing.retry_period.mul_f64(0.2 * fastrand_unit());
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.timing.retry_period + jitter) => {}
            }
        }
        if *leading.borrow() {
            self.step_down(&leading);
            if let Err(e) = self.release().await {
                warn!(lease = %self.name, error = %e, "could not hand the lease back; it expires by itself");
            } else {
                info!(lease = %self.name, "handed the lease back");
            }
        }
        Ok(())
    }

    fn step_down(&self, leading: &watch::Sender<bool>) {
        gauge!(m::CONTROLLER_LEADER).set(0.0);
        counter!(m::CONTROLLER_LEADER_TRANSITIONS).increment(1);
        leading.send_replace(false);
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn attempt(
        &self,
        observed: &mut Option<Observed>,
        owner: Option<&OwnerReference>,
    ) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leader),
                // Another candidate created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        // Expiry by our clock: since we last saw the record change.
        let changed = match observed {
            Some(o) => o.holder != holder || o.renew != spec.renew_time,
            None => true,
        };
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let seen = observed.as_ref().expect("set above");
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() && seen.at.elapsed() < duration {
            return Ok(Attempt::Follower(holder));
        }
        let transitions = spec
            .lease_transitions
            .unwrap_or(0)
            .saturating_add(if ours { 0 } else { 1 });
        let acquire = if ours { spec.acquire_time.clone() } else { None };
        lease.spec = Some(self.spec(now, acquire, transitions));
        crate::api::add_owner(&mut lease.metadata, owner);
        // Our resourceVersion rides along: a concurrent writer makes this 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leader),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Follower(holder)),
            Err(e) => Err(e),
        }
    }

    /// As client-go's ReleaseOnCancel: empty holder, 1 s duration.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        self.api.replace(&self.name, &PostParams::default(), &lease).await?;
        Ok(())
    }
}

/// A number in [0, 1) good enough for jitter, without a PRNG dependency.
fn fastrand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 1000) as f64 / 1000.0
}

/// This instance's identity: the pod name (or host name) and a random part,
/// so a restarted pod never mistakes the old holder for itself.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "controller".into());
    let random = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), fastrand_unit()));
    format!("{host}_{random}")
}
