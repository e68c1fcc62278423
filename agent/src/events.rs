//! Triggers → scans → inventory. The backend's triggers (uevents, eBPF)
//! and the periodic safety-net rescan each ask for a scan; a burst of them
//! is coalesced into one scan of the backend, and each scan becomes an
//! inventory snapshot for the publisher. Nothing here knows of Kubernetes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kobject_uevent::{ActionType, UEvent};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backend::uevents::SUBSYSTEM;
use crate::backend::{Backend, Trigger};
use crate::inventory::Inventory;
use crate::metrics as m;

/// What the publisher gets: the devices now, and when the oldest kernel
/// event that this snapshot answers was received (for the latency metric).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub inventory: Arc<Inventory>,
    pub first_event: Option<Instant>,
    /// `first_event` is a kernel timestamp (from eBPF), not a receipt time.
    pub kernel_clock: bool,
    /// Each step the snapshot's events went through (none for a scan no
    /// event asked for).
    pub steps: Option<Steps>,
}

/// When the events a snapshot answers went through each step on their way
/// to the publisher: the parts of event → slice (`just bench-cluster`
/// prints them; the publisher adds its own, [`crate::publisher`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// The kernel's time of the oldest event the probes saw (eBPF's clock).
    pub kernel: Option<Instant>,
    /// The oldest uevent's receipt (the netlink socket read).
    pub uevent: Option<Instant>,
    /// The first trigger taken by the inventory task (a burst opened).
    pub taken: Instant,
    /// The burst coalesced: the scan started.
    pub scan_started: Instant,
    /// The scan done, the snapshot sent.
    pub scanned: Instant,
}

/// How a burst is coalesced: a scan waits until triggers stop for `quiet`,
/// but never longer than `max_wait` after the first.
#[derive(Debug, Clone, Copy)]
pub struct Coalesce {
    pub quiet: Duration,
    pub max_wait: Duration,
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce {
            quiet: Duration::from_millis(2),
            max_wait: Duration::from_millis(30),
        }
    }
}

/// Every scan to the publisher, and the newest inventory to the tasks that
/// read it (the kubelet plugin, the binding and declared-devices tasks): a
/// task in `tasks`. Returns where the inventory task sends its scans, the
/// publisher's end, and the newest inventory.
#[allow(clippy::type_complexity)]
pub fn tee(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> (
    mpsc::UnboundedSender<Snapshot>,
    mpsc::UnboundedReceiver<Snapshot>,
    tokio::sync::watch::Receiver<Arc<Inventory>>,
) {
    let (tee_tx, mut tee_rx) = mpsc::unbounded_channel::<Snapshot>();
    let (snap_tx, snap_rx) = mpsc::unbounded_channel();
    let (inventory_tx, inventory_rx) = tokio::sync::watch::channel(Arc::new(Inventory::default()));
    tasks.spawn(async move {
        while let Some(snap) = tee_rx.recv().await {
            inventory_tx.send_replace(snap.inventory.clone());
            if snap_tx.send(snap).is_err() {
                break;
            }
        }
        Ok(())
    });
    (tee_tx, snap_rx, inventory_rx)
}

/// Scans the backend at start, on every (coalesced) burst of triggers,
/// and every `rescan` (if set); sends each scan to the publisher.
pub async fn inventory_task(
    backend: Arc<dyn Backend>,
    mut triggers: mpsc::Receiver<Trigger>,
    out: mpsc::UnboundedSender<Snapshot>,
    rescan: Option<Duration>,
    coalesce: Coalesce,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut scanner = Scanner::default();
    // Test-only fault: a first scan that takes a while.
    if let Some(ms) = crate::failpoints::value::<u64>(&format!("first-scan/{}", backend.location())) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let first = scanner.scan(&backend, "startup").await?;
    let startup = Snapshot {
        inventory: first,
        first_event: None,
        kernel_clock: false,
        steps: None,
    };
    if out.send(startup).is_err() {
        return Ok(());
    }
    let mut ticker = rescan.map(|period| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut correlator = Correlator::new(Duration::from_secs(2));
    // Only while an event waits for its pair: a fleet's thousand pools
    // would otherwise wake twice a second each for nothing.
    let mut expiry = tokio::time::interval(Duration::from_millis(500));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = async { ticker.as_mut().unwrap().tick().await }, if ticker.is_some() => Batch::new("periodic"),
            _ = expiry.tick(), if !correlator.is_empty() => {
                correlator.expire(Instant::now());
                continue;
            }
            t = triggers.recv(), if open => {
                // No event source left (uevents off): rescans only, until cancelled.
                let Some(t) = t else { open = false; continue };
                let mut batch = Batch::new(reason_of(&t));
                batch.taken = Some(Instant::now());
                let deadline = tokio::time::Instant::now() + coalesce.max_wait;
                let mut next = Some(t);
                // Coalesce the burst.
                while let Some(t) = next.take() {
                    correlator.observe(&t);
                    batch.add(&t);
                    let wait = (tokio::time::Instant::now() + coalesce.quiet).min(deadline);
                    if let Ok(Some(more)) = tokio::time::timeout_at(wait, triggers.recv()).await {
                        next = Some(more);
                    }
                }
                batch
            }
        };
        let scan_started = Instant::now();
        let inventory = scanner.scan(&backend, batch.reason).await?;
        let steps = batch.taken.map(|taken| Steps {
            kernel: batch.first_probe,
            uevent: batch.first_uevent,
            taken,
            scan_started,
            scanned: Instant::now(),
        });
        let snapshot = Snapshot {
            inventory,
            first_event: batch.first,
            kernel_clock: batch.kernel_clock,
            steps,
        };
        if out.send(snapshot).is_err() {
            return Ok(());
        }
    }
}

/// The triggers of one scan: why, and the oldest event it answers (of
/// either source, and of each).
struct Batch {
    reason: &'static str,
    first: Option<Instant>,
    kernel_clock: bool,
    first_probe: Option<Instant>,
    first_uevent: Option<Instant>,
    /// When its first trigger was taken (none: a periodic rescan).
    taken: Option<Instant>,
}

impl Batch {
    fn new(reason: &'static str) -> Batch {
        Batch {
            reason,
            first: None,
            kernel_clock: false,
            first_probe: None,
            first_uevent: None,
            taken: None,
        }
    }

    fn add(&mut self, t: &Trigger) {
        let r = reason_of(t);
        if r == "overflow" || (r == "module" && self.reason != "overflow") {
            self.reason = r;
        }
        if self.first.is_none_or(|f| t.at() < f) {
            self.first = Some(t.at());
            self.kernel_clock = matches!(t, Trigger::Probe { .. });
        }
        let oldest = |slot: &mut Option<Instant>| *slot = Some(slot.map_or(t.at(), |s| s.min(t.at())));
        match t {
            Trigger::Probe { .. } => oldest(&mut self.first_probe),
            Trigger::Uevent { .. } => oldest(&mut self.first_uevent),
            Trigger::Overflow { .. } => {}
        }
    }
}

/// A device event as both sources name it: (added?, PF, VF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceEvent {
    pub added: bool,
    pub pf: u32,
    pub vf: Option<u32>,
}

impl DeviceEvent {
    /// From a class-device add/remove uevent (the ones with a device node).
    pub fn from_uevent(ev: &UEvent) -> Option<DeviceEvent> {
        if ev.subsystem != SUBSYSTEM || !ev.env.contains_key("DEVNAME") {
            return None;
        }
        let added = match ev.action {
            ActionType::Add => true,
            ActionType::Remove => false,
            _ => return None,
        };
        Some(DeviceEvent {
            added,
            pf: ev.env.get("MOCK_ACCEL_PF_INDEX")?.parse().ok()?,
            vf: match ev.env.get("MOCK_ACCEL_VF_INDEX") {
                Some(v) => Some(v.parse().ok()?),
                None => None,
            },
        })
    }

    /// From an eBPF event; a failed probe creates no device.
    pub fn from_probe(ev: &mock_accel_ebpf::ProbeEvent) -> Option<DeviceEvent> {
        let added = match (ev.kind, ev.result) {
            (mock_accel_ebpf::KIND_PROBE, 0) => true,
            (mock_accel_ebpf::KIND_PROBE, _) => return None,
            _ => false,
        };
        Some(DeviceEvent {
            added,
            pf: ev.pf_index,
            vf: ev.is_vf().then_some(ev.vf_index),
        })
    }
}

/// Pairs each device event seen through uevents with the one seen through
/// eBPF; one seen by a single source within the window is logged and
/// counted. Active only while the probes are attached.
pub struct Correlator {
    window: Duration,
    pending: std::collections::HashMap<DeviceEvent, (&'static str, Instant)>,
}

impl Correlator {
    pub fn new(window: Duration) -> Correlator {
        Correlator {
            window,
            pending: Default::default(),
        }
    }

    pub fn observe(&mut self, t: &Trigger) {
        let (key, source) = match t {
            // A uevent received while the probes were detached expects nothing.
            Trigger::Uevent {
                ebpf_attached: false, ..
            } => return,
            Trigger::Uevent { event, .. } => (DeviceEvent::from_uevent(event), "uevent"),
            Trigger::Probe { event, .. } => (DeviceEvent::from_probe(event), "ebpf"),
            Trigger::Overflow { .. } => {
                // Lost uevents: nothing can be paired until now.
                self.pending.clear();
                return;
            }
        };
        let Some(key) = key else { return };
        match self.pending.get(&key) {
            Some((other, _)) if *other != source => {
                self.pending.remove(&key);
            }
            _ => {
                self.pending.insert(key, (source, Instant::now()));
            }
        }
    }

    /// No event waits for its pair.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Events older than the window that the other source never saw.
    pub fn expire(&mut self, now: Instant) -> Vec<(DeviceEvent, &'static str)> {
        let window = self.window;
        let mut out = Vec::new();
        self.pending.retain(|key, (source, seen)| {
            let keep = now.duration_since(*seen) < window;
            if !keep {
                out.push((*key, *source));
            }
            keep
        });
        for (key, source) in &out {
            counter!(m::EVENT_MISMATCHES, "seen_only_by" => *source).increment(1);
            warn!(
                ?key,
                seen_only_by = *source,
                "a device event was seen by one source only"
            );
        }
        out
    }
}

fn reason_of(t: &Trigger) -> &'static str {
    match t {
        Trigger::Overflow { .. } => "overflow",
        Trigger::Probe { .. } => "ebpf",
        Trigger::Uevent { event, .. } if event.subsystem == "module" => "module",
        Trigger::Uevent { .. } => "uevent",
    }
}

/// Scans and keeps the inventory metrics and the skip log right.
#[derive(Default)]
struct Scanner {
    device_labels: Vec<(String, String)>,
    skipped: Vec<(String, String)>,
}

impl Scanner {
    async fn scan(&mut self, backend: &Arc<dyn Backend>, reason: &'static str) -> anyhow::Result<Arc<Inventory>> {
        counter!(m::RESCANS, "reason" => reason).increment(1);
        let b = backend.clone();
        let started = Instant::now();
        let inv = tokio::task::spawn_blocking(move || b.scan()).await??;
        metrics::histogram!(m::SCAN_SECONDS).record(started.elapsed().as_secs_f64());
        debug!(
            reason,
            functions = inv.functions.len(),
            skipped = inv.skipped.len(),
            "scanned the devices"
        );

        // Skips are logged and counted once per device and reason.
        let now: Vec<(String, String)> = inv.skipped.iter().map(|s| (s.name.clone(), s.detail.clone())).collect();
        for s in &inv.skipped {
            if !self.skipped.contains(&(s.name.clone(), s.detail.clone())) {
                warn!(device = %s.name, reason = s.reason.as_str(), detail = %s.detail, "device skipped: not published");
                counter!(m::DEVICES_SKIPPED, "reason" => s.reason.as_str()).increment(1);
            }
        }
        self.skipped = now;

        let mut counts: std::collections::BTreeMap<(String, String), f64> = Default::default();
        for f in inv.functions.values() {
            *counts
                .entry((f.kind.as_str().to_string(), f.numa_node.to_string()))
                .or_default() += 1.0;
        }
        for old in &self.device_labels {
            if !counts.contains_key(old) {
                gauge!(m::DEVICES, "type" => old.0.clone(), "numa_node" => old.1.clone()).set(0.0);
            }
        }
        for ((kind, numa), n) in &counts {
            gauge!(m::DEVICES, "type" => kind.clone(), "numa_node" => numa.clone()).set(*n);
        }
        gauge!(m::DEVICES_UNPUBLISHABLE).set(inv.skipped.len() as f64);
        self.device_labels = counts.into_keys().collect();
        Ok(Arc::new(inv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sysfs::{Sysfs, write_fake_tree};
    use crate::backend::uevents::{parse, trigger};

    fn packet(s: &str) -> Vec<u8> {
        s.replace('|', "\0").into_bytes()
    }

    #[tokio::test]
    async fn bursts_are_coalesced_into_one_scan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, 1, 0).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(Sysfs::new(&root));
        let (tx, rx) = mpsc::channel(1024);
        let (out, mut snaps) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(inventory_task(
            backend,
            rx,
            out,
            None,
            Coalesce::default(),
            cancel.clone(),
        ));
        assert!(snaps.recv().await.unwrap().first_event.is_none(), "the startup scan");
        let ev = parse(
            &packet(
                "add@/devices/mock-accel/x|ACTION=add|DEVPATH=/devices/mock-accel/x|SUBSYSTEM=mock-accel|SEQNUM=1|",
            ),
            "kernel",
        )
        .unwrap();
        let t0 = Instant::now();
        for _ in 0..48 {
            tx.send(trigger(ev.clone(), "kernel", t0, false).unwrap())
                .await
                .unwrap();
        }
        let snap = snaps.recv().await.unwrap();
        assert_eq!(snap.first_event, Some(t0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(snaps.try_recv().is_err(), "48 events, one scan");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}

#[cfg(test)]
mod correlation_tests {
    use super::*;
    use crate::backend::uevents::{parse, trigger};
    use mock_accel_ebpf::{KIND_PROBE, KIND_REMOVE, ProbeEvent, VF_NONE};

    fn uevent(action: &str, pf: u32, vf: Option<u32>) -> Trigger {
        uevent_when(action, pf, vf, true)
    }

    fn uevent_when(action: &str, pf: u32, vf: Option<u32>, attached: bool) -> Trigger {
        let name = match vf {
            Some(v) => format!("mock{pf}_vf{v}"),
            None => format!("mock{pf}"),
        };
        let vf_prop = vf.map(|v| format!("MOCK_ACCEL_VF_INDEX={v}\0")).unwrap_or_default();
        let packet = format!(
            "{action}@/devices/mock-accel/x/mock-accel/{name}\0ACTION={action}\0DEVPATH=/devices/mock-accel/x/mock-accel/{name}\0SUBSYSTEM=mock-accel\0DEVNAME=mock-accel/{name}\0MOCK_ACCEL_PF_INDEX={pf}\0{vf_prop}SEQNUM=1\0"
        );
        trigger(
            parse(packet.as_bytes(), "kernel").unwrap(),
            "kernel",
            Instant::now(),
            attached,
        )
        .unwrap()
    }

    fn probe(kind: u32, pf: u32, vf: Option<u32>, result: i32) -> Trigger {
        Trigger::Probe {
            event: ProbeEvent {
                timestamp_ns: 0,
                kind,
                pf_index: pf,
                vf_index: vf.unwrap_or(VF_NONE),
                result,
            },
            at: Instant::now(),
        }
    }

    #[test]
    fn events_seen_by_both_sources_pair_up() {
        let mut c = Correlator::new(Duration::from_millis(10));
        c.observe(&uevent("add", 5, None));
        c.observe(&probe(KIND_PROBE, 5, None, 0));
        c.observe(&probe(KIND_REMOVE, 1, Some(3), 0));
        c.observe(&uevent("remove", 1, Some(3)));
        // A failed probe creates no device, and no uevent is expected.
        c.observe(&probe(KIND_PROBE, 7, None, -5));
        // Bus-device events have no device node: not paired.
        let later = Instant::now() + Duration::from_millis(50);
        assert!(c.expire(later).is_empty());
    }

    #[test]
    fn an_event_seen_by_one_source_is_reported() {
        let mut c = Correlator::new(Duration::from_millis(10));
        c.observe(&probe(KIND_PROBE, 2, Some(0), 0));
        c.observe(&uevent("remove", 3, None));
        let mut missed = c.expire(Instant::now() + Duration::from_millis(50));
        missed.sort_by_key(|(k, _)| k.pf);
        assert_eq!(
            missed,
            vec![
                (
                    DeviceEvent {
                        added: true,
                        pf: 2,
                        vf: Some(0)
                    },
                    "ebpf"
                ),
                (
                    DeviceEvent {
                        added: false,
                        pf: 3,
                        vf: None
                    },
                    "uevent"
                ),
            ]
        );
        // Received while detached: nothing is expected of eBPF.
        c.observe(&uevent_when("add", 4, None, false));
        assert!(c.expire(Instant::now() + Duration::from_secs(1)).is_empty());
    }
}
