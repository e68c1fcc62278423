//! Inventory + claims → binding conditions of fabric-attached devices
//! (KEP-5007, `DRADeviceBindingConditions`, beta and on in 1.36+).
//!
//! A fabric-attached function (the module's `fabric_attach_ms`) must be
//! attached before use, which takes time and may fail. Its device is
//! published with the binding condition `FabricAttached` and the failure
//! condition `FabricAttachFailed` ([`crate::slices::device`]); the
//! scheduler, having allocated one, holds the pod in PreBind until the
//! claim's device status says one of them (and gives the allocation up on
//! a failure, or after its binding timeout).
//!
//! This task is the node's part. From the claims allocated on this node's
//! fabric-attached devices and the inventory it plans, level-triggered on
//! every event of such a claim (an index of them, [`Mine`], kept from the
//! watch: the cluster's other claims are never walked), inventory change
//! and a timer: attach what a claim
//! holds (`attach`), report the outcome in the claim's `status.devices`
//! once the module says attached or failed, and detach what no claim
//! holds any more and is not allocated.
//!
//! The claims watch (all namespaces: a claim's node is in its allocation,
//! not in a field a selector can match) starts only once the node has a
//! fabric-attached function: an agent without one neither watches claims
//! nor needs the right to.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use metrics::{counter, gauge, histogram};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::claims::ClaimRef;
use crate::claims::status::{self, DeviceKey};
use crate::claims::status::{ATTACH_FAILED_CONDITION, ATTACHED_CONDITION};
use crate::declared::spec::AttachSpec;
use crate::inventory::{Attach, Inventory};
use crate::metrics as m;
use crate::slices::device_name;

/// How the attach of an allocated device ended, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Attached,
    /// A local function (the module reloaded without fabric_attach_ms):
    /// usable as it is.
    Local,
    Failed,
    /// No such function on the node any more.
    Gone,
}

impl Outcome {
    fn condition(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Attached => (ATTACHED_CONDITION, "Attached"),
            Outcome::Local => (ATTACHED_CONDITION, "Local"),
            Outcome::Failed => (ATTACH_FAILED_CONDITION, "AttachFailed"),
            Outcome::Gone => (ATTACH_FAILED_CONDITION, "DeviceGone"),
        }
    }

    /// What the module's `attach` must read for this report to stand.
    fn state(self) -> Option<Attach> {
        match self {
            Outcome::Attached => Some(Attach::Attached),
            Outcome::Failed => Some(Attach::Failed),
            Outcome::Local | Outcome::Gone => None,
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Outcome::Attached | Outcome::Local => "attached",
            Outcome::Failed => "failed",
            Outcome::Gone => "gone",
        }
    }
}

/// A report to write: this device of this claim, this outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub claim: ClaimRef,
    pub key: DeviceKey,
    pub function: Option<String>,
    pub outcome: Outcome,
    pub waited: Duration,
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Functions to write "attach" to.
    pub attach: BTreeSet<String>,
    /// Functions to write "detach" to.
    pub detach: BTreeSet<String>,
    pub reports: Vec<Report>,
    /// Allocated fabric devices without a report yet.
    pub pending: usize,
}

/// One allocation of one device: (claim uid, allocation time, device).
/// A device given up and allocated again is a new attempt.
type AttemptKey = (String, String, String);

/// When each attempt was first seen.
#[derive(Debug, Default)]
pub struct Attempts(HashMap<AttemptKey, Instant>);

/// Plans from the claims and the inventory. `claims_listed`: the claims
/// are a complete view (the watch's first list is in), without which no
/// device can be known to be held by no claim.
pub fn plan(
    claims: &[Arc<ResourceClaim>],
    inv: &Inventory,
    driver: &str,
    node: &str,
    claims_listed: bool,
    attempts: &mut Attempts,
    now: Instant,
) -> Plan {
    let mut p = Plan::default();
    let mut held = HashSet::new();
    let mut live = HashSet::new();
    for claim in claims {
        let Some(uid) = claim.uid() else { continue };
        let allocated_at = claim
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.allocation_timestamp.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        for r in crate::claims::results(claim, driver) {
            if r.pool != node || r.binding_conditions.as_ref().is_none_or(|c| c.is_empty()) {
                continue;
            }
            let function = inv.functions.values().find(|f| device_name(&f.name) == r.device);
            if let Some(f) = function {
                held.insert(f.name.clone());
            }
            let key: DeviceKey = (r.pool.clone(), r.device.clone(), r.share_id.clone());
            if crate::claims::binding_settled(claim, r) {
                continue;
            }
            p.pending += 1;
            let attempt = (uid.clone(), allocated_at.clone(), r.device.clone());
            live.insert(attempt.clone());
            let seen = attempts.0.contains_key(&attempt);
            let started = *attempts.0.entry(attempt).or_insert(now);
            let outcome = match function.map(|f| f.attach) {
                None => Some(Outcome::Gone),
                Some(None) => Some(Outcome::Local),
                Some(Some(Attach::Attached)) => Some(Outcome::Attached),
                // A failure seen before this attempt is an earlier one's:
                // the attach starts again.
                Some(Some(Attach::Failed)) if seen => Some(Outcome::Failed),
                Some(Some(Attach::Failed | Attach::Detached)) => {
                    p.attach.insert(function.map(|f| f.name.clone()).unwrap_or_default());
                    None
                }
                Some(Some(Attach::Attaching)) => None,
            };
            if let Some(outcome) = outcome {
                p.reports.push(Report {
                    claim: ClaimRef {
                        namespace: claim.namespace().unwrap_or_default(),
                        name: claim.name_any(),
                        uid: uid.clone(),
                    },
                    key,
                    function: function.map(|f| f.name.clone()),
                    outcome,
                    waited: now.saturating_duration_since(started),
                });
            }
        }
    }
    attempts.0.retain(|k, _| live.contains(k));
    if claims_listed {
        p.detach = inv
            .functions
            .values()
            .filter(|f| matches!(f.attach, Some(Attach::Attached | Attach::Attaching | Attach::Failed)))
            .filter(|f| f.status == 0 && !held.contains(&f.name))
            .map(|f| f.name.clone())
            .collect();
    }
    p
}

pub struct Config {
    pub driver: String,
    pub node: String,
    /// The devices: attach and detach go through it.
    pub backend: Arc<dyn Backend>,
    /// Attach faults declared for the node (a DeviceScenario's `attach`).
    pub faults: watch::Receiver<AttachSpec>,
}

/// The declared attach faults between the plan and the writes: each
/// attach the plan wants waits `delay` from when it was first wanted, and
/// `failurePercent` of them (spread evenly: at 25, every 4th) have a
/// failure armed just before (the module's fail_attach).
#[derive(Debug, Default)]
pub struct AttachGate {
    /// Functions wanted attached: since when, and whether decided.
    wanted: HashMap<String, (Instant, bool)>,
    /// Attaches started so far (for the failure share).
    started: u64,
}

/// What the gate lets through now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gated {
    pub attach: BTreeSet<String>,
    /// Of those, the ones to arm a failure on first.
    pub fail: BTreeSet<String>,
    /// When a held one is due.
    pub next: Option<Instant>,
}

impl AttachGate {
    pub fn gate(&mut self, wanted: &BTreeSet<String>, faults: AttachSpec, now: Instant) -> Gated {
        self.wanted.retain(|f, _| wanted.contains(f));
        let mut g = Gated::default();
        for f in wanted {
            let (since, decided) = self.wanted.entry(f.clone()).or_insert((now, false));
            let due = *since + faults.delay;
            if now < due {
                g.next = Some(g.next.map_or(due, |n| n.min(due)));
                continue;
            }
            if !*decided {
                *decided = true;
                self.started += 1;
                let p = u64::from(faults.failure_percent.min(100));
                if self.started * p / 100 > (self.started - 1) * p / 100 {
                    g.fail.insert(f.clone());
                }
            }
            g.attach.insert(f.clone());
        }
        g
    }
}

/// Runs until cancelled. Not critical: its failures are logged and
/// counted, and planned again.
pub async fn run(
    client: Client,
    watches: Client,
    cfg: Config,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    gauge!(m::FABRIC_BINDING_PENDING).set(0.0);
    // Nothing to do, and no claims to watch, before a fabric function.
    loop {
        if inventory
            .borrow_and_update()
            .functions
            .values()
            .any(|f| f.attach.is_some())
        {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = inventory.changed() => if r.is_err() { cancel.cancelled().await; return Ok(()) },
        }
    }
    info!("fabric-attached devices on the node: reporting their binding conditions");
    let claims = watcher(Api::<ResourceClaim>::all(watches), watcher::Config::default()).default_backoff();
    follow(client, cfg, claims, inventory, cancel).await
}

/// Reports from the claims' events (this node's own watch, or a fleet's
/// shared one routed to it) until cancelled.
pub async fn follow<S>(
    client: Client,
    cfg: Config,
    claims: S,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<watcher::Event<ResourceClaim>, watcher::Error>>,
{
    let mut claims = std::pin::pin!(claims);
    let mut mine = Mine::default();
    let mut attempts = Attempts::default();
    // The retry tick, while there is something to retry: claims here, or
    // a plan left with work (a detach that failed); a fleet's idle pools
    // never wake for it.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = true;
    let mut gate = AttachGate::default();
    let mut next: Option<Instant> = None;
    loop {
        let held_until = next;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = async { match held_until {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            } } => {}
            ev = claims.next() => match ev {
                // Another node's claim (most of a cluster's): nothing to plan.
                Some(Ok(ev)) => if !mine.apply(ev, &cfg.driver, &cfg.node) { continue },
                Some(Err(e)) => {
                    counter!(m::FABRIC_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "watching ResourceClaims failed; it resumes with backoff");
                    continue;
                }
                None => { cancel.cancelled().await; return Ok(()) }
            },
            r = inventory.changed() => if r.is_err() { cancel.cancelled().await; return Ok(()) },
            _ = tick.tick(), if work || !mine.claims.is_empty() => {}
        }
        let inv = inventory.borrow().clone();
        let listed = mine.listed;
        let p = plan(
            &mine.claims(),
            &inv,
            &cfg.driver,
            &cfg.node,
            listed,
            &mut attempts,
            Instant::now(),
        );
        gauge!(m::FABRIC_BINDING_PENDING).set(p.pending as f64);
        work = p.pending > 0 || !p.attach.is_empty() || !p.detach.is_empty();
        let faults = *cfg.faults.borrow();
        let g = gate.gate(&p.attach, faults, Instant::now());
        next = g.next;
        for f in &g.fail {
            match cfg.backend.fail_attaches(f, 1) {
                Ok(()) => info!(function = %f, percent = faults.failure_percent, "a declared attach failure armed"),
                Err(e) => warn!(function = %f, error = %e, "could not arm a declared attach failure"),
            }
        }
        carry_out(&client, &cfg, Plan { attach: g.attach, ..p }).await;
    }
}

/// The claims holding a device of this driver on this node, kept from
/// the watch's events: a plan walks these, not the cluster's every claim
/// (5000 claims elsewhere cost each event one look at its claim, not a
/// walk over all of them).
#[derive(Default)]
struct Mine {
    claims: HashMap<String, Arc<ResourceClaim>>,
    relist: Option<HashMap<String, Arc<ResourceClaim>>>,
    /// The first list is in.
    listed: bool,
}

impl Mine {
    fn ours(claim: &ResourceClaim, driver: &str, node: &str) -> bool {
        crate::claims::results(claim, driver).any(|r| r.pool == node)
    }

    /// Applies a watch event; says whether a plan may change.
    fn apply(&mut self, ev: watcher::Event<ResourceClaim>, driver: &str, node: &str) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(c) => {
                if let (Some(r), Some(uid)) = (self.relist.as_mut(), c.uid())
                    && Self::ours(&c, driver, node)
                {
                    r.insert(uid, Arc::new(c));
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.claims = r;
                }
                self.listed = true;
                true
            }
            watcher::Event::Apply(c) => {
                let Some(uid) = c.uid() else { return false };
                if Self::ours(&c, driver, node) {
                    self.claims.insert(uid, Arc::new(c));
                    true
                } else {
                    self.claims.remove(&uid).is_some()
                }
            }
            watcher::Event::Delete(c) => c.uid().is_some_and(|uid| self.claims.remove(&uid).is_some()),
        }
    }

    fn claims(&self) -> Vec<Arc<ResourceClaim>> {
        self.claims.values().cloned().collect()
    }
}

async fn carry_out(client: &Client, cfg: &Config, p: Plan) {
    for (functions, op) in [(&p.attach, "attach"), (&p.detach, "detach")] {
        for f in functions {
            match cfg.backend.set_attached(f, op == "attach") {
                Ok(()) => info!(function = %f, op, "fabric"),
                Err(e) => {
                    counter!(m::FABRIC_ERRORS, "kind" => cfg.backend.kind()).increment(1);
                    warn!(function = %f, op, error = %e, "could not write the function's attach");
                }
            }
        }
    }
    for r in p.reports {
        // The inventory may not have caught up with a write of ours (a
        // detach, then the device allocated again at once): the module's
        // word, read now, is what gets reported.
        if let (Some(f), Some(state)) = (&r.function, r.outcome.state())
            && cfg.backend.attach_state(f).ok().flatten() != Some(state)
        {
            continue;
        }
        let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &r.claim.namespace);
        let (type_, reason) = r.outcome.condition();
        let function = r.function.clone().unwrap_or_else(|| r.key.1.clone());
        let message = match r.outcome {
            Outcome::Attached => format!(
                "{function} attached through the fabric to node {} ({:.1} s after the allocation was seen)",
                cfg.node,
                r.waited.as_secs_f64()
            ),
            Outcome::Local => format!("{function} is local to node {}: no attach needed", cfg.node),
            Outcome::Failed => format!("the fabric attach of {function} to node {} failed", cfg.node),
            Outcome::Gone => format!("device {} is no longer on node {}", r.key.1, cfg.node),
        };
        let written = status::write_devices(&api, &r.claim, |claim| {
            let mut devices = claim
                .status
                .as_ref()
                .and_then(|s| s.devices.clone())
                .unwrap_or_default();
            // Only a device the allocation still holds can carry a status.
            if crate::claims::results(claim, &cfg.driver)
                .any(|a| (&a.pool, &a.device, &a.share_id) == (&r.key.0, &r.key.1, &r.key.2))
            {
                let c = status::condition(claim, type_, reason, message.clone());
                status::set_condition(&mut devices, &cfg.driver, &r.key, type_, Some(c));
            }
            Ok(devices)
        })
        .await;
        match written {
            Ok(true) => {
                counter!(m::FABRIC_ATTACHES, "result" => r.outcome.metric()).increment(1);
                histogram!(m::FABRIC_ATTACH_SECONDS).record(r.waited.as_secs_f64());
                info!(claim = %r.claim, device = %r.key.1, condition = type_, reason, "binding condition reported");
            }
            Ok(false) => {}
            Err(e) => {
                counter!(m::FABRIC_ERRORS, "kind" => "status").increment(1);
                warn!(claim = %r.claim, device = %r.key.1, error = %e, "could not report the binding condition");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Function;
    use serde_json::json;
    use std::fs;

    const D: &str = "mock-accel.example.com";

    fn function(name: &str, attach: Option<Attach>, status: u32) -> Function {
        Function {
            attach,
            status,
            ..crate::inventory::testing::function(name)
        }
    }

    fn inventory(fs: Vec<Function>) -> Inventory {
        Inventory {
            functions: fs.into_iter().map(|f| (f.name.clone(), f)).collect(),
            skipped: vec![],
            scanned: true,
        }
    }

    fn claim(uid: &str, at: &str, device: &str, conditions: serde_json::Value) -> Arc<ResourceClaim> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": format!("c-{uid}"), "namespace": "ns", "uid": uid},
                "spec": {},
                "status": {
                    "allocation": {
                        "allocationTimestamp": (!at.is_empty()).then_some(at),
                        "devices": {"results": [{
                            "request": "r", "driver": D, "pool": "node-a", "device": device,
                            "bindingConditions": [ATTACHED_CONDITION],
                            "bindingFailureConditions": [ATTACH_FAILED_CONDITION]}]}},
                    "devices": [{"driver": D, "pool": "node-a", "device": device, "conditions": conditions}]
                }
            }))
            .unwrap(),
        )
    }

    /// Only events of this node's claims reach a plan; a claim that stops
    /// being this node's leaves the index (and plans once more); a relist
    /// replaces it.
    #[test]
    fn only_this_nodes_claims_are_indexed_and_planned() {
        let ours = |uid: &str| (*claim(uid, "", "mock1", json!([]))).clone();
        let elsewhere = |uid: &str| {
            let mut c = ours(uid);
            let results = &mut c
                .status
                .as_mut()
                .unwrap()
                .allocation
                .as_mut()
                .unwrap()
                .devices
                .as_mut()
                .unwrap()
                .results;
            results.as_mut().unwrap()[0].pool = "node-b".into();
            c
        };
        let unallocated = |uid: &str| {
            let mut c = ours(uid);
            c.status = None;
            c
        };
        let mut mine = Mine::default();
        assert!(!mine.apply(watcher::Event::Init, D, "node-a"));
        assert!(!mine.apply(watcher::Event::InitApply(ours("1")), D, "node-a"));
        assert!(!mine.apply(watcher::Event::InitApply(elsewhere("2")), D, "node-a"));
        assert!(!mine.listed);
        assert!(mine.apply(watcher::Event::InitDone, D, "node-a"));
        assert!(mine.listed);
        assert_eq!(mine.claims().len(), 1);
        // Another node's claim changing, a claim nobody holds: no plan.
        assert!(!mine.apply(watcher::Event::Apply(elsewhere("2")), D, "node-a"));
        assert!(!mine.apply(watcher::Event::Apply(unallocated("3")), D, "node-a"));
        assert!(!mine.apply(watcher::Event::Delete(elsewhere("2")), D, "node-a"));
        // Ours: added, changed, deallocated (leaves, planned once more).
        assert!(mine.apply(watcher::Event::Apply(ours("4")), D, "node-a"));
        assert_eq!(mine.claims().len(), 2);
        assert!(mine.apply(watcher::Event::Apply(unallocated("4")), D, "node-a"));
        assert_eq!(mine.claims().len(), 1);
        assert!(mine.apply(watcher::Event::Delete(ours("1")), D, "node-a"));
        assert!(mine.claims().is_empty());
        // A relist is the truth.
        mine.apply(watcher::Event::Apply(ours("5")), D, "node-a");
        mine.apply(watcher::Event::Init, D, "node-a");
        mine.apply(watcher::Event::InitApply(ours("6")), D, "node-a");
        assert!(mine.apply(watcher::Event::InitDone, D, "node-a"));
        let uids: Vec<String> = mine.claims().iter().filter_map(|c| c.uid()).collect();
        assert_eq!(uids, ["6"]);
    }

    fn outcomes(p: &Plan) -> Vec<(&str, Outcome)> {
        p.reports.iter().map(|r| (r.key.1.as_str(), r.outcome)).collect()
    }

    #[test]
    fn an_allocated_device_is_attached_then_reported_and_detached_once_free() {
        let mut attempts = Attempts::default();
        let t0 = Instant::now();
        let c = claim("u1", "2026-12-02T07:00:00Z", "mock1", json!([]));
        let run = |claims: &[Arc<ResourceClaim>], fs, attempts: &mut Attempts, t| {
            plan(claims, &inventory(fs), D, "node-a", true, attempts, t)
        };
        // Detached: attach it; nothing to report yet.
        let p = run(
            std::slice::from_ref(&c),
            vec![function("mock1", Some(Attach::Detached), 0)],
            &mut attempts,
            t0,
        );
        assert_eq!(p.attach, BTreeSet::from(["mock1".to_string()]));
        assert!(p.reports.is_empty() && p.detach.is_empty());
        assert_eq!(p.pending, 1);
        // Attaching: wait.
        let p = run(
            std::slice::from_ref(&c),
            vec![function("mock1", Some(Attach::Attaching), 0)],
            &mut attempts,
            t0,
        );
        assert_eq!(
            p,
            Plan {
                pending: 1,
                ..Default::default()
            }
        );
        // Attached: report, with the wait since first seen.
        let t1 = t0 + Duration::from_millis(1500);
        let p = run(
            std::slice::from_ref(&c),
            vec![function("mock1", Some(Attach::Attached), 0)],
            &mut attempts,
            t1,
        );
        assert_eq!(outcomes(&p), [("mock1", Outcome::Attached)]);
        assert_eq!(p.reports[0].waited, Duration::from_millis(1500));
        assert_eq!(p.reports[0].claim.namespace, "ns");
        // Reported: nothing more, and the device stays while the claim holds it.
        let done = claim(
            "u1",
            "2026-12-02T07:00:00Z",
            "mock1",
            json!([{"type": ATTACHED_CONDITION, "status": "True", "reason": "Attached", "message": "", "lastTransitionTime": "2026-12-02T07:00:02Z"}]),
        );
        let p = run(
            &[done],
            vec![function("mock1", Some(Attach::Attached), 1)],
            &mut attempts,
            t1,
        );
        assert_eq!(p, Plan::default());
        // The claim is gone, the device released: detach it. Not while
        // allocated, and not before the claims are listed.
        let p = run(
            &[],
            vec![function("mock1", Some(Attach::Attached), 1)],
            &mut attempts,
            t1,
        );
        assert!(p.detach.is_empty());
        let p = run(
            &[],
            vec![function("mock1", Some(Attach::Attached), 0)],
            &mut attempts,
            t1,
        );
        assert_eq!(p.detach, BTreeSet::from(["mock1".to_string()]));
        let p = plan(
            &[],
            &inventory(vec![function("mock1", Some(Attach::Attached), 0)]),
            D,
            "node-a",
            false,
            &mut attempts,
            t1,
        );
        assert!(p.detach.is_empty());
    }

    #[test]
    fn a_failure_of_this_attempt_is_reported_an_earlier_one_retried() {
        let mut attempts = Attempts::default();
        let t = Instant::now();
        let failed = || inventory(vec![function("mock2", Some(Attach::Failed), 0)]);
        // Failed before this allocation was seen: attach again.
        let c = claim("u2", "2026-12-02T07:00:00Z", "mock2", json!([]));
        let p = plan(std::slice::from_ref(&c), &failed(), D, "node-a", true, &mut attempts, t);
        assert_eq!(p.attach, BTreeSet::from(["mock2".to_string()]));
        assert!(p.reports.is_empty());
        // Failed again, during this attempt: report it.
        let p = plan(&[c], &failed(), D, "node-a", true, &mut attempts, t);
        assert_eq!(outcomes(&p), [("mock2", Outcome::Failed)]);
        // The scheduler gives the allocation up and makes a new one: a new attempt.
        let again = claim("u2", "2026-12-02T07:00:03Z", "mock2", json!([]));
        let p = plan(&[again], &failed(), D, "node-a", true, &mut attempts, t);
        assert_eq!(p.attach, BTreeSet::from(["mock2".to_string()]));
        assert!(p.reports.is_empty());
        assert_eq!(attempts.0.len(), 1, "the old attempt is forgotten");
    }

    #[test]
    fn gone_local_and_foreign_devices() {
        let mut attempts = Attempts::default();
        let t = Instant::now();
        let claims = [claim("u3", "", "mock3", json!([])), claim("u4", "", "mock4", json!([]))];
        let inv = inventory(vec![
            function("mock4", None, 0),
            function("mock5", Some(Attach::Attaching), 0),
            function("mock6", Some(Attach::Detached), 0),
        ]);
        let p = plan(&claims, &inv, D, "node-a", true, &mut attempts, t);
        assert_eq!(outcomes(&p), [("mock3", Outcome::Gone), ("mock4", Outcome::Local)]);
        // An attach nobody holds is undone; a detached function is left alone.
        assert_eq!(p.detach, BTreeSet::from(["mock5".to_string()]));
        // Another node's claims and another driver's results are not ours.
        let p = plan(&claims, &inv, D, "node-b", true, &mut attempts, t);
        assert_eq!(p.reports.len(), 0);
        let p = plan(&claims, &inv, "other.example.com", "node-a", true, &mut attempts, t);
        assert_eq!(p.reports.len(), 0);
    }

    /// The report path against an API server: a report the module does not
    /// back (the inventory behind a detach) is not written; one it backs
    /// is, beside the plugin's Ready, and only once.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_report_is_written_only_when_the_module_says_so() {
        use mock_device_testkit::apiserver::{ApiServer, Config as ServerConfig};
        let server = ApiServer::start(ServerConfig::default()).unwrap();
        let client = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
        let claim = crate::claims::status::testing::claim_with_status(
            &api,
            json!({
                "allocation": {"devices": {"results": [{"request": "r", "driver": D, "pool": "node-a", "device": "mock1",
                    "bindingConditions": [ATTACHED_CONDITION], "bindingFailureConditions": [ATTACH_FAILED_CONDITION]}]}},
                "devices": [{"driver": D, "pool": "node-a", "device": "mock1", "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Prepared", "message": "", "lastTransitionTime": "2026-12-02T07:00:00Z"}]}]}),
        )
        .await;
        let sysfs = tempfile::tempdir().unwrap();
        fs::create_dir(sysfs.path().join("mock1")).unwrap();
        fs::write(sysfs.path().join("mock1/attach"), "detached\n").unwrap();
        let cfg = Config {
            driver: D.into(),
            node: "node-a".into(),
            backend: Arc::new(crate::backend::sysfs::Sysfs::new(sysfs.path())),
            faults: watch::channel(AttachSpec::default()).1,
        };
        let report = || Plan {
            reports: vec![Report {
                claim: claim.clone(),
                key: ("node-a".into(), "mock1".into(), None),
                function: Some("mock1".into()),
                outcome: Outcome::Attached,
                waited: Duration::from_secs(2),
            }],
            ..Default::default()
        };
        let conditions = || async {
            let c = api.get("c").await.unwrap();
            c.status.unwrap().devices.unwrap()[0]
                .conditions
                .clone()
                .unwrap()
                .into_iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>()
        };
        carry_out(&client, &cfg, report()).await;
        assert_eq!(
            conditions().await,
            ["Ready=True"],
            "the module says detached: nothing reported"
        );
        fs::write(sysfs.path().join("mock1/attach"), "attached\n").unwrap();
        carry_out(&client, &cfg, report()).await;
        assert_eq!(conditions().await, ["Ready=True", "FabricAttached=True"]);
        let version = api.get("c").await.unwrap().resource_version();
        carry_out(&client, &cfg, report()).await;
        assert_eq!(api.get("c").await.unwrap().resource_version(), version, "said once");
    }

    #[test]
    fn the_attach_gate_delays_and_fails_its_share_evenly() {
        let t0 = Instant::now();
        let wanted = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let mut gate = AttachGate::default();
        let faults = AttachSpec {
            delay: Duration::from_secs(2),
            failure_percent: 50,
        };
        let g = gate.gate(&wanted(&["mock1", "mock2"]), faults, t0);
        assert!(g.attach.is_empty());
        assert_eq!(g.next, Some(t0 + Duration::from_secs(2)));
        // mock3 wanted later: its own delay.
        let g = gate.gate(
            &wanted(&["mock1", "mock2", "mock3"]),
            faults,
            t0 + Duration::from_secs(1),
        );
        assert!(g.attach.is_empty());
        let g = gate.gate(
            &wanted(&["mock1", "mock2", "mock3"]),
            faults,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(g.attach, wanted(&["mock1", "mock2"]));
        assert_eq!(g.fail.len(), 1, "half of two: {g:?}");
        assert_eq!(g.next, Some(t0 + Duration::from_secs(3)));
        // Asked again (the inventory not caught up): not decided twice.
        let g = gate.gate(
            &wanted(&["mock1", "mock2", "mock3"]),
            faults,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(g.attach.len(), 3);
        assert!(g.fail.is_empty(), "mock3 is the 3rd: 3*50/100 = 1 = 2*50/100: {g:?}");
        // No faults: everything at once, nothing failed.
        let mut plain = AttachGate::default();
        let g = plain.gate(&wanted(&["mock1"]), AttachSpec::default(), t0);
        assert_eq!((g.attach, g.fail, g.next), (wanted(&["mock1"]), BTreeSet::new(), None));
    }
}
