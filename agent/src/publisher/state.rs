//! The publisher's decisions, without I/O: [`State::on`] takes what
//! happened (a scan, the watches, a timer, the outcome of a write) and says
//! what to do ([`Action`]); the runner (`publisher::run`) does it and feeds
//! the outcome back. Unit-tested without an API or a runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::runtime::watcher;
use metrics::{counter, gauge, histogram};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, error, info};

use super::dropped::Dropped;
use super::view::{NodeUid, View};
use crate::events::{Snapshot, Steps};
use crate::flapping::Damper;
use crate::inventory::Inventory;
use crate::metrics as m;
use crate::slices::{self, Content, Publisher, TaintEffect, Write};

/// Why a write of a plan did not go through, and what follows.
#[derive(Debug)]
pub(super) enum Retry {
    /// The API server dropped or refused the shared counters or the device
    /// taints: plan again without them.
    Without(Dropped, String),
    /// Our view was stale (a conflict, an object gone): plan again at once.
    Now,
    /// The API failed: back off.
    Later,
}

/// Where the time of event → slice went, in milliseconds per step, as
/// `name=ms` words: the uevent after the kernel's own time of the event
/// (`uevent`; only when the probes saw it), the first trigger taken by the
/// inventory task after the oldest event (`taken`: the socket or ring
/// buffer and the channel), the burst coalesced (`coalesce`), the backend
/// scanned (`scan`), the snapshot handed to the publisher (`handoff`),
/// planned up to the write (`plan`: the flapping damper and the slice plan),
/// and the write itself (`write`: the API's answer, the last attempt's).
fn split(steps: &Steps, received: Instant, began: Instant, done: Instant) -> String {
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1000.0;
    let oldest = [steps.kernel, steps.uevent]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(steps.taken);
    let mut out = Vec::new();
    if let (Some(k), Some(u)) = (steps.kernel, steps.uevent) {
        out.push(("uevent", ms(k, u)));
    }
    out.extend([
        ("taken", ms(oldest, steps.taken)),
        ("coalesce", ms(steps.taken, steps.scan_started)),
        ("scan", ms(steps.scan_started, steps.scanned)),
        ("handoff", ms(steps.scanned, received)),
        ("plan", ms(received, began)),
        ("write", ms(began, done)),
    ]);
    out.iter()
        .map(|(name, v)| format!("{name}={v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What happened.
pub(super) enum Event {
    /// Scans, oldest first (the newest is published; the oldest event not
    /// yet published is what the latency is measured from).
    Snapshots(Vec<Snapshot>),
    /// Our slices' watch.
    Slices(Vec<watcher::Event<ResourceSlice>>),
    /// This node's Node's watch.
    Node(Box<watcher::Event<Node>>),
    /// The backoff (or the immediate retry) is over.
    RetryDue,
    /// A flapping device's hold may have ended.
    HoldEnded,
    /// How the last [`Action::Write`] went.
    Written(Result<(), Retry>),
}

/// What to do.
#[derive(Debug, PartialEq)]
pub(super) enum Action {
    /// Write these, in order, then report [`Event::Written`].
    Write(Vec<Write>),
    /// `/readyz`: the pool is (not) published as it is now.
    Ready(bool),
}

fn backoff() -> Box<dyn Iterator<Item = Duration> + Send> {
    Box::new(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build(),
    )
}

pub(super) struct State {
    pub(super) publisher: Publisher,
    /// What the API holds; the runner's writes keep it right.
    pub(super) view: View,
    node_uid: NodeUid,
    synced: bool,
    inventory: Option<Arc<Inventory>>,
    /// The oldest event not yet published, and whether its time is the kernel's.
    pending_since: Option<(Instant, bool)>,
    /// The steps of the oldest scan an event asked for, not yet published,
    /// and when its snapshot reached us; when the last write began.
    pending_steps: Option<(Steps, Instant)>,
    write_started: Option<Instant>,
    generation: i64,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    retry_at: Option<TokioInstant>,
    hold_ends: Option<TokioInstant>,
    damper: Damper,
    /// The plan being written: its generation, what it publishes, and how
    /// many writes it takes.
    writing: Option<(i64, Vec<Content>, usize)>,
}

impl State {
    pub(super) fn new(publisher: Publisher) -> State {
        State {
            publisher,
            view: View::default(),
            node_uid: NodeUid::default(),
            synced: false,
            inventory: None,
            pending_since: None,
            pending_steps: None,
            write_started: None,
            generation: 0,
            delays: backoff(),
            retry_at: None,
            hold_ends: None,
            damper: Damper::default(),
            writing: None,
        }
    }

    /// When the runner must wake us: a retry, or a flapping device's hold.
    pub(super) fn timers(&self) -> (Option<TokioInstant>, Option<TokioInstant>) {
        (self.retry_at, self.hold_ends)
    }

    pub(super) fn on(&mut self, event: Event, now: TokioInstant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Snapshots(snaps) => {
                for snap in snaps {
                    let this = snap.first_event.map(|t| (t, snap.kernel_clock));
                    self.pending_since = [self.pending_since, this].into_iter().flatten().min_by_key(|(t, _)| *t);
                    if self.pending_steps.is_none() {
                        self.pending_steps = snap.steps.map(|s| (s, Instant::now()));
                    }
                    self.inventory = Some(snap.inventory);
                }
            }
            Event::Slices(events) => {
                for e in events {
                    self.synced |= matches!(e, watcher::Event::InitDone);
                    self.view.apply(e);
                }
            }
            Event::Node(e) => {
                // A plan reads the Node's uid only: any other change of the
                // Node (its status, a label, a taint — a fleet's thousand
                // Nodes patched at once) plans nothing.
                if !self.node_uid.apply(&self.publisher.node, *e) {
                    return actions;
                }
                // Not ready while there is nothing to own our slices.
                if self.node_uid.uid.is_none() {
                    actions.push(Action::Ready(false));
                }
            }
            Event::RetryDue => self.retry_at = None,
            Event::HoldEnded => self.hold_ends = None,
            Event::Written(outcome) => return self.written(outcome, now),
        }
        actions.extend(self.plan(now));
        actions
    }

    /// Plans from what is known, unless something is missing or a retry waits.
    fn plan(&mut self, now: TokioInstant) -> Option<Action> {
        let (Some(inv), true, Some(uid)) = (self.inventory.as_ref(), self.synced, self.node_uid.uid.as_ref()) else {
            return None;
        };
        self.publisher.node_uid.clone_from(uid);
        if self.retry_at.is_some() || self.writing.is_some() {
            return None; // backing off: the timer fires the next attempt
        }
        let (inv, hold) = self.damper.apply(inv, now);
        self.hold_ends = hold;
        let desired = self.publisher.pack(&inv);
        let plan = slices::plan(&self.publisher, &desired, &self.view.current(), self.generation);
        if plan.writes.is_empty() {
            set_tainted(&desired);
            counter!(m::PUBLISHES, "result" => "unchanged").increment(1);
            self.pending_since = None;
            self.pending_steps = None;
            self.generation = plan.generation;
            return Some(Action::Ready(true));
        }
        debug!(writes = plan.writes.len(), generation = plan.generation, "publishing");
        self.writing = Some((plan.generation, desired, plan.writes.len()));
        self.write_started = Some(Instant::now());
        Some(Action::Write(plan.writes))
    }

    fn written(&mut self, outcome: Result<(), Retry>, now: TokioInstant) -> Vec<Action> {
        let Some((generation, desired, writes)) = self.writing.take() else {
            return Vec::new();
        };
        match outcome {
            Ok(()) => {
                self.generation = generation;
                self.delays = backoff();
                self.published(&desired, writes);
                return vec![Action::Ready(true)];
            }
            Err(Retry::Now) => {}
            Err(Retry::Without(dropped, why)) => self.without(dropped, &why),
            Err(Retry::Later) => {
                counter!(m::PUBLISHES, "result" => "failed").increment(1);
                let delay = self.delays.next().unwrap_or(Duration::from_secs(10));
                self.retry_at = Some(now + delay);
                debug!(?delay, "publish failed; retrying after backoff");
                return vec![Action::Ready(false)];
            }
        }
        self.retry_at = Some(now);
        Vec::new()
    }

    fn published(&mut self, desired: &[Content], writes: usize) {
        counter!(m::PUBLISHES, "result" => "changed").increment(1);
        gauge!(m::SLICES).set(desired.len() as f64);
        gauge!(m::POOL_GENERATION).set(self.generation as f64);
        set_tainted(desired);
        let latency = self.pending_since.take().map(|(t, kernel)| {
            let clock = if kernel { "kernel" } else { "uevent" };
            histogram!(m::EVENT_TO_SLICE, "clock" => clock).record(t.elapsed().as_secs_f64());
            (t.elapsed().as_secs_f64() * 1000.0, clock)
        });
        let steps = self
            .pending_steps
            .take()
            .zip(self.write_started)
            .map(|((steps, received), began)| split(&steps, received, began, Instant::now()));
        info!(
            latency_ms = latency.map(|(ms, _)| (ms * 10.0).round() / 10.0),
            clock = latency.map(|(_, c)| c),
            steps,
            slices = desired.len(),
            devices = desired.iter().map(slices::Content::devices).sum::<usize>(),
            generation = self.generation,
            writes,
            "ResourceSlices published"
        );
    }

    /// The cluster does not keep a feature's fields: publish without them.
    fn without(&mut self, dropped: Dropped, why: &str) {
        match dropped {
            // DRADeviceTaints off (alpha in 1.34/1.35): health reaches the
            // kubelet only; prepare still refuses a failed device.
            Dropped::Taints => {
                error!(
                    %why,
                    "this cluster does not keep device taints (DRADeviceTaints off?): publishing without \
                     them; the scheduler may now allocate a failed device, whose prepare is then refused"
                );
                self.publisher.taints = TaintEffect::Off;
                gauge!(m::HEALTH_TAINTS).set(0.0);
            }
            // DRAConsumableCapacity off (alpha in 1.34/1.35): PFs go out
            // exclusive; prepare still holds one claim per PF.
            Dropped::Capacity => {
                error!(
                    %why,
                    "this cluster does not keep consumable capacity (DRAConsumableCapacity off?): publishing \
                     PFs exclusive, not shared by memory"
                );
                self.publisher.shared = false;
                gauge!(m::CONSUMABLE_CAPACITY).set(0.0);
            }
            // DRAListTypeAttributes off (alpha, the default in 1.36/1.37):
            // the scalar `capabilities` stays.
            Dropped::Lists => {
                error!(
                    %why,
                    "this cluster does not keep list-typed attributes (DRAListTypeAttributes off?): \
                     publishing without capabilityList; the scalar capabilities attribute stays"
                );
                self.publisher.lists = false;
                gauge!(m::LIST_ATTRIBUTES).set(0.0);
            }
            // DRADeviceCompatibilityGroups off (alpha, the default in 1.37):
            // the counters alone keep a PF's modes apart, as before.
            Dropped::Groups => {
                error!(
                    %why,
                    "this cluster does not keep compatibility groups (DRADeviceCompatibilityGroups off?): \
                     publishing without them; the shared counters still keep a PF and its VFs apart"
                );
                self.publisher.groups = false;
                gauge!(m::COMPATIBILITY_GROUPS).set(0.0);
            }
            // DRANodeAllocatableResources off (alpha, the default in 1.37):
            // the overhead is the pods' own requests' business again.
            Dropped::NodeResources => {
                error!(
                    %why,
                    "this cluster does not keep node allocatable resources (DRANodeAllocatableResources off in \
                     the API server, or this node's kubelet does not declare it): publishing without the host \
                     memory overhead; the scheduler no longer counts it"
                );
                self.publisher.host_overhead = None;
                gauge!(m::HOST_MEMORY_OVERHEAD).set(0.0);
            }
            // DRAPartitionableDevices off (1.34/1.35, or turned off):
            // prepare still refuses a PF and its VF together.
            Dropped::Counters => {
                error!(
                    %why,
                    "this cluster does not keep shared counters (DRAPartitionableDevices off?): publishing \
                     without them; the scheduler may now pick a PF and one of its VFs for different \
                     claims, and the second claim's prepare is refused"
                );
                self.publisher.counters = false;
                gauge!(m::SHARED_COUNTERS).set(0.0);
                // (groups ride on the counters: gone with them)
                gauge!(m::COMPATIBILITY_GROUPS).set(0.0);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::inventory::testing::function;

    #[test]
    fn the_split_names_each_step_of_event_to_slice() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let steps = Steps {
            kernel: Some(at(0)),
            uevent: Some(at(2)),
            taken: at(3),
            scan_started: at(6),
            scanned: at(10),
        };
        assert_eq!(
            split(&steps, at(11), at(12), at(62)),
            "uevent=2.00 taken=3.00 coalesce=3.00 scan=4.00 handoff=1.00 plan=1.00 write=50.00"
        );
        // Uevents alone: no kernel step; taken counts from the uevent.
        let uevents = Steps { kernel: None, ..steps };
        assert_eq!(
            split(&uevents, at(11), at(12), at(62)),
            "taken=1.00 coalesce=3.00 scan=4.00 handoff=1.00 plan=1.00 write=50.00"
        );
        // The probe's event read after the uevent (the ring buffer is the
        // slower path): taken still counts from the kernel's time.
        let late = Steps {
            kernel: Some(at(1)),
            uevent: Some(at(0)),
            ..steps
        };
        assert!(split(&late, at(11), at(12), at(62)).starts_with("uevent=0.00 taken=3.00 "));
    }

    fn state() -> State {
        State::new(Publisher {
            driver: "mock-accel.example.com".into(),
            node: "node-a".into(),
            node_uid: String::new(),
            max_devices: 128,
            counters: true,
            taints: TaintEffect::NoSchedule,
            shared: false,
            lists: false,
            groups: false,
            host_overhead: None,
        })
    }

    fn scan(names: &[&str]) -> Event {
        let functions: BTreeMap<String, _> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut f = function(n);
                f.pf_index = i as u32;
                (n.to_string(), f)
            })
            .collect();
        Event::Snapshots(vec![Snapshot {
            inventory: Arc::new(Inventory {
                functions,
                skipped: vec![],
                scanned: true,
            }),
            first_event: Some(Instant::now()),
            kernel_clock: false,
            steps: None,
        }])
    }

    fn node(uid: &str) -> Event {
        Event::Node(Box::new(watcher::Event::Apply(Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        })))
    }

    fn listed() -> Event {
        Event::Slices(vec![watcher::Event::Init, watcher::Event::InitDone])
    }

    /// A state that knows mock0, the slices and the Node, and the actions
    /// of the last of those (its first write).
    fn writing(now: TokioInstant) -> (State, Vec<Action>) {
        let mut s = state();
        s.on(scan(&["mock0"]), now);
        s.on(listed(), now);
        let actions = s.on(node("uid-1"), now);
        (s, actions)
    }

    fn writes(actions: &[Action]) -> Option<&Vec<Write>> {
        actions.iter().find_map(|a| match a {
            Action::Write(w) => Some(w),
            Action::Ready(_) => None,
        })
    }

    #[test]
    fn nothing_is_written_before_the_scan_the_slices_and_the_node_are_known() {
        let now = TokioInstant::now();
        let mut s = state();
        assert!(s.on(scan(&["mock0"]), now).is_empty());
        assert!(s.on(listed(), now).is_empty(), "no Node to own the slices");
        let actions = s.on(node("uid-1"), now);
        let w = writes(&actions).expect("a write once all three are known");
        assert!(
            !w.is_empty() && w.iter().all(|w| matches!(w, Write::Create(_))),
            "{w:?}"
        );
        // While it is being written, nothing else is planned.
        assert!(s.on(scan(&["mock0", "mock1"]), now).is_empty());
        assert_eq!(s.on(Event::Written(Ok(())), now), [Action::Ready(true)]);
        // The newer scan waits for an event: the next one plans it.
        let actions = s.on(Event::HoldEnded, now);
        assert!(writes(&actions).is_some(), "{actions:?}");
    }

    #[test]
    fn a_failed_write_backs_off_and_the_timer_retries() {
        let now = TokioInstant::now();
        let (mut s, first) = writing(now);
        assert!(writes(&first).is_some());
        assert_eq!(s.on(Event::Written(Err(Retry::Later)), now), [Action::Ready(false)]);
        let (retry, _) = s.timers();
        assert!(retry.is_some_and(|t| t > now), "{retry:?}");
        // Events meanwhile plan nothing: the backoff holds.
        assert!(s.on(scan(&["mock0"]), now).is_empty());
        let actions = s.on(Event::RetryDue, now);
        assert!(writes(&actions).is_some(), "{actions:?}");
    }

    #[test]
    fn a_dropped_feature_is_given_up_and_planned_again_at_once() {
        let now = TokioInstant::now();
        let (mut s, _) = writing(now);
        let why = "s-0: devices[].taints was dropped".to_string();
        assert!(
            s.on(Event::Written(Err(Retry::Without(Dropped::Taints, why))), now)
                .is_empty()
        );
        assert_eq!(s.publisher.taints, TaintEffect::Off);
        assert_eq!(s.timers().0, Some(now), "retried at once");
        assert!(writes(&s.on(Event::RetryDue, now)).is_some());
    }

    #[test]
    fn a_deleted_node_makes_the_agent_unready_and_stops_the_writes() {
        let now = TokioInstant::now();
        let (mut s, _) = writing(now);
        s.on(Event::Written(Ok(())), now);
        let gone = Event::Node(Box::new(watcher::Event::Delete(Node::default())));
        assert_eq!(s.on(gone, now), [Action::Ready(false)]);
        assert!(s.on(scan(&["mock0", "mock1"]), now).is_empty());
        // Back under a new uid: the slices move to it.
        let actions = s.on(node("uid-2"), now);
        assert!(writes(&actions).is_some(), "{actions:?}");
        assert_eq!(s.publisher.node_uid, "uid-2");
    }

    /// A Node changed but for its uid (status, labels, taints) plans
    /// nothing: no round, not even an unchanged one; its uid changed, the
    /// slices move.
    #[test]
    fn only_the_nodes_uid_makes_a_round() {
        let now = TokioInstant::now();
        let (mut s, _) = writing(now);
        assert_eq!(s.on(Event::Written(Ok(())), now), [Action::Ready(true)]);
        // This test's view never sees the writes: any event that plans
        // now would write again.
        let mut patched = node("uid-1");
        if let Event::Node(e) = &mut patched
            && let watcher::Event::Apply(n) = e.as_mut()
        {
            n.metadata.labels = Some([("zone".to_string(), "b".to_string())].into());
        }
        assert!(s.on(patched, now).is_empty());
        assert!(s.on(node("uid-1"), now).is_empty());
        assert!(writes(&s.on(node("uid-2"), now)).is_some());
    }
}
