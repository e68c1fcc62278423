//! Inventory → ResourceSlices in the API. Watches this node's slices of
//! this driver (so slices deleted behind our back, e.g. by a starting
//! kubelet, come back) and this node's Node (the slices' owner: a Node
//! deleted and created again gets them under its new uid), plans the fewest writes (`slices::plan`), retries
//! failures with backoff, and never gives up because the API is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admin::Health;
use crate::api::Clients;
use crate::events::Snapshot;
use crate::inventory::Inventory;
use crate::metrics as m;
use crate::slices::{self, Content, Publisher, TaintEffect, Write};
use crate::turn::Turn;

fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

fn rv(s: &ResourceSlice) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// This node's Node uid (the slices' owner), as its watch shows it: a Node
/// deleted and created again has a new one, and slices owned by the old
/// one are garbage to the collector and to the controller.
#[derive(Default)]
struct NodeUid {
    uid: Option<String>,
    relisted: Option<Option<String>>,
}

impl NodeUid {
    /// Applies a watch event; says whether the uid changed.
    fn apply(&mut self, node: &str, event: watcher::Event<Node>) -> bool {
        let before = self.uid.clone();
        match event {
            watcher::Event::Init => self.relisted = Some(None),
            watcher::Event::InitApply(n) => {
                if let Some(r) = self.relisted.as_mut() {
                    *r = n.uid();
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relisted.take() {
                    self.uid = r;
                }
            }
            watcher::Event::Apply(n) => self.uid = n.uid(),
            watcher::Event::Delete(_) => self.uid = None,
        }
        if self.uid == before {
            return false;
        }
        match (&before, &self.uid) {
            (None, Some(uid)) => info!(node, %uid, "this node's Node object is there"),
            (Some(old), Some(uid)) => {
                warn!(node, %old, %uid, "this node's Node object was deleted and created again: our slices move to the new one")
            }
            (Some(_), None) => {
                warn!(
                    node,
                    "this node's Node object is gone: nothing is published until it is back"
                )
            }
            (None, None) => {}
        }
        true
    }
}

/// What the API holds of our slices: the watch's view, corrected by our
/// own writes the watch has not shown yet.
#[derive(Default)]
struct View {
    watched: BTreeMap<String, ResourceSlice>,
    relist: Option<BTreeMap<String, ResourceSlice>>,
    written: BTreeMap<String, ResourceSlice>,
    /// Deleted by us, with the delete's resourceVersion lower bound.
    deleted: BTreeMap<String, u64>,
}

impl View {
    fn apply(&mut self, event: watcher::Event<ResourceSlice>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(s) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(s.name_any(), s);
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.watched = r;
                }
                // The relist is the truth: what we wrote before it is in it, what
                // we write after comes as later events. A create it does not show
                // yet is answered 409 and re-read.
                self.written.clear();
                self.deleted.clear();
            }
            watcher::Event::Apply(s) => {
                let name = s.name_any();
                if self.written.get(&name).is_some_and(|w| rv(w) <= rv(&s)) {
                    self.written.remove(&name);
                }
                if self.deleted.get(&name).is_some_and(|d| *d < rv(&s)) {
                    self.deleted.remove(&name);
                }
                self.watched.insert(name, s);
            }
            watcher::Event::Delete(s) => {
                let name = s.name_any();
                if self.written.get(&name).is_some_and(|w| rv(w) <= rv(&s)) {
                    self.written.remove(&name);
                }
                self.deleted.remove(&name);
                self.watched.remove(&name);
            }
        }
    }

    fn current(&self) -> BTreeMap<String, ResourceSlice> {
        let mut view = self.watched.clone();
        for (name, w) in &self.written {
            if view.get(name).is_none_or(|s| rv(s) < rv(w)) {
                view.insert(name.clone(), w.clone());
            }
        }
        for name in self.deleted.keys() {
            view.remove(name);
        }
        view
    }
}

pub struct Config {
    pub driver: String,
    pub node: String,
    pub max_devices: usize,
    /// Shared counters for PF/VF exclusion, unless the cluster drops them.
    pub counters: bool,
    /// The effect of a failed device's taint (off: no health taints).
    pub taints: TaintEffect,
    /// PFs shared by memory (consumable capacity), unless the cluster
    /// drops the fields.
    pub shared: bool,
    /// One publisher per node (see `turn`): taken before the first write,
    /// given up for good to a newer agent pod.
    pub turn: Turn,
}

/// Runs until cancelled.
pub async fn run(
    clients: Clients,
    cfg: Config,
    mut snapshots: mpsc::UnboundedReceiver<Snapshot>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    gauge!(m::PUBLISHER).set(0.0);
    let Some(held) = cfg.turn.take(&cancel).await? else {
        return Ok(());
    };
    gauge!(m::PUBLISHER).set(1.0);
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let nodes: Api<Node> = Api::all(clients.watches.clone());
    let api: Api<ResourceSlice> = Api::all(clients.requests);
    let mut publisher = Publisher {
        driver: cfg.driver.clone(),
        node: cfg.node.clone(),
        node_uid: String::new(),
        max_devices: cfg.max_devices,
        counters: cfg.counters,
        taints: cfg.taints,
        shared: cfg.shared,
    };
    gauge!(m::SHARED_COUNTERS).set(if cfg.counters { 1.0 } else { 0.0 });
    gauge!(m::HEALTH_TAINTS).set(if cfg.taints == TaintEffect::Off { 0.0 } else { 1.0 });
    gauge!(m::CONSUMABLE_CAPACITY).set(if cfg.shared { 1.0 } else { 0.0 });
    info!(node = %cfg.node, driver = %cfg.driver, "publishing this node's pool");
    let mut node_watch = watcher(
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={}", cfg.node)),
    )
    .default_backoff()
    .boxed();
    let mut node_uid = NodeUid::default();

    let mut watch = watcher(
        Api::<ResourceSlice>::all(clients.watches),
        watcher::Config::default().fields(&publisher.field_selector()),
    )
    .default_backoff()
    .boxed();
    let mut view = View::default();
    let mut synced = false;
    let mut inventory: Option<Arc<Inventory>> = None;
    let mut pending_since: Option<(Instant, bool)> = None;
    let mut generation = 0i64;
    let mut delays = backoff();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut damper = crate::flapping::Damper::default();
    gauge!(m::HEALTH_FLAPPING).set(0.0);
    let mut hold_ends: Option<tokio::time::Instant> = None;

    let mut ticked = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            snap = snapshots.recv() => {
                let Some(mut snap) = snap else { return Ok(()) };
                // Take the newest inventory; remember the oldest event not yet published.
                loop {
                    let this = snap.first_event.map(|t| (t, snap.kernel_clock));
                    pending_since = [pending_since, this].into_iter().flatten().min_by_key(|(t, _)| *t);
                    match snapshots.try_recv() {
                        Ok(newer) => snap = newer,
                        Err(_) => break,
                    }
                }
                inventory = Some(snap.inventory);
            }
            event = watch.next() => match event {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) {
                        synced = true;
                    }
                    view.apply(event);
                    // Drain what else arrived, then plan once.
                    while let Some(Some(Ok(more))) = futures::FutureExt::now_or_never(watch.next()) {
                        if matches!(more, watcher::Event::InitDone) {
                            synced = true;
                        }
                        view.apply(more);
                    }
                }
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "watch of our ResourceSlices failed; it retries with backoff");
                    continue;
                }
                None => return Ok(()),
            },
            event = node_watch.next() => match event {
                Some(Ok(event)) => {
                    // Not ready while there is nothing to own our slices.
                    if node_uid.apply(&cfg.node, event) && node_uid.uid.is_none() {
                        health.ready.store(false, Ordering::SeqCst);
                    }
                }
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "watch of this node's Node object failed; it retries with backoff");
                    continue;
                }
                None => return Ok(()),
            },
            _ = async { tokio::time::sleep_until(retry_at.unwrap()).await }, if retry_at.is_some() => {
                retry_at = None;
            }
            // A flapping device's hold may end: plan again.
            _ = async { tokio::time::sleep_until(hold_ends.unwrap()).await }, if hold_ends.is_some() => {
                hold_ends = None;
            }
            _ = check.tick() => ticked = true,
        }
        if let Some(newer) = held.superseded() {
            info!(%newer, "a newer agent pod on this node asked to publish: stepping aside for good (this one goes on serving the kubelet)");
            gauge!(m::PUBLISHER).set(0.0);
            drop(held);
            cancel.cancelled().await;
            return Ok(());
        }
        // Only the turn to check: nothing else changed.
        if std::mem::take(&mut ticked) {
            continue;
        }
        let (Some(inv), true, Some(uid)) = (inventory.as_ref(), synced, node_uid.uid.as_ref()) else {
            continue;
        };
        publisher.node_uid.clone_from(uid);
        if retry_at.is_some() {
            continue; // backing off: the timer fires the next attempt
        }

        let (inv, hold) = damper.apply(inv, tokio::time::Instant::now());
        hold_ends = hold;
        let desired = publisher.pack(&inv);
        let existing = view.current();
        let plan = slices::plan(&publisher, &desired, &existing, generation);
        if plan.writes.is_empty() {
            set_tainted(&desired);
            counter!(m::PUBLISHES, "result" => "unchanged").increment(1);
            pending_since = None;
            generation = plan.generation;
            health.ready.store(true, Ordering::SeqCst);
            continue;
        }
        debug!(writes = plan.writes.len(), generation = plan.generation, "publishing");
        match execute(&api, &plan.writes, &mut view).await {
            Ok(()) => {
                generation = plan.generation;
                delays = backoff();
                counter!(m::PUBLISHES, "result" => "changed").increment(1);
                gauge!(m::SLICES).set(desired.len() as f64);
                gauge!(m::POOL_GENERATION).set(generation as f64);
                set_tainted(&desired);
                let latency = pending_since.take().map(|(t, kernel)| {
                    let clock = if kernel { "kernel" } else { "uevent" };
                    histogram!(m::EVENT_TO_SLICE, "clock" => clock).record(t.elapsed().as_secs_f64());
                    (t.elapsed().as_secs_f64() * 1000.0, clock)
                });
                info!(
                    latency_ms = latency.map(|(ms, _)| (ms * 10.0).round() / 10.0),
                    clock = latency.map(|(_, c)| c),
                    slices = desired.len(),
                    devices = desired.iter().map(slices::Content::devices).sum::<usize>(),
                    generation,
                    writes = plan.writes.len(),
                    "ResourceSlices published"
                );
                health.ready.store(true, Ordering::SeqCst);
            }
            Err(Retry::Now) => retry_at = Some(tokio::time::Instant::now()),
            Err(Retry::Without(Dropped::Taints, why)) => {
                // DRADeviceTaints off (alpha in 1.34/1.35): health reaches
                // the kubelet only; prepare still refuses a failed device.
                error!(
                    %why,
                    "this cluster does not keep device taints (DRADeviceTaints off?): publishing without \
                     them; the scheduler may now allocate a failed device, whose prepare is then refused"
                );
                publisher.taints = TaintEffect::Off;
                gauge!(m::HEALTH_TAINTS).set(0.0);
                retry_at = Some(tokio::time::Instant::now());
            }
            Err(Retry::Without(Dropped::Capacity, why)) => {
                // DRAConsumableCapacity off (alpha in 1.34/1.35): PFs go
                // out exclusive; prepare still holds one claim per PF.
                error!(
                    %why,
                    "this cluster does not keep consumable capacity (DRAConsumableCapacity off?): publishing \
                     PFs exclusive, not shared by memory"
                );
                publisher.shared = false;
                gauge!(m::CONSUMABLE_CAPACITY).set(0.0);
                retry_at = Some(tokio::time::Instant::now());
            }
            Err(Retry::Without(Dropped::Counters, why)) => {
                // The API server does not keep what partitionable devices
                // need (DRAPartitionableDevices off: 1.34/1.35, or turned
                // off): publish without, once; prepare still refuses a PF
                // and its VF together.
                error!(
                    %why,
                    "this cluster does not keep shared counters (DRAPartitionableDevices off?): publishing \
                     without them; the scheduler may now pick a PF and one of its VFs for different \
                     claims, and the second claim's prepare is refused"
                );
                publisher.counters = false;
                gauge!(m::SHARED_COUNTERS).set(0.0);
                retry_at = Some(tokio::time::Instant::now());
            }
            Err(Retry::Later) => {
                counter!(m::PUBLISHES, "result" => "failed").increment(1);
                health.ready.store(false, Ordering::SeqCst);
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                retry_at = Some(tokio::time::Instant::now() + delay);
                debug!(?delay, "publish failed; retrying after backoff");
            }
        }
    }
}

/// What the API server may drop (its feature gate off) or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    Counters,
    Taints,
    Capacity,
}

enum Retry {
    /// The API server dropped or refused the shared counters or the device
    /// taints: plan again without them.
    Without(Dropped, String),
    /// Our view was stale (a conflict, an object gone): plan again at once.
    Now,
    /// The API failed: back off.
    Later,
}

async fn execute(api: &Api<ResourceSlice>, writes: &[Write], view: &mut View) -> Result<(), Retry> {
    let pp = PostParams {
        field_manager: Some("mock-accel-agent".into()),
        ..Default::default()
    };
    for w in writes {
        let name = w.name().to_string();
        let result = match w {
            Write::Create(s) => api.create(&pp, s).await.map(Some),
            Write::Update(s) => api.replace(&name, &pp, s).await.map(Some),
            Write::Delete { resource_version, .. } => {
                let dp = DeleteParams::default().preconditions(Preconditions {
                    resource_version: resource_version.clone(),
                    uid: None,
                });
                api.delete(&name, &dp).await.map(|either| either.left())
            }
        };
        match result {
            Ok(obj) => {
                counter!(m::SLICE_WRITES, "verb" => w.verb(), "result" => "success").increment(1);
                if let (Write::Create(sent) | Write::Update(sent), Some(stored)) = (w, &obj)
                    && let Some((what, why)) = dropped(sent, stored)
                {
                    view.deleted.remove(&name);
                    view.written.insert(name, stored.clone());
                    return Err(Retry::Without(what, why));
                }
                match obj {
                    Some(s) if !matches!(w, Write::Delete { .. }) => {
                        view.deleted.remove(&name);
                        view.written.insert(name, s);
                    }
                    other => {
                        view.written.remove(&name);
                        let at = other.as_ref().map_or(0, rv);
                        view.deleted.insert(name, at);
                    }
                }
            }
            Err(e) => {
                let kind = m::api_error_kind(&e);
                counter!(m::API_ERRORS, "kind" => kind).increment(1);
                let result = if kind == "conflict" { "conflict" } else { "error" };
                counter!(m::SLICE_WRITES, "verb" => w.verb(), "result" => result).increment(1);
                match (kind, w) {
                    // Someone else wrote it (or deleted it) first: re-read and plan again.
                    ("conflict", _) | ("not_found", Write::Update(_)) => {
                        debug!(slice = %name, error = %e, "our view was stale; re-reading");
                        match api.get_opt(&name).await {
                            Ok(Some(fresh)) => {
                                view.deleted.remove(&name);
                                view.written.insert(name.clone(), fresh);
                            }
                            Ok(None) => {
                                view.written.remove(&name);
                                view.watched.remove(&name);
                            }
                            Err(e) => {
                                counter!(m::API_ERRORS, "kind" => m::api_error_kind(&e)).increment(1);
                                return Err(Retry::Later);
                            }
                        }
                        return Err(Retry::Now);
                    }
                    ("not_found", Write::Delete { .. }) => {
                        view.written.remove(&name);
                        view.deleted.insert(name, 0);
                    }
                    ("invalid", Write::Create(sent) | Write::Update(sent))
                        if has_counters(sent) || has_taints(sent) || has_shares(sent) =>
                    {
                        // Which one it refused: the one its message names, else counters first.
                        let message = e.to_string();
                        let names_capacity =
                            message.contains("allowMultipleAllocations") || message.contains("requestPolicy");
                        let what = if has_shares(sent) && (names_capacity || !(has_counters(sent) || has_taints(sent)))
                        {
                            Dropped::Capacity
                        } else if has_taints(sent) && (message.contains("taints") || !has_counters(sent)) {
                            Dropped::Taints
                        } else {
                            Dropped::Counters
                        };
                        return Err(Retry::Without(what, format!("the API server refused {name}: {e}")));
                    }
                    ("invalid", _) => {
                        warn!(slice = %name, error = %e, "the API server rejected our ResourceSlice: this is a bug");
                        return Err(Retry::Later);
                    }
                    _ => {
                        warn!(slice = %name, verb = w.verb(), error = %e, "ResourceSlice write failed; retrying");
                        return Err(Retry::Later);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The published devices with a taint, by effect (every effect, 0
/// included, so that a gauge goes back to 0).
fn set_tainted(slices: &[Content]) {
    for effect in slices::TAINT_EFFECTS {
        let n = slices
            .iter()
            .flat_map(|c| match c {
                Content::Devices(d) => d.as_slice(),
                Content::Counters(_) => &[],
            })
            .filter(|d| d.taints.iter().flatten().any(|t| t.effect == effect))
            .count();
        gauge!(m::TAINTED_DEVICES, "effect" => effect).set(n as f64);
    }
}

/// Whether a slice we write has devices shared by memory.
fn has_shares(s: &ResourceSlice) -> bool {
    shared(s) > 0
}

fn shared(s: &ResourceSlice) -> usize {
    s.spec
        .devices
        .iter()
        .flatten()
        .filter(|d| d.allow_multiple_allocations == Some(true))
        .count()
}

/// Whether a slice we write carries device taints.
fn has_taints(s: &ResourceSlice) -> bool {
    s.spec.devices.iter().flatten().any(|d| d.taints.is_some())
}

/// What the stored slice lacks of what we sent, and why we think so.
fn dropped(sent: &ResourceSlice, stored: &ResourceSlice) -> Option<(Dropped, String)> {
    if let Some(why) = counters_dropped(sent, stored) {
        return Some((Dropped::Counters, why));
    }
    if shared(sent) > shared(stored) {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        return Some((
            Dropped::Capacity,
            format!("{name}: devices[].allowMultipleAllocations was dropped"),
        ));
    }
    let tainted = |s: &ResourceSlice| s.spec.devices.iter().flatten().filter(|d| d.taints.is_some()).count();
    (tainted(sent) > tainted(stored)).then(|| {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        (Dropped::Taints, format!("{name}: devices[].taints was dropped"))
    })
}

/// Whether a slice we write carries shared counters or consumes them.
fn has_counters(s: &ResourceSlice) -> bool {
    s.spec.shared_counters.is_some() || s.spec.devices.iter().flatten().any(|d| d.consumes_counters.is_some())
}

/// Why the stored slice lacks the counters we sent (the API server drops
/// fields of a disabled feature on write), if it does.
fn counters_dropped(sent: &ResourceSlice, stored: &ResourceSlice) -> Option<String> {
    let name = sent.metadata.name.as_deref().unwrap_or_default();
    if sent.spec.shared_counters.is_some() && stored.spec.shared_counters.is_none() {
        return Some(format!("{name}: spec.sharedCounters was dropped"));
    }
    let consuming = |s: &ResourceSlice| {
        s.spec
            .devices
            .iter()
            .flatten()
            .filter(|d| d.consumes_counters.is_some())
            .count()
    };
    (consuming(sent) > consuming(stored)).then(|| format!("{name}: devices[].consumesCounters was dropped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(name: &str, rv: u64) -> ResourceSlice {
        ResourceSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            spec: Default::default(),
        }
    }

    #[test]
    fn the_view_trusts_our_writes_until_the_watch_catches_up() {
        let mut v = View::default();
        v.apply(watcher::Event::Init);
        v.apply(watcher::Event::InitApply(slice("a", 5)));
        v.apply(watcher::Event::InitDone);
        // We update a (rv 7): the watch has not shown it yet.
        v.written.insert("a".into(), slice("a", 7));
        assert_eq!(rv(&v.current()["a"]), 7);
        v.apply(watcher::Event::Apply(slice("a", 7)));
        assert!(v.written.is_empty());
        // A kubelet wipe after our write: gone from the view.
        v.written.insert("a".into(), slice("a", 8));
        v.apply(watcher::Event::Delete(slice("a", 9)));
        assert!(v.current().is_empty());
        // We delete b; the watch shows it later.
        v.apply(watcher::Event::Apply(slice("b", 10)));
        v.deleted.insert("b".into(), 11);
        assert!(!v.current().contains_key("b"));
    }

    #[test]
    fn a_relist_is_the_truth() {
        let mut v = View::default();
        v.written.insert("gone".into(), slice("gone", 3));
        v.deleted.insert("back".into(), 4);
        v.apply(watcher::Event::Init);
        v.apply(watcher::Event::InitApply(slice("back", 6)));
        v.apply(watcher::Event::InitDone);
        let names: Vec<String> = v.current().into_keys().collect();
        assert_eq!(names, ["back"], "deleted while the watch was down must not linger");
    }

    #[test]
    fn dropped_counters_are_noticed() {
        use k8s_openapi::api::resource::v1::{CounterSet, Device, DeviceCounterConsumption};
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-0".into());
        sent.spec.shared_counters = Some(vec![CounterSet {
            name: "mock0".into(),
            ..Default::default()
        }]);
        let mut stored = sent.clone();
        assert_eq!(counters_dropped(&sent, &stored), None);
        assert!(has_counters(&sent));
        stored.spec.shared_counters = None;
        assert_eq!(
            counters_dropped(&sent, &stored).as_deref(),
            Some("s-0: spec.sharedCounters was dropped")
        );
        let consuming = Device {
            name: "mock0".into(),
            consumes_counters: Some(vec![DeviceCounterConsumption {
                counter_set: "mock0".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        sent.spec.shared_counters = None;
        sent.spec.devices = Some(vec![consuming.clone()]);
        let mut stored = sent.clone();
        assert_eq!(counters_dropped(&sent, &stored), None);
        stored.spec.devices = Some(vec![Device {
            consumes_counters: None,
            ..consuming
        }]);
        assert!(
            counters_dropped(&sent, &stored)
                .unwrap()
                .contains("consumesCounters was dropped")
        );
        assert!(!has_counters(&stored));
    }

    /// A server with DRADeviceTaints off keeps the device and drops its
    /// taints: noticed as taints, not counters.
    #[test]
    fn dropped_taints_are_noticed() {
        use k8s_openapi::api::resource::v1::Device;
        let tainted = Device {
            name: "mock1".into(),
            taints: Some(vec![k8s_openapi::api::resource::v1::DeviceTaint {
                key: "mock-accel.example.com/health".into(),
                value: Some("failed".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]),
            ..Default::default()
        };
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-1".into());
        sent.spec.devices = Some(vec![tainted.clone()]);
        assert!(has_taints(&sent) && !has_counters(&sent));
        assert_eq!(dropped(&sent, &sent.clone()), None);
        let mut stored = sent.clone();
        stored.spec.devices = Some(vec![Device {
            taints: None,
            ..tainted
        }]);
        assert_eq!(
            dropped(&sent, &stored),
            Some((Dropped::Taints, "s-1: devices[].taints was dropped".into()))
        );
    }
}
