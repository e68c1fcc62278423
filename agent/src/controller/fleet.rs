//! The cluster as the controller sees it, and what follows from it: the
//! fleet metrics and the slices to clean up. Pure: objects and a clock in,
//! numbers and decisions out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

pub use crate::claims::allocated_devices;
use crate::heartbeat;

/// Everything the watches hold.
#[derive(Default, Clone)]
pub struct Cluster {
    pub slices: Vec<Arc<ResourceSlice>>,
    pub claims: Vec<Arc<ResourceClaim>>,
    pub classes: Vec<Arc<DeviceClass>>,
    pub nodes: Vec<Arc<Node>>,
    /// The node agents' heartbeat Leases (holder = node name).
    pub agents: Vec<Arc<Lease>>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub driver: String,
    /// How long a node agent may be gone (its Lease expired) before its
    /// slices are deleted; also how long an out-of-date slice may stay.
    pub agent_grace: Duration,
}

/// The state of a claim, one at a time, in the order a claim goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClaimState {
    /// Not allocated yet.
    Pending,
    /// Allocated, no pod reserved for it.
    Allocated,
    /// Allocated and reserved for a pod, not yet prepared on the node.
    Reserved,
    /// The node agent reported its devices prepared (`status.devices`).
    Prepared,
}

impl ClaimState {
    pub const ALL: [ClaimState; 4] = [
        ClaimState::Pending,
        ClaimState::Allocated,
        ClaimState::Reserved,
        ClaimState::Prepared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Allocated => "allocated",
            ClaimState::Reserved => "reserved",
            ClaimState::Prepared => "prepared",
        }
    }
}

fn secs_since(t: Timestamp, now: Timestamp) -> f64 {
    (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0
}

/// Whether a DeviceClass selects this driver's devices: one of its CEL
/// selectors compares `device.driver` with our name.
pub fn class_is_ours(class: &DeviceClass, driver: &str) -> bool {
    let quoted = [format!("\"{driver}\""), format!("'{driver}'")];
    class.spec.iter().flat_map(|s| s.selectors.iter().flatten()).any(|s| {
        s.cel.as_ref().is_some_and(|c| {
            c.expression.contains("device.driver") && quoted.iter().any(|q| c.expression.contains(q.as_str()))
        })
    })
}

/// The DeviceClasses a claim requests (exact requests and alternatives).
pub fn claim_classes(claim: &ResourceClaim) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in claim
        .spec
        .iter()
        .flat_map(|s| s.devices.iter())
        .flat_map(|d| d.requests.iter().flatten())
    {
        if let Some(e) = &r.exactly {
            out.insert(e.device_class_name.clone());
        }
        for s in r.first_available.iter().flatten() {
            out.insert(s.device_class_name.clone());
        }
    }
    out
}

pub fn claim_state(claim: &ResourceClaim, driver: &str) -> ClaimState {
    let Some(status) = &claim.status else {
        return ClaimState::Pending;
    };
    if status.allocation.is_none() {
        return ClaimState::Pending;
    }
    let prepared = status.devices.iter().flatten().any(|d| {
        d.driver == driver
            && d.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    });
    if prepared {
        ClaimState::Prepared
    } else if status.reserved_for.as_ref().is_some_and(|r| !r.is_empty()) {
        ClaimState::Reserved
    } else {
        ClaimState::Allocated
    }
}

/// The classes a claim is counted under, if it concerns this driver at all:
/// it requests one of our classes, or holds one of our devices.
pub fn claim_labels(claim: &ResourceClaim, driver: &str, ours: &BTreeSet<String>) -> Vec<String> {
    let classes = claim_classes(claim);
    let requested: Vec<String> = classes.iter().filter(|c| ours.contains(*c)).cloned().collect();
    if !requested.is_empty() {
        return requested;
    }
    if allocated_devices(claim, driver).next().is_some() {
        return if classes.is_empty() {
            vec![String::new()]
        } else {
            classes.into_iter().collect()
        };
    }
    Vec::new()
}

/// A node agent's heartbeat Lease: node name, the renewTime it carries (the
/// agent's clock) and its duration. None for a fleet's own Lease (it is
/// no node's: [`heartbeat::FLEET_LABEL`]).
pub fn agent_heartbeat(lease: &Lease) -> Option<(String, Timestamp, SignedDuration)> {
    if is_fleet(lease) {
        return None;
    }
    let spec = lease.spec.as_ref()?;
    let node = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let (renew, duration) = renewal(lease)?;
    Some((node, renew, duration))
}

fn is_fleet(lease: &Lease) -> bool {
    lease.labels().contains_key(heartbeat::FLEET_LABEL)
}

fn renewal(lease: &Lease) -> Option<(Timestamp, SignedDuration)> {
    let spec = lease.spec.as_ref()?;
    let renew = spec.renew_time.as_ref()?.0;
    let duration = spec.lease_duration_seconds.unwrap_or(0).max(0) as i64;
    Some((renew, SignedDuration::from_secs(duration)))
}

/// The fleet Lease a node's Lease beats by ([`heartbeat::VIA`]), if any.
pub fn via(lease: &Lease) -> Option<&str> {
    lease.annotations().get(heartbeat::VIA).map(String::as_str)
}

/// A node's heartbeat as its Leases give it.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    pub node: String,
    /// The Lease whose renewals are judged: the node's own, or the fleet's
    /// it names when that Lease is there.
    pub source: String,
    pub renewed: Timestamp,
    pub duration: SignedDuration,
}

/// `lease`'s heartbeat, `fleet` being the Lease it names in
/// [`heartbeat::VIA`] (looked up by the caller): a fleet's node beats with
/// its fleet; with that Lease gone, by its own renewTime (written when the
/// fleet took the node), so it expires then.
pub fn beat_of(lease: &Lease, fleet: Option<&Lease>) -> Option<Beat> {
    let (node, renewed, duration) = agent_heartbeat(lease)?;
    let own = lease.metadata.name.clone().unwrap_or_else(|| node.clone());
    let fleet = fleet
        .filter(|f| is_fleet(f) && via(lease) == f.metadata.name.as_deref())
        .and_then(|f| Some((f.metadata.name.clone()?, renewal(f)?)));
    Some(match fleet {
        Some((source, (renewed, duration))) => Beat {
            node,
            source,
            renewed,
            duration,
        },
        None => Beat {
            node,
            source: own,
            renewed,
            duration,
        },
    })
}

/// Every node's heartbeat in `agents`.
pub fn beats(agents: &[Arc<Lease>]) -> Vec<Beat> {
    let fleets: HashMap<&str, &Lease> = agents
        .iter()
        .filter(|l| is_fleet(l))
        .filter_map(|l| Some((l.metadata.name.as_deref()?, l.as_ref())))
        .collect();
    agents
        .iter()
        .filter_map(|l| beat_of(l, via(l).and_then(|v| fleets.get(v).copied())))
        .collect()
}

/// `t + d`, or the end of time where that overflows: Lease and object
/// times come from the API (an agent may write any renewTime on its own
/// Lease), and no value from the API may panic the controller.
pub fn later(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn attr_string<'a>(d: &'a k8s_openapi::api::resource::v1::Device, name: &str) -> Option<&'a str> {
    d.attributes.as_ref()?.get(name)?.string.as_deref()
}

fn attr_int(d: &k8s_openapi::api::resource::v1::Device, name: &str) -> Option<i64> {
    d.attributes.as_ref()?.get(name)?.int
}

/// The newest generation of each pool of ours.
fn pool_generations<'a>(slices: impl Iterator<Item = &'a ResourceSlice>) -> BTreeMap<&'a str, i64> {
    let mut out: BTreeMap<&str, i64> = BTreeMap::new();
    for s in slices {
        let g = out.entry(s.spec.pool.name.as_str()).or_insert(s.spec.pool.generation);
        *g = (*g).max(s.spec.pool.generation);
    }
    out
}

/// The fleet metrics, computed from one view of the cluster.
#[derive(Debug, Default, PartialEq)]
pub struct Fleet {
    /// (node, type, numa node, allocated|free) → devices.
    pub devices: BTreeMap<(String, String, String, &'static str), u64>,
    /// (device class, state) → claims.
    pub claims: BTreeMap<(String, &'static str), u64>,
    /// device class → age of its oldest pending claim.
    pub oldest_pending: BTreeMap<String, f64>,
    /// node → slices of the current pool generation.
    pub node_slices: BTreeMap<String, u64>,
    /// node → slices of an older pool generation.
    pub stale_slices: BTreeMap<String, u64>,
    /// node → its agent's heartbeat is fresh.
    pub agent_up: BTreeMap<String, bool>,
    /// (node, taint effect) → devices carrying a taint of that effect
    /// (every effect listed for every node that publishes).
    pub tainted: BTreeMap<(String, &'static str), u64>,
    /// node → shared counter sets published (PF/VF exclusion).
    pub counter_sets: BTreeMap<String, u64>,
    /// node (pool) → allocated devices whose binding conditions are not
    /// settled yet: pods the scheduler holds in PreBind (every node that
    /// publishes listed).
    pub binding_waits: BTreeMap<String, u64>,
    /// node (pool) → how long the oldest of those has waited since its
    /// allocation.
    pub oldest_binding_wait: BTreeMap<String, f64>,
    /// Nodes whose agent is up and that publish no slice.
    pub nodes_without_slices: u64,
    pub nodes: u64,
    pub device_classes: u64,
}

pub fn fleet(c: &Cluster, driver: &str, seen: &Seen, now: Timestamp) -> Fleet {
    let mut f = Fleet {
        nodes: c.nodes.len() as u64,
        ..Default::default()
    };
    let ours: BTreeSet<String> = c
        .classes
        .iter()
        .filter(|k| class_is_ours(k, driver))
        .map(|k| k.name_any())
        .collect();
    f.device_classes = ours.len() as u64;
    for class in &ours {
        for s in ClaimState::ALL {
            f.claims.insert((class.clone(), s.as_str()), 0);
        }
    }
    let mut allocated: HashSet<(&str, &str)> = HashSet::new();
    for claim in &c.claims {
        allocated.extend(allocated_devices(claim, driver));
        let allocated_at = claim
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.allocation_timestamp.as_ref());
        for r in crate::claims::results(claim, driver) {
            if r.binding_conditions.as_ref().is_some_and(|b| !b.is_empty()) && !crate::claims::binding_settled(claim, r)
            {
                *f.binding_waits.entry(r.pool.clone()).or_insert(0) += 1;
                let age = allocated_at.map_or(0.0, |t| secs_since(t.0, now));
                let e = f.oldest_binding_wait.entry(r.pool.clone()).or_insert(0.0);
                *e = e.max(age);
            }
        }
        let state = claim_state(claim, driver);
        for class in claim_labels(claim, driver, &ours) {
            if state == ClaimState::Pending
                && let Some(created) = claim.metadata.creation_timestamp.as_ref()
            {
                let age = secs_since(created.0, now);
                let e = f.oldest_pending.entry(class.clone()).or_insert(0.0);
                *e = e.max(age);
            }
            *f.claims.entry((class, state.as_str())).or_insert(0) += 1;
        }
    }
    for class in &ours {
        f.oldest_pending.entry(class.clone()).or_insert(0.0);
    }
    let mine: Vec<&ResourceSlice> = c
        .slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.spec.driver == driver && s.spec.node_name.is_some())
        .collect();
    let generations = pool_generations(mine.iter().copied());
    for s in &mine {
        let node = s.spec.node_name.clone().unwrap_or_default();
        if s.spec.pool.generation < generations[s.spec.pool.name.as_str()] {
            *f.stale_slices.entry(node).or_insert(0) += 1;
            continue;
        }
        *f.node_slices.entry(node.clone()).or_insert(0) += 1;
        f.binding_waits.entry(node.clone()).or_insert(0);
        f.oldest_binding_wait.entry(node.clone()).or_insert(0.0);
        *f.counter_sets.entry(node.clone()).or_insert(0) += s.spec.shared_counters.as_ref().map_or(0, Vec::len) as u64;
        for effect in crate::slices::TAINT_EFFECTS {
            f.tainted.entry((node.clone(), effect)).or_insert(0);
        }
        for d in s.spec.devices.iter().flatten() {
            for effect in crate::slices::TAINT_EFFECTS {
                if d.taints.iter().flatten().any(|t| t.effect == effect) {
                    *f.tainted.entry((node.clone(), effect)).or_insert(0) += 1;
                }
            }
            let kind = attr_string(d, "deviceType").unwrap_or("unknown").to_string();
            let numa = attr_int(d, "numaNode").map(|n| n.to_string()).unwrap_or_default();
            let state = if allocated.contains(&(s.spec.pool.name.as_str(), d.name.as_str())) {
                "allocated"
            } else {
                "free"
            };
            *f.devices.entry((node.clone(), kind, numa, state)).or_insert(0) += 1;
        }
    }
    for (node, beat) in seen.heartbeats(c, now) {
        let up = beat.expiry >= now;
        f.agent_up.insert(node.clone(), up);
        if up && !f.node_slices.contains_key(&node) {
            f.nodes_without_slices += 1;
            f.node_slices.insert(node, 0);
        }
    }
    f
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, help: &str, rows: impl IntoIterator<Item = (String, f64)>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
    out.push('\n');
}

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

impl Fleet {
    /// Prometheus text exposition of the fleet gauges.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "mock_accel_fleet_devices",
            "Devices of this driver published in current ResourceSlices, by node, type (pf/vf), NUMA node and state (allocated/free).",
            self.devices.iter().map(|((node, kind, numa, state), n)| {
                (
                    labels(&[("node", node), ("type", kind), ("numa_node", numa), ("state", state)]),
                    *n as f64,
                )
            }),
        );
        family(
            out,
            "mock_accel_fleet_claims",
            "ResourceClaims that request this driver's DeviceClasses or hold its devices, by DeviceClass and state (pending/allocated/reserved/prepared).",
            self.claims
                .iter()
                .map(|((class, state), n)| (labels(&[("device_class", class), ("state", state)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_oldest_pending_claim_seconds",
            "Age of the oldest claim still waiting for allocation, by DeviceClass (0 when none waits).",
            self.oldest_pending
                .iter()
                .map(|(class, age)| (labels(&[("device_class", class)]), *age)),
        );
        family(
            out,
            "mock_accel_fleet_node_slices",
            "Current-generation ResourceSlices of this driver per node (0: the agent runs but publishes nothing).",
            self.node_slices
                .iter()
                .map(|(node, n)| (labels(&[("node", node)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_stale_slices",
            "ResourceSlices of this driver whose pool generation is out of date, per node.",
            self.stale_slices
                .iter()
                .map(|(node, n)| (labels(&[("node", node)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_tainted_devices",
            "Devices of this driver in current ResourceSlices carrying a taint, by node and effect (NoSchedule/NoExecute: not allocated to claims that do not tolerate it; None: informational).",
            self.tainted
                .iter()
                .map(|((node, effect), n)| (labels(&[("node", node), ("effect", effect)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_partitionable_pfs",
            "PFs published as partitionable devices (a shared counter set each, for PF/VF exclusion) in current ResourceSlices, per node (0: published without counters).",
            self.counter_sets
                .iter()
                .map(|(node, n)| (labels(&[("node", node)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_binding_waits",
            "Allocated devices of this driver whose binding conditions (fabric attach) are not settled yet, per node: pods the scheduler holds before binding.",
            self.binding_waits
                .iter()
                .map(|(node, n)| (labels(&[("node", node)]), *n as f64)),
        );
        family(
            out,
            "mock_accel_fleet_oldest_binding_wait_seconds",
            "How long the oldest of those has waited since its allocation, per node (0 when none waits).",
            self.oldest_binding_wait
                .iter()
                .map(|(node, age)| (labels(&[("node", node)]), *age)),
        );
        family(
            out,
            "mock_accel_fleet_agent_up",
            "1 when the node agent's heartbeat Lease is fresh, 0 when it expired.",
            self.agent_up
                .iter()
                .map(|(node, up)| (labels(&[("node", node)]), if *up { 1.0 } else { 0.0 })),
        );
        family(
            out,
            "mock_accel_fleet_nodes_without_slices",
            "Nodes whose agent is up but that publish no ResourceSlice of this driver.",
            [(String::new(), self.nodes_without_slices as f64)],
        );
        family(
            out,
            "mock_accel_fleet_nodes",
            "Nodes in the cluster.",
            [(String::new(), self.nodes as f64)],
        );
        family(
            out,
            "mock_accel_fleet_device_classes",
            "DeviceClasses that select this driver's devices.",
            [(String::new(), self.device_classes as f64)],
        );
    }
}

/// Why a slice is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Its Node is gone (or was re-created: the slice's owner is the old one).
    NodeGone,
    /// Its node agent's heartbeat expired longer ago than the grace period.
    AgentGone,
    /// Its pool moved to a newer generation longer ago than the grace period.
    StaleGeneration,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NodeGone => "NodeGone",
            Reason::AgentGone => "AgentGone",
            Reason::StaleGeneration => "StaleGeneration",
        }
    }
}

/// One slice to delete, with the uid and resourceVersion it was judged at
/// (the delete is conditional on them).
#[derive(Debug, Clone, PartialEq)]
pub struct Cleanup {
    pub slice: String,
    pub uid: String,
    pub resource_version: String,
    pub node: String,
    /// The Node uid the slice's owner reference names.
    pub owner_uid: Option<String>,
    /// For [`Reason::AgentGone`]: the heartbeat's renewTime judged expired
    /// (the API must still show it unchanged).
    pub renewed: Option<Timestamp>,
    pub reason: Reason,
    pub message: String,
}

/// What this controller has seen, by its own clock: times on objects are
/// other machines' clocks, and a decision to delete must not rest on them.
/// - Each pool's newest generation, and when it first saw it: a slice of an
///   older generation is stale only once the pool has been at a newer one for
///   the grace period, not when the slice itself is old (an agent rewriting a
///   pool of k slices moves them to the new generation one by one).
/// - Each heartbeat Lease judged (a node's, or a fleet's for all its
///   nodes), and when it last saw its renewTime change: a
///   heartbeat expires a lease duration after that, whatever the renewTime
///   says (an agent's clock may be hours off either way), as client-go's
///   leader election and the node lifecycle controller judge Leases.
#[derive(Debug, Default)]
pub struct Seen {
    generations: BTreeMap<String, (i64, Timestamp)>,
    heartbeats: BTreeMap<String, (Timestamp, Timestamp)>,
}

/// An agent's heartbeat as this controller judges it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeat {
    /// The renewTime on the Lease (the agent's clock), as last seen.
    pub renewed: Timestamp,
    /// When it expires by this controller's clock: a lease duration after
    /// the renewTime was first seen at this value.
    pub expiry: Timestamp,
}

impl Seen {
    /// Notes the pools' newest generations and the heartbeats' renewTimes
    /// as of `now`; forgets pools and heartbeats gone.
    pub fn observe(&mut self, c: &Cluster, driver: &str, now: Timestamp) {
        let newest = pool_generations(c.slices.iter().map(|s| s.as_ref()).filter(|s| s.spec.driver == driver));
        self.generations.retain(|pool, _| newest.contains_key(pool.as_str()));
        for (pool, g) in newest {
            if self.generations.get(pool).is_none_or(|(seen, _)| *seen != g) {
                self.generations.insert(pool.to_string(), (g, now));
            }
        }
        let sources: BTreeMap<String, Timestamp> =
            beats(&c.agents).into_iter().map(|b| (b.source, b.renewed)).collect();
        self.heartbeats.retain(|source, _| sources.contains_key(source));
        for (source, renewed) in sources {
            if self.heartbeats.get(&source).is_none_or(|(seen, _)| *seen != renewed) {
                self.heartbeats.insert(source, (renewed, now));
            }
        }
    }

    /// Notes a heartbeat Lease's change as it arrives; says whether it was
    /// only the renewal of a heartbeat already seen (a newer renewTime of a
    /// Lease judged, a node's or a fleet's), which no pass needs to see at
    /// once: it moves those agents' deadline later, and the pass sleeping
    /// until the earliest deadline judges it from this observation. A new
    /// heartbeat, or anything else, is for a pass.
    pub fn renewal(&mut self, lease: &Lease, now: Timestamp) -> bool {
        let (Some(name), Some((renewed, _))) = (lease.metadata.name.as_deref(), renewal(lease)) else {
            return false;
        };
        match self.heartbeats.get_mut(name) {
            Some(beat) if beat.0 != renewed => {
                *beat = (renewed, now);
                true
            }
            _ => false,
        }
    }

    /// Since when the pool has been at its newest generation.
    fn since(&self, pool: &str) -> Option<Timestamp> {
        self.generations.get(pool).map(|(_, t)| *t)
    }

    /// The heartbeats of `c`, by node. One not observed at its current
    /// renewTime yet counts as renewed `now`.
    pub fn heartbeats(&self, c: &Cluster, now: Timestamp) -> BTreeMap<String, Heartbeat> {
        beats(&c.agents)
            .into_iter()
            .map(|b| {
                let at = match self.heartbeats.get(&b.source) {
                    Some((seen, at)) if *seen == b.renewed => *at,
                    _ => now,
                };
                (
                    b.node,
                    Heartbeat {
                        renewed: b.renewed,
                        expiry: later(at, b.duration),
                    },
                )
            })
            .collect()
    }
}

/// The slices of this driver to delete.
pub fn plan(c: &Cluster, p: &Policy, seen: &Seen, now: Timestamp) -> Vec<Cleanup> {
    let nodes: BTreeMap<String, Option<String>> = c.nodes.iter().map(|n| (n.name_any(), n.uid())).collect();
    let agents = seen.heartbeats(c, now);
    let grace = SignedDuration::try_from(p.agent_grace).unwrap_or_default();
    let mine: Vec<&ResourceSlice> = c
        .slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.spec.driver == p.driver && s.metadata.deletion_timestamp.is_none())
        .collect();
    let generations = pool_generations(mine.iter().copied());
    let mut out = Vec::new();
    for s in mine {
        let Some(node) = s.spec.node_name.clone() else {
            continue;
        };
        let owner = s
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Node" && o.api_version == "v1")
            .map(|o| o.uid.clone());
        let found = nodes.get(&node);
        let mut renewed = None;
        let (reason, message) = match (found, &owner) {
            (None, _) => (Reason::NodeGone, format!("its Node {node} no longer exists")),
            (Some(Some(uid)), Some(owner)) if uid != owner => (
                Reason::NodeGone,
                format!("its Node {node} was deleted and re-created (owner uid {owner}, now {uid})"),
            ),
            _ => match agents.get(&node) {
                Some(beat) if later(beat.expiry, grace) < now => {
                    renewed = Some(beat.renewed);
                    (
                        Reason::AgentGone,
                        format!(
                            "the {} agent on {node} has not renewed its heartbeat for {:.0}s past its lease (last renewTime {}, grace {}s)",
                            p.driver,
                            secs_since(beat.expiry, now),
                            beat.renewed,
                            p.agent_grace.as_secs()
                        ),
                    )
                }
                // A heartbeat, expired or not, but within its grace: the
                // agent is (or may still be) rewriting its pool. Never touch it.
                Some(_) => continue,
                None => {
                    let newest = generations[s.spec.pool.name.as_str()];
                    let old = s.spec.pool.generation < newest
                        && seen.since(&s.spec.pool.name).is_some_and(|t| later(t, grace) < now);
                    if !old {
                        continue;
                    }
                    (
                        Reason::StaleGeneration,
                        format!(
                            "pool {} has been at generation {newest} for longer than {}s and no agent heartbeat is there; this slice (generation {}) was left behind",
                            s.spec.pool.name,
                            p.agent_grace.as_secs(),
                            s.spec.pool.generation
                        ),
                    )
                }
            },
        };
        out.push(Cleanup {
            slice: s.name_any(),
            uid: s.uid().unwrap_or_default(),
            resource_version: s.resource_version().unwrap_or_default(),
            node,
            owner_uid: owner,
            renewed,
            reason,
            message,
        });
    }
    out
}

/// Of `owners` (the nodes owning PFs on a shared kernel), those whose Node
/// is gone and whose agent is gone too, with why: no heartbeat, or one
/// expired longer ago than the grace period (the rules slices are deleted
/// by; a Node deleted while its agent still runs keeps its PFs until the
/// agent stops).
pub fn gone_owners<'a>(
    c: &Cluster,
    p: &Policy,
    seen: &Seen,
    now: Timestamp,
    owners: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    let nodes: BTreeSet<String> = c.nodes.iter().map(|n| n.name_any()).collect();
    let agents = seen.heartbeats(c, now);
    let grace = SignedDuration::try_from(p.agent_grace).unwrap_or_default();
    owners
        .into_iter()
        .filter(|o| !nodes.contains(*o))
        .filter_map(|o| {
            let why = match agents.get(o) {
                Some(beat) if later(beat.expiry, grace) >= now => return None,
                Some(beat) => format!(
                    "its Node is gone and its agent has not renewed its heartbeat for {:.0}s past its lease (grace {}s)",
                    secs_since(beat.expiry, now),
                    p.agent_grace.as_secs()
                ),
                None => "its Node is gone and no heartbeat of its agent is there".to_string(),
            };
            Some((o.to_string(), why))
        })
        .collect()
}

/// When the next heartbeat outlives its grace period, or the next pool
/// without a heartbeat has been at a newer generation for it (time-driven
/// clean-ups no watch event announces).
pub fn next_deadline(c: &Cluster, p: &Policy, seen: &Seen, now: Timestamp) -> Option<Timestamp> {
    let grace = SignedDuration::try_from(p.agent_grace).unwrap_or_default();
    let mine: Vec<&ResourceSlice> = c
        .slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| s.spec.driver == p.driver)
        .collect();
    let nodes_with_slices: BTreeSet<&str> = mine.iter().filter_map(|s| s.spec.node_name.as_deref()).collect();
    let agents = seen.heartbeats(c, now);
    let heartbeats = agents
        .iter()
        .filter(|(node, _)| nodes_with_slices.contains(node.as_str()))
        .map(|(_, beat)| later(beat.expiry, grace));
    let generations = pool_generations(mine.iter().copied());
    let stale = mine
        .iter()
        .filter(|s| s.spec.node_name.as_ref().is_some_and(|n| !agents.contains_key(n)))
        .filter(|s| s.spec.pool.generation < generations[s.spec.pool.name.as_str()])
        .filter_map(|s| seen.since(&s.spec.pool.name))
        .map(|t| later(t, grace));
    heartbeats.chain(stale).filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    const D: &str = "mock-accel.example.com";

    fn slice(
        name: &str,
        node: &str,
        node_uid: &str,
        generation: i64,
        created: &str,
        devices: &[(&str, &str, i64)],
    ) -> Arc<ResourceSlice> {
        let devices: Vec<_> = devices
            .iter()
            .map(|(n, t, numa)| json!({"name": n, "attributes": {"deviceType": {"string": t}, "numaNode": {"int": numa}}}))
            .collect();
        obj(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
                         "creationTimestamp": created,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]},
            "spec": {"driver": D, "nodeName": node, "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                     "devices": devices}
        }))
    }

    fn node(name: &str, uid: &str) -> Arc<Node> {
        obj(json!({"metadata": {"name": name, "uid": uid}}))
    }

    fn agent(node: &str, renewed: &str, seconds: i32) -> Arc<Lease> {
        obj(json!({"metadata": {"name": format!("{D}-{node}")},
                   "spec": {"holderIdentity": node, "renewTime": renewed, "leaseDurationSeconds": seconds}}))
    }

    fn class(name: &str, expr: &str) -> Arc<DeviceClass> {
        obj(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}}))
    }

    fn claim(name: &str, class: &str, created: &str, status: serde_json::Value) -> Arc<ResourceClaim> {
        obj(
            json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                   "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": class}}]}},
                   "status": status}),
        )
    }

    fn alloc(pool: &str, device: &str) -> serde_json::Value {
        json!({"allocation": {"devices": {"results": [{"request": "r", "driver": D, "pool": pool, "device": device}]}}})
    }

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    /// An hour before `now`, when the slices of `cluster()` were made.
    fn t0() -> Timestamp {
        "2026-11-26T11:00:00Z".parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            driver: D.into(),
            agent_grace: Duration::from_secs(300),
        }
    }

    fn secs(n: i64) -> SignedDuration {
        SignedDuration::from_secs(n)
    }

    fn renewed_at(lease: &Lease, t: Timestamp) -> Arc<Lease> {
        let mut l = lease.clone();
        l.spec.as_mut().unwrap().renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(t));
        Arc::new(l)
    }

    /// What a controller watching `c` since t0 has seen: the pools as they
    /// are, and each heartbeat's renewTime when the agent wrote it (clocks
    /// in agreement).
    fn watched(c: &Cluster) -> Seen {
        let mut seen = Seen::default();
        let mut now = c.clone();
        let long_ago = later(t0(), secs(-3600));
        now.agents = c.agents.iter().map(|l| renewed_at(l, long_ago)).collect();
        seen.observe(&now, D, t0());
        let mut order: Vec<(Timestamp, usize)> = c
            .agents
            .iter()
            .enumerate()
            .map(|(i, l)| (agent_heartbeat(l).unwrap().1, i))
            .collect();
        order.sort();
        for (t, i) in order {
            now.agents[i] = c.agents[i].clone();
            seen.observe(&now, D, t.max(t0()));
        }
        seen
    }

    fn cluster() -> Cluster {
        let t = "2026-11-26T11:00:00Z";
        let mut reserved = alloc("n1", "mock0-vf0");
        reserved["reservedFor"] = json!([{"resource": "pods", "name": "p", "uid": "u"}]);
        let mut prepared = alloc("n1", "mock0");
        prepared["devices"] = json!([{"driver": D, "pool": "n1", "device": "mock0",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared", "message": "", "lastTransitionTime": t}]}]);
        Cluster {
            slices: vec![
                slice(
                    "n1-a",
                    "n1",
                    "u1",
                    2,
                    t,
                    &[("mock0", "pf", 0), ("mock0-vf0", "vf", 0), ("mock1", "pf", 1)],
                ),
                slice("n1-old", "n1", "u1", 1, t, &[("mock0", "pf", 0)]),
                slice("n2-a", "n2", "u2", 1, t, &[("mock0", "pf", 0)]),
                slice("gone-a", "gone", "u9", 1, t, &[("mock0", "pf", 0)]),
                slice("n4-a", "n4", "old-uid", 1, t, &[]),
            ],
            nodes: vec![node("n1", "u1"), node("n2", "u2"), node("n3", "u3"), node("n4", "u4")],
            agents: vec![
                agent("n1", "2026-11-26T11:59:50Z", 40),
                agent("n2", "2026-11-26T11:50:00Z", 40),
                agent("n3", "2026-11-26T11:59:55Z", 40),
            ],
            classes: vec![
                class(
                    "mock-accel-pf",
                    &format!("device.driver == \"{D}\" && device.attributes[\"{D}\"].deviceType == \"pf\""),
                ),
                class("other", "device.driver == \"gpu.example.com\""),
            ],
            claims: vec![
                claim("waiting", "mock-accel-pf", "2026-11-26T11:59:00Z", json!({})),
                claim("got", "mock-accel-pf", t, alloc("n1", "mock1")),
                claim("in-pod", "mock-accel-pf", t, reserved),
                claim("ready", "mock-accel-pf", t, prepared),
                claim("not-ours", "other", t, json!({})),
            ],
        }
    }

    /// Devices held for their binding conditions: counted per node until
    /// the status settles them (attached, or a failure), with the oldest
    /// wait; zeros for every publishing node.
    #[test]
    fn fleet_counts_binding_waits() {
        let mut c = cluster();
        let held = |at: &str, conditions: serde_json::Value| {
            json!({"allocation": {"allocationTimestamp": at, "devices": {"results": [{
                "request": "r", "driver": D, "pool": "n1", "device": "mock1",
                "bindingConditions": ["FabricAttached"], "bindingFailureConditions": ["FabricAttachFailed"]}]}},
                "devices": [{"driver": D, "pool": "n1", "device": "mock1", "conditions": conditions}]})
        };
        let cond = |t: &str| json!([{"type": t, "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2026-11-26T11:59:00Z"}]);
        let t = "2026-11-26T11:00:00Z";
        c.claims = vec![
            claim("a", "mock-accel-pf", t, held("2026-11-26T11:59:30Z", json!([]))),
            claim("b", "mock-accel-pf", t, held("2026-11-26T11:59:50Z", json!(null))),
            claim(
                "c",
                "mock-accel-pf",
                t,
                held("2026-11-26T11:50:00Z", cond("FabricAttached")),
            ),
            claim(
                "d",
                "mock-accel-pf",
                t,
                held("2026-11-26T11:50:00Z", cond("FabricAttachFailed")),
            ),
            claim("e", "mock-accel-pf", t, alloc("n1", "mock0")),
        ];
        let f = fleet(&c, D, &watched(&c), now());
        assert_eq!(f.binding_waits.get("n1"), Some(&2));
        assert_eq!(f.binding_waits.get("n2"), Some(&0));
        assert_eq!(f.oldest_binding_wait.get("n1"), Some(&30.0));
        assert_eq!(f.oldest_binding_wait.get("n2"), Some(&0.0));
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("mock_accel_fleet_binding_waits{node=\"n1\"} 2"), "{out}");
        assert!(
            out.contains("mock_accel_fleet_oldest_binding_wait_seconds{node=\"n1\"} 30"),
            "{out}"
        );
    }

    /// Taints by node and effect (zeros for every publishing node), and
    /// counter sets per node.
    #[test]
    fn fleet_counts_taints_and_counter_sets() {
        let mut c = cluster();
        let n1 = Arc::make_mut(&mut c.slices[0]);
        n1.spec.devices.as_mut().unwrap()[2].taints = Some(vec![k8s_openapi::api::resource::v1::DeviceTaint {
            key: format!("{D}/health"),
            value: Some("failed".into()),
            effect: "NoExecute".into(),
            time_added: None,
        }]);
        let mut sets = (*c.slices[2]).clone();
        sets.metadata.name = Some("n2-counters".into());
        sets.spec.devices = None;
        sets.spec.shared_counters = Some(vec![k8s_openapi::api::resource::v1::CounterSet {
            name: "mock0".into(),
            counters: BTreeMap::new(),
        }]);
        c.slices.push(Arc::new(sets));
        let f = fleet(&c, D, &watched(&c), now());
        let tainted = |n: &str, e: &'static str| f.tainted.get(&(n.to_string(), e)).copied();
        assert_eq!(tainted("n1", "NoExecute"), Some(1));
        assert_eq!(tainted("n1", "NoSchedule"), Some(0));
        assert_eq!(tainted("n2", "None"), Some(0));
        assert_eq!(f.tainted.values().sum::<u64>(), 1);
        assert_eq!(f.counter_sets.get("n2"), Some(&1));
        assert_eq!(f.counter_sets.get("n1"), Some(&0));
        let mut out = String::new();
        f.render(&mut out);
        assert!(
            out.contains("mock_accel_fleet_tainted_devices{node=\"n1\",effect=\"NoExecute\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("mock_accel_fleet_partitionable_pfs{node=\"n2\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn fleet_counts_devices_claims_and_agents() {
        let c = cluster();
        let f = fleet(&c, D, &watched(&c), now());
        let dev = |n: &str, t: &str, numa: &str, s: &'static str| {
            f.devices.get(&(n.into(), t.into(), numa.into(), s)).copied()
        };
        assert_eq!(dev("n1", "pf", "0", "allocated"), Some(1));
        assert_eq!(dev("n1", "vf", "0", "allocated"), Some(1));
        assert_eq!(dev("n1", "pf", "1", "allocated"), Some(1));
        assert_eq!(dev("n2", "pf", "0", "free"), Some(1));
        // The old generation's device is not counted twice.
        assert_eq!(f.devices.values().sum::<u64>(), 5);
        assert_eq!(f.stale_slices, BTreeMap::from([("n1".to_string(), 1)]));
        let claims = |s: &'static str| f.claims[&("mock-accel-pf".to_string(), s)];
        assert_eq!(
            [
                claims("pending"),
                claims("allocated"),
                claims("reserved"),
                claims("prepared")
            ],
            [1, 1, 1, 1]
        );
        assert!(!f.claims.keys().any(|(c, _)| c == "other"), "{:?}", f.claims);
        assert_eq!(f.oldest_pending["mock-accel-pf"], 60.0);
        assert_eq!(f.device_classes, 1);
        assert_eq!(
            f.agent_up,
            BTreeMap::from([("n1".into(), true), ("n2".into(), false), ("n3".into(), true)])
        );
        // n3 runs an agent and publishes nothing.
        assert_eq!(f.nodes_without_slices, 1);
        assert_eq!(f.node_slices["n3"], 0);
        let mut text = String::new();
        f.render(&mut text);
        assert!(
            text.contains("mock_accel_fleet_devices{node=\"n2\",type=\"pf\",numa_node=\"0\",state=\"free\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("mock_accel_fleet_nodes_without_slices 1\n"), "{text}");
    }

    #[test]
    fn plan_deletes_what_has_no_node_or_agent() {
        let mut c = cluster();
        let seen = watched(&c);
        let plan_at = |c: &Cluster, now| plan(c, &policy(), &seen, now);
        let got = plan_at(&c, now());
        let by: BTreeMap<&str, Reason> = got.iter().map(|x| (x.slice.as_str(), x.reason)).collect();
        assert_eq!(
            by,
            BTreeMap::from([
                ("gone-a", Reason::NodeGone),
                ("n2-a", Reason::AgentGone),
                ("n4-a", Reason::NodeGone)
            ]),
            "{got:#?}"
        );
        assert_eq!(got.iter().find(|x| x.slice == "gone-a").unwrap().uid, "uid-gone-a");
        // The renewTime judged expired: the API must still show it.
        let n2 = got.iter().find(|x| x.slice == "n2-a").unwrap();
        assert_eq!(n2.renewed, Some("2026-11-26T11:50:00Z".parse().unwrap()));
        assert!(got.iter().all(|x| x.reason == Reason::AgentGone || x.renewed.is_none()));
        assert!(got.iter().any(|x| x.message.contains("re-created")));
        // n2's heartbeat expired at 11:50:40; the grace is 300 s.
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(!plan_at(&c, t("2026-11-26T11:55:39Z")).iter().any(|x| x.node == "n2"));
        assert!(
            plan_at(&c, t("2026-11-26T11:55:41Z"))
                .iter()
                .any(|x| x.node == "n2" && x.reason == Reason::AgentGone)
        );
        // A slice being deleted is left to the API.
        let mut gone = (*c.slices[3]).clone();
        gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        c.slices[3] = Arc::new(gone);
        assert!(!plan_at(&c, now()).iter().any(|x| x.slice == "gone-a"));
    }

    /// Issue 35: on a shared kernel, a node's PFs are given back only once
    /// its Node is gone and its agent is gone too (no heartbeat, or one
    /// past its grace); a deleted Node whose agent still renews keeps them.
    #[test]
    fn gone_owners_are_nodes_gone_with_their_agents() {
        let mut c = cluster();
        c.nodes.retain(|n| n.name_any() != "n2");
        c.agents.push(agent("x", "2026-11-26T11:59:50Z", 40));
        let seen = watched(&c);
        let gone = |now| {
            gone_owners(&c, &policy(), &seen, now, ["n1", "n2", "x", "nobody"])
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        // n1 has its Node; x's agent renewed 10 s ago; n2's heartbeat
        // expired at 11:50:40 and the grace is 300 s; nobody has neither.
        assert_eq!(gone(now()), ["n2", "nobody"]);
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(gone(t("2026-11-26T11:55:39Z")), ["nobody"]);
        let why = gone_owners(&c, &policy(), &seen, now(), ["n2"]);
        assert!(why[0].1.contains("past its lease"), "{why:?}");
    }

    /// Issue 18 #5: Lease values at the end of the calendar (an agent may
    /// write any renewTime on its own Lease) must not panic the controller.
    #[test]
    fn lease_times_at_the_end_of_time_do_not_panic() {
        let mut c = cluster();
        c.agents = vec![
            agent("n1", "9999-12-30T21:59:59Z", i32::MAX),
            agent("n2", "9999-12-30T21:59:59Z", 40),
        ];
        let mut seen = Seen::default();
        seen.observe(&c, D, t0());
        let got = plan(&c, &policy(), &seen, now());
        // n1's lease lasts 68 years from when it was seen; n2's renewTime
        // far ahead does not keep it alive (issue 18 #3): it has not changed
        // for longer than its 40 s and the grace.
        let gone: Vec<&str> = got
            .iter()
            .filter(|x| x.reason == Reason::AgentGone)
            .map(|x| x.node.as_str())
            .collect();
        assert_eq!(gone, ["n2"], "{got:#?}");
        assert_eq!(
            next_deadline(&c, &policy(), &seen, now()),
            Some(later(later(t0(), secs(i32::MAX as i64)), secs(300)))
        );
        let f = fleet(&c, D, &seen, now());
        assert_eq!(f.agent_up.get("n1"), Some(&true));
        // And at the very end of time nothing overflows.
        c.slices.push(slice("late", "n1", "u1", 1, "9999-12-30T21:59:59Z", &[]));
        seen.observe(&c, D, Timestamp::MAX);
        plan(&c, &policy(), &seen, Timestamp::MAX);
        next_deadline(&c, &policy(), &seen, Timestamp::MAX);
        fleet(&c, D, &seen, Timestamp::MAX);
    }

    /// Issue 18 #3: heartbeat expiry compared the agent's renewTime (its
    /// clock) with the controller's: an agent an hour behind lost its slices
    /// on every pass though it renewed every 10 s, and one an hour ahead
    /// kept them for an hour after it died. The controller now times each
    /// heartbeat from when it saw the renewTime change.
    #[test]
    fn heartbeats_are_timed_by_the_controllers_clock() {
        let mut c = cluster();
        c.agents = vec![
            agent("n1", "2026-11-26T11:00:00Z", 40),
            agent("n2", "2026-11-26T13:00:00Z", 40),
        ];
        let mut seen = Seen::default();
        let gone = |c: &Cluster, seen: &Seen, at| {
            plan(c, &policy(), seen, at)
                .into_iter()
                .filter(|x| x.reason == Reason::AgentGone)
                .map(|x| x.node)
                .collect::<BTreeSet<_>>()
        };
        // Ten minutes of n1 renewing every 10 s (its clock an hour behind);
        // n2 stopped at `now`, its last renewTime an hour ahead.
        for step in 0..=60 {
            let at = later(now(), secs(10 * step));
            c.agents[0] = renewed_at(&c.agents[0], later(t0(), secs(10 * step)));
            seen.observe(&c, D, at);
            let got = gone(&c, &seen, at);
            assert!(
                !got.contains("n1"),
                "a live agent with a slow clock judged gone at step {step}"
            );
            // n2: gone once its last renewal is 40 s + 300 s old, by our clock.
            assert_eq!(got.contains("n2"), 10 * step > 340, "n2 at step {step}");
            let f = fleet(&c, D, &seen, at);
            assert!(f.agent_up["n1"]);
            assert_eq!(f.agent_up["n2"], 10 * step <= 40, "n2 up at step {step}");
        }
        // A renewTime that goes back (the agent's clock stepped back) is a
        // renewal all the same.
        c.agents[1] = renewed_at(&c.agents[1], t0());
        seen.observe(&c, D, later(now(), secs(601)));
        assert!(!gone(&c, &seen, later(now(), secs(601))).contains("n2"));
    }

    /// A renewal noted as it arrives, with no pass: the agent is judged from
    /// it at the next pass (the deadline pass), not from the pass before.
    #[test]
    fn renewals_noted_between_passes_count() {
        let mut c = cluster();
        c.agents = vec![agent("n1", "2026-11-26T12:00:00Z", 40)];
        let mut seen = Seen::default();
        seen.observe(&c, D, now());
        let first = next_deadline(&c, &policy(), &seen, now()).unwrap();
        assert_eq!(first, later(now(), secs(340)));
        // n1 renews every 10 s for ten minutes; the watch notes each one,
        // and no pass runs until its old deadline.
        for step in 1..=60 {
            let lease = renewed_at(&c.agents[0], later(now(), secs(10 * step)));
            assert!(seen.renewal(&lease, later(now(), secs(10 * step))), "step {step}");
            c.agents[0] = lease;
        }
        let at = later(now(), secs(601));
        seen.observe(&c, D, at);
        assert!(
            plan(&c, &policy(), &seen, at)
                .iter()
                .all(|x| x.reason != Reason::AgentGone)
        );
        // Its deadline: from the last renewal noted, not from the pass.
        assert_eq!(
            next_deadline(&c, &policy(), &seen, at),
            Some(later(now(), secs(600 + 340)))
        );
        // Not a renewal: the same renewTime again, a Lease not seen before,
        // or one that is not a heartbeat: those are for a pass.
        assert!(!seen.renewal(&c.agents[0], at));
        assert!(!seen.renewal(&agent("n9", "2026-11-26T12:00:00Z", 40), at));
        let mut other = (*c.agents[0]).clone();
        other.spec.as_mut().unwrap().renew_time = None;
        assert!(!seen.renewal(&other, at));
    }

    fn fleet_lease(renewed: &str, seconds: i32) -> Arc<Lease> {
        obj(
            json!({"metadata": {"name": format!("{D}-fleet-x"), "labels": {heartbeat::FLEET_LABEL: "true"}},
                   "spec": {"holderIdentity": "fleet-pod_1", "renewTime": renewed, "leaseDurationSeconds": seconds}}),
        )
    }

    fn via_lease(node: &str, written: &str, fleet: &str) -> Arc<Lease> {
        let mut l = (*agent(node, written, 40)).clone();
        l.metadata.annotations = Some([(heartbeat::VIA.to_string(), fleet.to_string())].into());
        Arc::new(l)
    }

    /// A fleet's nodes beat with the fleet's one Lease: their own Leases,
    /// written once an hour ago, are never renewed, and the nodes stay
    /// alive for as long as the fleet's Lease is renewed (each renewal
    /// noted as it arrives, no pass); the fleet stopped, all its nodes go at
    /// its deadline; its Lease deleted, they go a lease and a grace after.
    /// A Lease named by a node's annotation that is not a fleet's counts for
    /// nothing (a node cannot beat with another node's Lease).
    #[test]
    fn a_fleets_nodes_beat_with_its_lease() {
        let mut c = cluster();
        let fleet_name = format!("{D}-fleet-x");
        c.agents = vec![
            fleet_lease("2026-11-26T12:00:00Z", 40),
            via_lease("n1", "2026-11-26T11:00:00Z", &fleet_name),
            via_lease("n2", "2026-11-26T11:00:00Z", &fleet_name),
            agent("n3", "2026-11-26T12:00:00Z", 40),
            via_lease("n4", "2026-11-26T11:00:00Z", &format!("{D}-n3")),
        ];
        let gone = |c: &Cluster, seen: &Seen, at| {
            plan(c, &policy(), seen, at)
                .into_iter()
                .filter(|x| x.reason == Reason::AgentGone)
                .map(|x| (x.node, x.renewed))
                .collect::<BTreeMap<_, _>>()
        };
        let mut seen = Seen::default();
        seen.observe(&c, D, now());
        let beats = beats(&c.agents);
        assert_eq!(
            beats
                .iter()
                .map(|b| (b.node.as_str(), b.source.as_str()))
                .collect::<Vec<_>>(),
            [
                ("n1", fleet_name.as_str()),
                ("n2", fleet_name.as_str()),
                ("n3", &format!("{D}-n3")),
                ("n4", &format!("{D}-n4")),
            ],
            "the fleet's Lease is no node's; n4's via is no fleet's"
        );
        // Ten minutes of the fleet renewing every 10 s, noted as it comes.
        for step in 1..=60 {
            let at = later(now(), secs(10 * step));
            let lease = renewed_at(&c.agents[0], at);
            assert!(seen.renewal(&lease, at), "step {step}");
            c.agents[0] = lease;
        }
        let at = later(now(), secs(601));
        seen.observe(&c, D, at);
        let got = gone(&c, &seen, at);
        assert!(!got.contains_key("n1") && !got.contains_key("n2"), "{got:?}");
        let f = fleet(&c, D, &seen, at);
        assert!(f.agent_up["n1"] && f.agent_up["n2"]);
        assert!(!f.agent_up["n4"], "n4's own Lease expired long ago");
        assert_eq!(
            next_deadline(&c, &policy(), &seen, at),
            Some(later(now(), secs(600 + 340))),
            "the fleet's deadline: its last renewal noted + lease + grace"
        );
        // The fleet stops: its nodes go together at its deadline, judged by
        // the fleet's renewTime (what `confirm` reads again).
        let last = renewal(&c.agents[0]).unwrap().0;
        assert!(!gone(&c, &seen, later(now(), secs(939))).contains_key("n1"));
        let got = gone(&c, &seen, later(now(), secs(941)));
        assert_eq!(got.get("n1"), Some(&Some(last)), "{got:?}");
        assert_eq!(got.get("n2"), Some(&Some(last)), "{got:?}");
        let live = c.agents[0].clone();
        assert_eq!(beat_of(&c.agents[1], Some(&live)).map(|b| b.renewed), Some(last));
        // Its Lease deleted: each node by its own Lease, from when that is
        // first judged (a lease and the grace after).
        c.agents.remove(0);
        let t = later(now(), secs(700));
        seen.observe(&c, D, t);
        assert!(!gone(&c, &seen, later(t, secs(339))).contains_key("n1"));
        assert!(gone(&c, &seen, later(t, secs(341))).contains_key("n1"));
    }

    /// Issue 18 #1: an agent rewriting a pool of old slices moves them to the
    /// new generation one by one; the old ones were judged stale by their own
    /// age and deleted under it (n1-old, made an hour ago, went at once).
    #[test]
    fn a_pool_being_rewritten_is_left_to_its_agent() {
        let c = cluster();
        // n1's agent heartbeats (or is within its grace): its pool is never
        // touched, though it has been at generation 2 beside an old slice
        // for an hour.
        let seen = watched(&c);
        for at in [now(), later(now(), secs(300))] {
            let got = plan(&c, &policy(), &seen, at);
            assert!(!got.iter().any(|x| x.node == "n1"), "{got:#?}");
        }

        // Without a heartbeat Lease, the clock starts when this controller
        // first sees the newer generation, not at the slice's creation.
        let mut c = c;
        c.agents
            .retain(|l| l.spec.as_ref().unwrap().holder_identity.as_deref() != Some("n1"));
        let mut seen = Seen::default();
        seen.observe(&c, D, now());
        let stale = |c: &Cluster, seen: &Seen, at| {
            plan(c, &policy(), seen, at)
                .into_iter()
                .filter(|x| x.reason == Reason::StaleGeneration)
                .map(|x| x.slice)
                .collect::<Vec<_>>()
        };
        assert!(stale(&c, &seen, now()).is_empty());
        assert!(stale(&c, &seen, later(now(), secs(299))).is_empty());
        assert_eq!(stale(&c, &seen, later(now(), secs(301))), ["n1-old"]);
        assert_eq!(
            next_deadline(&c, &policy(), &seen, now()),
            Some(later(now(), secs(300)))
        );

        // A newer generation restarts the clock.
        let mut bumped = (*c.slices[0]).clone();
        bumped.spec.pool.generation = 3;
        c.slices[0] = Arc::new(bumped);
        seen.observe(&c, D, later(now(), secs(200)));
        assert!(stale(&c, &seen, later(now(), secs(301))).is_empty());
        assert_eq!(stale(&c, &seen, later(now(), secs(501))), ["n1-old"]);
    }

    #[test]
    fn classes_are_ours_by_their_driver_comparison() {
        assert!(class_is_ours(&class("a", &format!("device.driver == '{D}'")), D));
        assert!(!class_is_ours(
            &class("b", "device.driver == \"mock-accel.example.com.evil\""),
            D
        ));
        assert!(!class_is_ours(
            &class("c", &format!("device.attributes[\"{D}\"].deviceType == \"pf\"")),
            D
        ));
    }
}
