//! From an inventory to ResourceSlices, and from what the API holds to the
//! fewest writes that make it match. Pure: no I/O, no clock.
//!
//! One pool per node (pool name = node name). Devices are packed into
//! slices of at most `max_devices`, a PF and its VFs kept together so that
//! a hot-plug touches one slice. When a change touches one slice and the
//! slice count stays the same, that slice is updated in place; otherwise
//! the pool generation is bumped and every slice is written, so consumers
//! never mix devices of two layouts.
//!
//! PF/VF exclusion (partitionable devices, KEP-4815): each PF has a counter
//! set named after it holding its memory; the PF consumes all of it, each
//! VF its share, so no allocation can hold a PF and any of its VFs, inside
//! one claim or across claims, and VFs share the PF's memory. Since 1.35 a
//! slice holds devices or counters, never both: the counter sets go first,
//! in slices of their own (8 sets per slice), and device slices hold at
//! most 64 devices when they consume counters.
//!
//! Device taints from health (KEP-5055): a function whose module says
//! `health=failed` carries the taint `<driver>/health=failed` with the
//! chosen effect (NoSchedule: the scheduler no longer picks it for claims
//! that do not tolerate it; NoExecute: running pods that use it are evicted
//! too), `degraded` an informational one (effect None); the taint goes with
//! recovery. The time the API server gave a taint is kept while it stays.
//!
//! Compatibility groups (KEP-5963), when chosen (with counters): a PF's
//! counter consumption names the mode it is used in — `pf` for the PF
//! itself (whole, or in memory shares), `sriov` for its VFs — and the
//! scheduler co-allocates devices on one counter set only when their groups
//! intersect, so the modes of one physical device never mix. The counters
//! already keep them apart (a PF takes its whole set); the groups say it as
//! the modes it is, for schedulers and tools that read them.
//!
//! Consumable capacity (KEP-5075), when chosen: each PF may be allocated to
//! several claims at once (`allowMultipleAllocations`), each taking a share
//! of its memory in whole grains (1Gi, or 1Mi for memory that is not whole
//! GiB); a claim that names no amount takes all of it. The scheduler never
//! gives out more than the PF has, and a shared PF takes its counter set
//! whole at its first share, so its VFs stay excluded.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Counter, CounterSet, Device, DeviceAttribute, DeviceCapacity,
    DeviceCounterConsumption, DeviceTaint, NodeAllocatableOverhead, NodeAllocatableResource, ResourcePool,
    ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::claims::status::{ATTACH_FAILED_CONDITION, ATTACHED_CONDITION};
use crate::inventory::{Function, Health, Inventory, Kind};

/// The most devices a slice may hold (resource.k8s.io/v1).
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// The most devices a slice may hold when they consume counters or carry
/// taints.
pub const MAX_DEVICES_WITH_COUNTERS: usize = 64;

/// The list-typed attribute published with `--list-attributes`.
pub const LIST_ATTRIBUTE: &str = "capabilityList";
/// The most counter sets a slice may hold.
pub const MAX_COUNTER_SETS_PER_SLICE: usize = 8;
/// The compatibility group of a PF's own consumption (used whole, or in
/// memory shares), and of its VFs' (KEP-5963).
pub const GROUP_PF: &str = "pf";
pub const GROUP_SRIOV: &str = "sriov";
/// The counter every PF's set holds: its memory, shared by its VFs.
pub const MEMORY_COUNTER: &str = "memory";

/// The effects a device taint can have (resource.k8s.io/v1).
pub const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "NoExecute", "None"];

/// What a failed device's taint does to claims that do not tolerate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaintEffect {
    /// No taints in the slices (health reaches only the kubelet).
    #[value(name = "off")]
    Off,
    /// The scheduler no longer allocates it; running pods stay.
    #[value(name = "NoSchedule")]
    NoSchedule,
    /// And pods already using it are evicted (by kube-controller-manager).
    #[value(name = "NoExecute")]
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::Off => "off",
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// The key of the health taints: `<driver>/health`.
pub fn health_taint_key(driver: &str) -> String {
    format!("{driver}/health")
}

/// The taint a function's health calls for: `failed` with `effect`,
/// `degraded` informational (effect None: seen by people and tools, no
/// effect on scheduling), none when healthy or taints are off.
pub fn health_taint(f: &Function, driver: &str, effect: TaintEffect) -> Option<DeviceTaint> {
    let (value, effect) = match (f.health, effect) {
        (_, TaintEffect::Off) | (Health::Ok, _) => return None,
        (Health::Degraded, _) => ("degraded", "None"),
        (Health::Failed, e) => ("failed", e.as_str()),
    };
    Some(DeviceTaint {
        key: health_taint_key(driver),
        value: Some(value.to_string()),
        effect: effect.to_string(),
        time_added: None,
    })
}

/// Who publishes: the driver, the node and its uid (for the owner
/// reference), and whether PF/VF exclusion goes out as shared counters.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub driver: String,
    pub node: String,
    pub node_uid: String,
    pub max_devices: usize,
    pub counters: bool,
    /// The effect of a failed device's taint (off: no taints).
    pub taints: TaintEffect,
    /// PFs shared by memory (consumable capacity), unless the cluster
    /// drops the fields.
    pub shared: bool,
    /// List-typed attributes (`capabilityList`), 64 devices to a slice.
    pub lists: bool,
    /// Compatibility groups on the counter consumptions (with counters).
    pub groups: bool,
    /// Host memory each pod using a device needs beside it, in bytes
    /// (nodeAllocatableResources; None: not published).
    pub host_overhead: Option<u64>,
}

/// What one slice holds: devices, or counter sets (never both, 1.35+).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Devices(Vec<Device>),
    Counters(Vec<CounterSet>),
}

impl Content {
    /// How many devices it holds.
    pub fn devices(&self) -> usize {
        match self {
            Content::Devices(d) => d.len(),
            Content::Counters(_) => 0,
        }
    }
}

/// The labels of what a node agent writes (slices, heartbeat Lease): the
/// seed's `driver=`, the manager, and the node where it fits a label value.
pub fn labels(driver: &str, node: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("driver".to_string(), driver.to_string());
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "mock-accel-agent".to_string(),
    );
    // A label value is at most 63 characters; long node names go without.
    if node.len() <= 63 {
        labels.insert("node".to_string(), node.to_string());
    }
    labels
}

/// `mock0_vf3` → `mock0-vf3` (device names are DNS labels).
pub fn device_name(function: &str) -> String {
    function.replace('_', "-")
}

/// `resource.Quantity` canonical form of a byte count ("16Gi", "5461Mi",
/// "1500"), so the API server stores exactly what we send.
pub fn bytes_quantity(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes >= 1024
        && let Some((unit, shift)) = UNITS.iter().find(|(_, s)| bytes.is_multiple_of(1u64 << s))
    {
        return format!("{}{unit}", bytes >> shift);
    }
    // Not a whole binary unit: decimal, in the largest exact power of 1000.
    const DECIMAL: [(&str, u32); 6] = [("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3)];
    match DECIMAL
        .iter()
        .find(|(_, e)| bytes != 0 && bytes.is_multiple_of(10u64.pow(*e)))
    {
        Some((unit, e)) => format!("{}{unit}", bytes / 10u64.pow(*e)),
        None => bytes.to_string(),
    }
}

fn string(s: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.into()),
        ..Default::default()
    }
}

fn int(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..Default::default()
    }
}

/// The device a function is published as. Unqualified attribute names
/// belong to the driver's domain; `resource.kubernetes.io/` ones are the
/// upstream standard attributes.
pub fn device(f: &Function) -> Device {
    let mut attrs = BTreeMap::new();
    attrs.insert("uuid".to_string(), string(&f.uuid));
    attrs.insert("deviceType".to_string(), string(f.kind.as_str()));
    attrs.insert("pciAddress".to_string(), string(&f.pci_address));
    attrs.insert("numaNode".to_string(), int(f.numa_node as i64));
    attrs.insert("memory".to_string(), int(f.memory_bytes as i64));
    attrs.insert("capabilities".to_string(), string(&f.capabilities));
    attrs.insert("pfIndex".to_string(), int(f.pf_index as i64));
    if let Some(vf) = f.vf_index {
        attrs.insert("vfIndex".to_string(), int(vf as i64));
    }
    if let Some(pf) = &f.physfn {
        attrs.insert("physfn".to_string(), string(device_name(pf)));
    }
    attrs.insert(
        "fwVersion".to_string(),
        DeviceAttribute {
            version: Some(f.fw_version.clone()),
            ..Default::default()
        },
    );
    // pci<domain>:<bus> of the PF's bus, and the extended BDF.
    if let Some((domain_bus, _)) = f.pci_address.rsplit_once(':') {
        attrs.insert(
            "resource.kubernetes.io/pcieRoot".to_string(),
            string(format!("pci{domain_bus}")),
        );
    }
    attrs.insert("resource.kubernetes.io/pciBusID".to_string(), string(&f.pci_address));
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "memory".to_string(),
        DeviceCapacity {
            value: Quantity(bytes_quantity(f.memory_bytes)),
            ..Default::default()
        },
    );
    // Whether the function is fabric-attached, not where its attach
    // stands: an attach or detach changes no slice.
    let fabric = f.attach.is_some();
    Device {
        name: device_name(&f.name),
        attributes: Some(attrs),
        capacity: Some(capacity),
        binding_conditions: fabric.then(|| vec![ATTACHED_CONDITION.to_string()]),
        binding_failure_conditions: fabric.then(|| vec![ATTACH_FAILED_CONDITION.to_string()]),
        ..Default::default()
    }
}

/// The list-typed attributes (KEP-5491): `capabilityList`, the
/// capabilities (`compute,dma,sriov`) as a list of strings.
pub fn list_attributes(d: &mut Device, f: &Function) {
    let list: Vec<String> = f
        .capabilities
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        return;
    }
    d.attributes.get_or_insert_default().insert(
        LIST_ATTRIBUTE.to_string(),
        DeviceAttribute {
            strings: Some(list),
            ..Default::default()
        },
    );
}

/// Host memory a pod using the device needs beside it (KEP-5517): the
/// scheduler counts it against the node's allocatable memory once per pod
/// referencing the claim, and the kubelet adds it to the pod's cgroup.
pub fn host_memory_overhead(d: &mut Device, bytes: u64) {
    d.node_allocatable_resources = Some(BTreeMap::from([(
        "memory".to_string(),
        NodeAllocatableResource {
            mapping: None,
            overhead: Some(NodeAllocatableOverhead {
                per_pod: Some(Quantity(bytes_quantity(bytes))),
                per_container: None,
            }),
        },
    )]));
}

/// The mode a device's counter consumption declares (KEP-5963): `pf` for a
/// PF, `sriov` for a VF.
pub fn compatibility_groups(d: &mut Device, f: &Function) {
    let group = match f.kind {
        Kind::Pf => GROUP_PF,
        Kind::Vf => GROUP_SRIOV,
    };
    for c in d.consumes_counters.iter_mut().flatten() {
        c.compatibility_groups = Some(vec![group.to_string()]);
    }
}

/// The grain in which a shared PF's memory is handed out: 1Gi, or 1Mi
/// when the memory is not whole GiB (the module gives whole MiB).
pub fn memory_grain(bytes: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        GIB
    } else {
        1 << 20
    }
}

/// A PF shared by memory: any number of claims may hold it at once, each
/// taking a share in whole grains, the whole memory when the claim names
/// no amount; VFs are not shared.
pub fn share_by_memory(d: &mut Device, f: &Function) {
    if f.kind != Kind::Pf {
        return;
    }
    let Some(memory) = d.capacity.as_mut().and_then(|c| c.get_mut("memory")) else {
        return;
    };
    let grain = Quantity(bytes_quantity(memory_grain(f.memory_bytes)));
    memory.request_policy = Some(CapacityRequestPolicy {
        default: Some(Quantity(bytes_quantity(f.memory_bytes))),
        valid_range: Some(CapacityRequestPolicyRange {
            min: grain.clone(),
            step: Some(grain),
            max: None,
        }),
        valid_values: None,
    });
    d.allow_multiple_allocations = Some(true);
}

/// The counter set of a PF: named after its device, holding its memory.
pub fn counter_set(pf: &Function) -> CounterSet {
    CounterSet {
        name: device_name(&pf.name),
        counters: memory_counter(pf.memory_bytes),
    }
}

fn memory_counter(bytes: u64) -> BTreeMap<String, Counter> {
    BTreeMap::from([(
        MEMORY_COUNTER.to_string(),
        Counter {
            value: Quantity(bytes_quantity(bytes)),
        },
    )])
}

/// What a function takes from its PF's counter set: a PF all of its
/// memory, a VF its share. None for a VF whose PF is not in the inventory
/// (no set to take from; nothing to exclude it from either).
pub fn consumption(f: &Function, inv: &Inventory) -> Option<DeviceCounterConsumption> {
    let pf = match f.kind {
        Kind::Pf => &f.name,
        Kind::Vf => f.physfn.as_ref().filter(|pf| inv.functions.contains_key(*pf))?,
    };
    Some(DeviceCounterConsumption {
        counter_set: device_name(pf),
        counters: memory_counter(f.memory_bytes),
        compatibility_groups: None,
    })
}

/// The inventory in slices. With counters: the PFs' counter sets first, 8
/// to a slice, then the devices, each consuming its share, at most 64 to a
/// slice. Devices are packed as PF groups (a PF and its VFs) kept whole and
/// in order; a group larger than a slice is split. With taints (`driver`'s
/// health taints), devices are 64 to a slice too: any of them may be
/// tainted at the next change, and the limit must not move the layout.
pub fn pack(inv: &Inventory, max_devices: usize, counters: bool, taints: Option<(&str, TaintEffect)>) -> Vec<Content> {
    let taints = taints.filter(|(_, e)| *e != TaintEffect::Off);
    let limit = if counters || taints.is_some() {
        MAX_DEVICES_WITH_COUNTERS
    } else {
        MAX_DEVICES_PER_SLICE
    };
    let max = max_devices.clamp(1, limit);
    let mut groups: Vec<Vec<Device>> = Vec::new();
    let mut sets = Vec::new();
    for f in inv.ordered() {
        let new_group = f.kind == Kind::Pf || groups.last().is_none_or(|g: &Vec<Device>| g.is_empty());
        if new_group {
            groups.push(Vec::new());
        }
        let mut d = device(f);
        if counters {
            if f.kind == Kind::Pf {
                sets.push(counter_set(f));
            }
            d.consumes_counters = consumption(f, inv).map(|c| vec![c]);
        }
        if let Some((driver, effect)) = taints {
            d.taints = health_taint(f, driver, effect).map(|t| vec![t]);
        }
        groups.last_mut().expect("a group").push(d);
    }
    let mut slices: Vec<Content> = sets
        .chunks(MAX_COUNTER_SETS_PER_SLICE)
        .map(|c| Content::Counters(c.to_vec()))
        .collect();
    // A group larger than a slice: full slices of it, and what is left
    // packed with the other groups (64 PFs of 65 devices take 65 slices
    // of 64, not 128 alternating 64 and 1).
    let mut devices: Vec<Vec<Device>> = Vec::new();
    let mut open: Option<usize> = None;
    for group in groups {
        for chunk in group.chunks(max) {
            if chunk.len() == max {
                devices.push(chunk.to_vec());
                continue;
            }
            match open {
                Some(i) if devices[i].len() + chunk.len() <= max => devices[i].extend_from_slice(chunk),
                _ => {
                    open = Some(devices.len());
                    devices.push(chunk.to_vec());
                }
            }
        }
    }
    slices.extend(devices.into_iter().map(Content::Devices));
    slices
}

impl Publisher {
    /// The inventory as this publisher lays it out.
    pub fn pack(&self, inv: &Inventory) -> Vec<Content> {
        // Devices with list attributes are 64 to a slice, as with counters.
        let max = if self.lists {
            self.max_devices.min(MAX_DEVICES_WITH_COUNTERS)
        } else {
            self.max_devices
        };
        let mut slices = pack(inv, max, self.counters, Some((&self.driver, self.taints)));
        let groups = self.groups && self.counters;
        let per_function = self.shared || self.lists || groups;
        if self.host_overhead.is_none() && !per_function {
            return slices;
        }
        let functions: BTreeMap<String, &Function> = if per_function {
            inv.functions.values().map(|f| (device_name(&f.name), f)).collect()
        } else {
            BTreeMap::new()
        };
        for d in slices.iter_mut().flat_map(|c| match c {
            Content::Devices(d) => d.as_mut_slice(),
            Content::Counters(_) => &mut [],
        }) {
            if let Some(bytes) = self.host_overhead {
                host_memory_overhead(d, bytes);
            }
            if let Some(f) = functions.get(&d.name) {
                if self.shared {
                    share_by_memory(d, f);
                }
                if self.lists {
                    list_attributes(d, f);
                }
                if groups {
                    compatibility_groups(d, f);
                }
            }
        }
        slices
    }

    /// `<node>-<driver>-<index>`, shortened to stay a valid name.
    pub fn slice_name(&self, index: usize) -> String {
        let suffix = format!("-{}-{index}", self.driver);
        let room = 253usize.saturating_sub(suffix.len());
        let node: String = self.node.chars().take(room).collect();
        format!("{}{suffix}", node.trim_end_matches(['-', '.']))
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(&self.driver, &self.node)
    }

    /// The selector of this publisher's slices.
    pub fn field_selector(&self) -> String {
        format!("spec.nodeName={},spec.driver={}", self.node, self.driver)
    }

    fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: self.node_uid.clone(),
            controller: Some(true),
            ..Default::default()
        }
    }

    pub fn slice(&self, index: usize, count: usize, generation: i64, content: Content) -> ResourceSlice {
        let (devices, shared_counters) = match content {
            Content::Devices(d) => (Some(d), None),
            Content::Counters(c) => (None, Some(c)),
        };
        ResourceSlice {
            metadata: ObjectMeta {
                name: Some(self.slice_name(index)),
                labels: Some(self.labels()),
                owner_references: Some(vec![self.owner()]),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: self.driver.clone(),
                node_name: Some(self.node.clone()),
                pool: ResourcePool {
                    name: self.node.clone(),
                    generation,
                    resource_slice_count: count as i64,
                },
                devices,
                shared_counters,
                ..Default::default()
            },
        }
    }

    /// Whether `have` already says what `want` says (ignoring server-set
    /// metadata; extra labels or owners others added are kept).
    fn matches(&self, have: &ResourceSlice, want: &ResourceSlice) -> bool {
        let labels_ok = want
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| have.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
        let owner_ok = have
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == self.node_uid && o.kind == "Node");
        let have_devices = have.spec.devices.as_deref().unwrap_or_default();
        let want_devices = want.spec.devices.as_deref().unwrap_or_default();
        labels_ok
            && owner_ok
            && have.spec.driver == want.spec.driver
            && have.spec.node_name == want.spec.node_name
            && have.spec.pool == want.spec.pool
            && have_devices == want_devices
            && have.spec.shared_counters.as_deref().unwrap_or_default()
                == want.spec.shared_counters.as_deref().unwrap_or_default()
            && have.spec.all_nodes.is_none()
            && have.spec.node_selector.is_none()
            && have.metadata.deletion_timestamp.is_none()
    }
}

/// One write to the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create(ResourceSlice),
    /// Replace, with the resourceVersion of the object it replaces.
    Update(ResourceSlice),
    Delete {
        name: String,
        resource_version: Option<String>,
    },
}

impl Write {
    pub fn verb(&self) -> &'static str {
        match self {
            Write::Create(_) => "create",
            Write::Update(_) => "update",
            Write::Delete { .. } => "delete",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Write::Create(s) | Write::Update(s) => s.metadata.name.as_deref().unwrap_or(""),
            Write::Delete { name, .. } => name,
        }
    }
}

/// The plan: writes in order (creates and updates first, deletes last), and
/// the pool generation after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub generation: i64,
}

/// The write that makes `have` (if any) what we `want`, keeping what
/// others added to its metadata.
fn update(mut want: ResourceSlice, have: Option<&ResourceSlice>) -> Write {
    let Some(have) = have else {
        return Write::Create(want);
    };
    want.metadata.resource_version = have.metadata.resource_version.clone();
    let mut labels = have.metadata.labels.clone().unwrap_or_default();
    labels.extend(want.metadata.labels.take().unwrap_or_default());
    want.metadata.labels = Some(labels);
    want.metadata.annotations = have.metadata.annotations.clone();
    want.metadata.finalizers = have.metadata.finalizers.clone();
    Write::Update(want)
}

/// The fewest writes that make `existing` (this publisher's slices as the
/// API holds them) say `desired`. `min_generation` is the last generation
/// this process wrote: it never goes back.
pub fn plan(
    p: &Publisher,
    desired: &[Content],
    existing: &BTreeMap<String, ResourceSlice>,
    min_generation: i64,
) -> Plan {
    let current = existing
        .values()
        .map(|s| s.spec.pool.generation)
        .max()
        .unwrap_or(0)
        .max(min_generation);
    // A slice being deleted (held by someone's finalizer) is neither
    // rewritten nor deleted again: rewriting it changes nothing (it stays
    // deleted) and was a hot loop; its name is taken until it goes, which
    // the watch tells.
    let terminating: BTreeSet<String> = existing
        .iter()
        .filter(|(_, s)| s.metadata.deletion_timestamp.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let live: BTreeMap<String, ResourceSlice> = existing
        .iter()
        .filter(|(n, _)| !terminating.contains(*n))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let existing = &live;
    let desired = &keep_taint_times(desired, existing);
    let count = desired.len();
    let target = |generation: i64| -> Vec<ResourceSlice> {
        desired
            .iter()
            .enumerate()
            .map(|(i, d)| p.slice(i, count, generation, d.clone()))
            .collect()
    };
    let stale: Vec<String> = existing
        .keys()
        .filter(|name| !(0..count).any(|i| p.slice_name(i) == **name))
        .cloned()
        .collect();
    let same_generation = target(current);
    let differing: Vec<usize> = same_generation
        .iter()
        .enumerate()
        .filter(|(i, want)| {
            let name = p.slice_name(*i);
            !terminating.contains(&name) && existing.get(&name).is_none_or(|have| !p.matches(have, want))
        })
        .map(|(i, _)| i)
        .collect();

    if differing.is_empty() && stale.is_empty() {
        return Plan {
            writes: vec![],
            generation: current,
        };
    }
    // Changed in place, the layout unchanged: no new generation. That is
    // at most one device slice (no device moves between slices) and at
    // most one counters slice (a PF's set added or removed; no set moves
    // between slices). Counters are written first: a device never consumes from a
    // set the pool lacks for longer than it takes to remove it.
    let device_slices = differing
        .iter()
        .filter(|i| matches!(desired[**i], Content::Devices(_)))
        .count();
    if device_slices <= 1 && differing.len() - device_slices <= 1 && stale.is_empty() && current > 0 {
        let in_place: Option<Vec<Write>> = differing
            .iter()
            .map(|i| {
                let have = existing.get(&p.slice_name(*i))?;
                (have.spec.pool.generation == current && have.spec.pool.resource_slice_count == count as i64)
                    .then(|| update(same_generation[*i].clone(), Some(have)))
            })
            .collect();
        if let Some(writes) = in_place {
            return Plan {
                writes,
                generation: current,
            };
        }
    }
    let generation = current + 1;
    let mut writes: Vec<Write> = target(generation)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !terminating.contains(&p.slice_name(*i)))
        .map(|(i, want)| update(want, existing.get(&p.slice_name(i))))
        .collect();
    writes.extend(stale.into_iter().map(|name| Write::Delete {
        resource_version: existing[&name].metadata.resource_version.clone(),
        name,
    }));
    Plan { writes, generation }
}

/// `desired` with each taint the API already holds on the same device (same
/// key, value and effect) given the time the API server set for it: a
/// taint sent without a time gets a new one, and would differ forever.
fn keep_taint_times(desired: &[Content], existing: &BTreeMap<String, ResourceSlice>) -> Vec<Content> {
    let held: BTreeMap<(&str, &str, Option<&str>, &str), &DeviceTaint> = existing
        .values()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .flat_map(|d| d.taints.iter().flatten().map(move |t| (d.name.as_str(), t)))
        .filter(|(_, t)| t.time_added.is_some())
        .map(|(name, t)| ((name, t.key.as_str(), t.value.as_deref(), t.effect.as_str()), t))
        .collect();
    desired
        .iter()
        .map(|c| match c {
            Content::Devices(devices) => Content::Devices(
                devices
                    .iter()
                    .map(|d| {
                        let mut d = d.clone();
                        for t in d.taints.iter_mut().flatten().filter(|t| t.time_added.is_none()) {
                            let id = (d.name.as_str(), t.key.as_str(), t.value.as_deref(), t.effect.as_str());
                            t.time_added = held.get(&id).and_then(|h| h.time_added.clone());
                        }
                        d
                    })
                    .collect(),
            ),
            other => other.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sysfs::{scan, write_fake_function, write_fake_tree};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::fs;

    fn publisher(max: usize) -> Publisher {
        Publisher {
            driver: "mock-accel.example.com".into(),
            node: "node-a".into(),
            node_uid: "uid-a".into(),
            max_devices: max,
            counters: false,
            taints: TaintEffect::Off,
            shared: false,
            lists: false,
            groups: false,
            host_overhead: None,
        }
    }

    /// Host memory overhead: every device, PF and VF, carries it as
    /// `nodeAllocatableResources.memory.overhead.perPod`; nothing without it.
    #[test]
    fn host_memory_overhead_goes_on_every_device() {
        let inv = inventory(2, 2);
        let mut p = publisher(128);
        let overheads = |p: &Publisher| -> Vec<Option<String>> {
            p.pack(&inv)
                .iter()
                .flat_map(|c| match c {
                    Content::Devices(d) => d.clone(),
                    Content::Counters(_) => vec![],
                })
                .map(|d| {
                    d.node_allocatable_resources
                        .and_then(|m| m.get("memory").cloned())
                        .and_then(|r| r.overhead)
                        .and_then(|o| o.per_pod)
                        .map(|q| q.0)
                })
                .collect()
        };
        assert!(overheads(&p).iter().all(Option::is_none));
        p.host_overhead = Some(512 << 20);
        assert_eq!(overheads(&p), vec![Some("512Mi".to_string()); 6]);
    }

    /// Compatibility groups: with counters, each consumption names its
    /// device's mode (`pf`, `sriov`); nothing without counters or the choice.
    #[test]
    fn compatibility_groups_name_each_consumptions_mode() {
        let inv = inventory(2, 3);
        let mut p = publisher(128);
        p.groups = true;
        let consumed = |p: &Publisher| -> Vec<(String, Option<Vec<String>>)> {
            p.pack(&inv)
                .iter()
                .flat_map(|c| match c {
                    Content::Devices(d) => d.clone(),
                    Content::Counters(_) => vec![],
                })
                .flat_map(|d| {
                    d.consumes_counters
                        .iter()
                        .flatten()
                        .map(|c| (d.name.clone(), c.compatibility_groups.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        // Without counters there is nothing to attach them to.
        assert!(consumed(&p).is_empty());
        p.counters = true;
        let got = consumed(&p);
        assert_eq!(got.len(), 8, "{got:?}");
        for (name, groups) in &got {
            let want = if name.contains("-vf") { GROUP_SRIOV } else { GROUP_PF };
            assert_eq!(groups.as_deref(), Some(&[want.to_string()][..]), "{name}");
        }
        p.groups = false;
        assert!(consumed(&p).iter().all(|(_, g)| g.is_none()));
    }

    /// List attributes: every device's capabilities as a list beside the
    /// scalar, and at most 64 devices to a slice; nothing without the choice.
    #[test]
    fn list_attributes_carry_the_capabilities_64_devices_to_a_slice() {
        let inv = inventory(10, 8);
        let mut p = publisher(128);
        let lists = |p: &Publisher| {
            p.pack(&inv)
                .into_iter()
                .map(|c| match c {
                    Content::Devices(d) => d,
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let plain = lists(&p);
        assert_eq!(plain.iter().map(Vec::len).collect::<Vec<_>>(), [90]);
        assert!(
            plain[0]
                .iter()
                .all(|d| !d.attributes.as_ref().unwrap().contains_key(LIST_ATTRIBUTE))
        );
        p.lists = true;
        let listed = lists(&p);
        assert!(
            listed.iter().all(|s| s.len() <= MAX_DEVICES_WITH_COUNTERS),
            "{:?}",
            listed.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(listed.iter().map(Vec::len).sum::<usize>(), 90);
        for d in listed.iter().flatten() {
            let attrs = d.attributes.as_ref().unwrap();
            let list = attrs[LIST_ATTRIBUTE].strings.clone().unwrap();
            let scalar = attrs["capabilities"].string.clone().unwrap();
            assert_eq!(list.join(","), scalar, "{}", d.name);
            assert!(
                list.contains(&"sriov".to_string()) != d.name.contains("-vf"),
                "{}: {list:?}",
                d.name
            );
        }
    }

    /// Shared PFs: several allocations, a memory policy in whole GiB whose
    /// default is all of it; VFs stay exclusive; nothing without the choice.
    #[test]
    fn shared_pfs_carry_a_memory_policy_and_vfs_do_not() {
        let inv = inventory(2, 2);
        let mut p = publisher(128);
        let devices = |p: &Publisher| match p.pack(&inv).remove(0) {
            Content::Devices(d) => d,
            other => panic!("{other:?}"),
        };
        assert!(devices(&p).iter().all(|d| d.allow_multiple_allocations.is_none()));
        p.shared = true;
        p.counters = true;
        let shared: Vec<Device> = p
            .pack(&inv)
            .into_iter()
            .flat_map(|c| match c {
                Content::Devices(d) => d,
                Content::Counters(_) => vec![],
            })
            .collect();
        let pf = shared.iter().find(|d| d.name == "mock0").unwrap();
        assert_eq!(pf.allow_multiple_allocations, Some(true));
        let memory = &pf.capacity.as_ref().unwrap()["memory"];
        let policy = memory.request_policy.as_ref().unwrap();
        assert_eq!(
            policy.default.as_ref(),
            Some(&memory.value),
            "a claim naming no amount takes it all"
        );
        let range = policy.valid_range.as_ref().unwrap();
        assert_eq!(
            (range.min.0.as_str(), range.step.as_ref().map(|q| q.0.as_str())),
            ("1Gi", Some("1Gi"))
        );
        assert_eq!(range.max, None);
        assert!(
            pf.consumes_counters.is_some(),
            "a shared PF still takes its counter set"
        );
        let vf = shared.iter().find(|d| d.name == "mock0-vf1").unwrap();
        assert_eq!(vf.allow_multiple_allocations, None);
        assert!(vf.capacity.as_ref().unwrap()["memory"].request_policy.is_none());
    }

    #[test]
    fn memory_is_handed_out_in_gib_when_it_is_whole_gib() {
        assert_eq!(memory_grain(16 << 30), 1 << 30);
        assert_eq!(memory_grain(1536 << 20), 1 << 20);
        assert_eq!(memory_grain(512 << 20), 1 << 20);
    }

    fn inventory(pfs: u32, vfs: u32) -> Inventory {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, pfs, vfs).unwrap();
        scan(&root).unwrap()
    }

    /// What the server returns for what we wrote: a resourceVersion.
    fn applied(existing: &mut BTreeMap<String, ResourceSlice>, plan: &Plan) {
        for w in &plan.writes {
            match w {
                Write::Create(s) | Write::Update(s) => {
                    let mut s = s.clone();
                    s.metadata.resource_version = Some(format!("{}", existing.len() + 100));
                    existing.insert(s.metadata.name.clone().unwrap(), s);
                }
                Write::Delete { name, .. } => {
                    existing.remove(name);
                }
            }
        }
    }

    #[test]
    fn quantities_are_canonical() {
        assert_eq!(bytes_quantity(16 << 30), "16Gi");
        assert_eq!(bytes_quantity(5_726_273_536), "5461Mi");
        assert_eq!(bytes_quantity(1500), "1500");
        assert_eq!(bytes_quantity(2000), "2k");
        assert_eq!(bytes_quantity(1000), "1k");
        assert_eq!(bytes_quantity(512), "512");
        assert_eq!(bytes_quantity(0), "0");
        // The test API server's canonical form agrees.
        for b in [
            16u64 << 30,
            5_726_273_536,
            1500,
            2000,
            512,
            0,
            1 << 10,
            3 << 20,
            999_999_999,
        ] {
            let q = bytes_quantity(b);
            assert_eq!(
                mock_device_testkit::apiserver::quantity::canonical(&q).as_deref(),
                Some(q.as_str()),
                "{b}"
            );
        }
    }

    #[test]
    fn devices_carry_the_seed_attributes_and_standard_ones() {
        let inv = inventory(1, 2);
        let d = device(&inv.functions["mock0_vf1"]);
        assert_eq!(d.name, "mock0-vf1");
        let a = d.attributes.unwrap();
        for key in [
            "uuid",
            "deviceType",
            "pciAddress",
            "numaNode",
            "physfn",
            "capabilities",
            "memory",
            "fwVersion",
        ] {
            assert!(a.contains_key(key), "{key}");
        }
        assert_eq!(a["deviceType"].string.as_deref(), Some("vf"));
        assert_eq!(a["physfn"].string.as_deref(), Some("mock0"));
        assert_eq!(
            a["resource.kubernetes.io/pcieRoot"].string.as_deref(),
            Some("pci0000:1a")
        );
        assert_eq!(
            a["resource.kubernetes.io/pciBusID"].string.as_deref(),
            Some("0000:1a:00.2")
        );
        assert_eq!(d.capacity.unwrap()["memory"].value.0, "8Gi");
    }

    #[test]
    fn packing_keeps_pf_groups_whole_and_splits_at_the_limit() {
        let inv = inventory(4, 8); // 4 groups of 9
        let sizes = |max| {
            pack(&inv, max, false, None)
                .iter()
                .map(Content::devices)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(128), [36]);
        assert_eq!(sizes(20), [18, 18]);
        assert_eq!(sizes(9), [9, 9, 9, 9]);
        // Groups of 9 in slices of 4: two full slices each, the four
        // leftovers (one device each) together in one.
        assert_eq!(sizes(4), [4, 4, 4, 4, 4, 4, 4, 4, 4]);
        let big = inventory(64, 64);
        let slices = pack(&big, 128, false, None);
        assert!(slices.iter().all(|s| s.devices() <= 128));
        assert_eq!(slices.iter().map(Content::devices).sum::<usize>(), 64 * 65);
    }

    #[test]
    fn plans_write_only_what_changed() {
        let p = publisher(20);
        let mut existing = BTreeMap::new();

        // First publish: every slice, generation 1.
        let first = plan(&p, &pack(&inventory(4, 8), 20, false, None), &existing, 0);
        assert_eq!(first.generation, 1);
        assert_eq!(
            first.writes.iter().map(Write::verb).collect::<Vec<_>>(),
            ["create", "create"]
        );
        applied(&mut existing, &first);
        let s0 = &existing["node-a-mock-accel.example.com-0"];
        assert_eq!(s0.spec.pool.resource_slice_count, 2);
        assert_eq!(s0.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-a");

        // Nothing changed: nothing to write.
        assert_eq!(
            plan(&p, &pack(&inventory(4, 8), 20, false, None), &existing, 1).writes,
            vec![]
        );

        // One device changed in one slice: that slice only, same generation.
        let mut inv = inventory(4, 8);
        inv.functions.get_mut("mock3_vf1").unwrap().numa_node = 7;
        let one = plan(&p, &pack(&inv, 20, false, None), &existing, 1);
        assert_eq!(one.generation, 1);
        assert_eq!(one.writes.len(), 1);
        assert!(matches!(&one.writes[0], Write::Update(s) if s.metadata.resource_version.is_some()));
        applied(&mut existing, &one);

        // The layout changes (a third slice): a new generation, every slice.
        let grown = plan(&p, &pack(&inventory(6, 8), 20, false, None), &existing, 1);
        assert_eq!(grown.generation, 2);
        assert_eq!(
            grown.writes.iter().map(Write::verb).collect::<Vec<_>>(),
            ["update", "update", "create"]
        );
        applied(&mut existing, &grown);
        assert!(
            existing
                .values()
                .all(|s| s.spec.pool.generation == 2 && s.spec.pool.resource_slice_count == 3)
        );

        // Shrinking deletes what is no longer needed, last.
        let shrunk = plan(&p, &pack(&inventory(1, 0), 20, false, None), &existing, 2);
        assert_eq!(
            shrunk.writes.iter().map(Write::verb).collect::<Vec<_>>(),
            ["update", "delete", "delete"]
        );
        applied(&mut existing, &shrunk);

        // Something deleted our slice behind our back: recreated, new generation.
        existing.clear();
        let restored = plan(&p, &pack(&inventory(1, 0), 20, false, None), &existing, 3);
        assert_eq!(restored.generation, 4);
        assert_eq!(restored.writes.iter().map(Write::verb).collect::<Vec<_>>(), ["create"]);

        // No devices at all: an empty pool is still published (one slice).
        let empty = plan(&p, &pack(&Inventory::default(), 20, false, None), &BTreeMap::new(), 0);
        assert!(empty.writes.is_empty(), "no slices are wanted for no devices");
    }

    /// Issue 18 #9: a slice someone deleted while their finalizer holds it
    /// differs from what we want forever (it carries a deletionTimestamp):
    /// it was rewritten at every pass, a hot loop. It is left alone, and
    /// the rest of the pool converges.
    #[test]
    fn a_slice_held_by_a_finalizer_is_left_alone() {
        let p = publisher(20);
        let mut existing = BTreeMap::new();
        let first = plan(&p, &pack(&inventory(4, 8), 20, false, None), &existing, 0);
        applied(&mut existing, &first);
        let name = p.slice_name(1);
        let held = existing.get_mut(&name).unwrap();
        held.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-30T12:00:00Z".parse().unwrap(),
        ));
        held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        // Same devices: nothing to write.
        assert_eq!(
            plan(&p, &pack(&inventory(4, 8), 20, false, None), &existing, 1).writes,
            vec![]
        );
        // The layout changes: the held slice is not touched, and one round
        // of writes is enough (no generation bump at every pass).
        let mut generation = 1;
        for round in 0..3 {
            let next = plan(&p, &pack(&inventory(6, 8), 20, false, None), &existing, generation);
            assert!(
                next.writes.iter().all(|w| w.name() != name),
                "round {round}: {:?}",
                next.writes
            );
            if round > 0 {
                assert_eq!(next.writes, vec![], "round {round}");
            }
            applied(&mut existing, &next);
            generation = next.generation;
        }
        // Once it is gone, its slice is created again.
        existing.remove(&name);
        let back = plan(&p, &pack(&inventory(6, 8), 20, false, None), &existing, generation);
        assert!(back.writes.iter().any(|w| w.name() == name && w.verb() == "create"));
    }

    fn bytes(q: &Quantity) -> u64 {
        let units = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)];
        units
            .iter()
            .find_map(|(u, shift)| q.0.strip_suffix(u).map(|n| n.parse::<u64>().unwrap() << shift))
            .unwrap_or_else(|| q.0.parse().unwrap())
    }

    /// Issue 15 #1: what the scheduler adds up, per counter set, for a set
    /// of devices: it may allocate them together only if no set goes over.
    fn fits(slices: &[Content], chosen: &[&str]) -> bool {
        let mut sets = BTreeMap::new();
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for c in slices {
            match c {
                Content::Counters(cs) => {
                    for set in cs {
                        assert!(
                            sets.insert(set.name.clone(), bytes(&set.counters[MEMORY_COUNTER].value))
                                .is_none()
                        );
                    }
                }
                Content::Devices(ds) => {
                    for d in ds.iter().filter(|d| chosen.contains(&d.name.as_str())) {
                        for c in d.consumes_counters.iter().flatten() {
                            *used.entry(c.counter_set.clone()).or_default() += bytes(&c.counters[MEMORY_COUNTER].value);
                        }
                    }
                }
            }
        }
        used.iter()
            .all(|(set, n)| sets.get(set).is_some_and(|total| n <= total))
    }

    #[test]
    fn counters_exclude_a_pf_and_its_vfs_and_share_the_memory() {
        let inv = inventory(2, 4);
        let slices = pack(&inv, 128, true, None);
        // The counter sets in a slice of their own, first; the devices after.
        assert!(matches!(&slices[0], Content::Counters(c) if c.len() == 2 && c[0].name == "mock0"));
        assert_eq!(slices[1..].iter().map(Content::devices).sum::<usize>(), 10);
        assert!(slices[1..].iter().all(|c| matches!(c, Content::Devices(_))));
        // A PF and any of its VFs never fit; its VFs all fit together; two
        // PFs, or a PF and another PF's VFs, do.
        assert!(fits(&slices, &["mock0"]));
        for vf in ["mock0-vf0", "mock0-vf3"] {
            assert!(!fits(&slices, &["mock0", vf]), "{vf}");
        }
        assert!(fits(&slices, &["mock0-vf0", "mock0-vf1", "mock0-vf2", "mock0-vf3"]));
        assert!(fits(&slices, &["mock0", "mock1"]));
        assert!(fits(&slices, &["mock0", "mock1-vf0", "mock1-vf3"]));
        // Without counters, nothing is consumed and no set is published.
        let plain = pack(&inv, 128, false, None);
        assert!(
            plain
                .iter()
                .all(|c| matches!(c, Content::Devices(ds) if ds.iter().all(|d| d.consumes_counters.is_none())))
        );
    }

    #[test]
    fn counters_keep_the_api_limits() {
        // 9 PFs: 8 sets in a slice, then 1; 9 × 9 devices, 64 at most per
        // slice even when more are asked for.
        let slices = pack(&inventory(9, 8), 128, true, None);
        let sets: Vec<usize> = slices
            .iter()
            .filter_map(|c| match c {
                Content::Counters(c) => Some(c.len()),
                Content::Devices(_) => None,
            })
            .collect();
        assert_eq!(sets, [8, 1]);
        assert!(slices.iter().all(|c| c.devices() <= MAX_DEVICES_WITH_COUNTERS));
        assert_eq!(slices.iter().map(Content::devices).sum::<usize>(), 81);
        // One consumption entry per device (the API allows 2).
        for c in &slices {
            if let Content::Devices(ds) = c {
                assert!(
                    ds.iter()
                        .all(|d| d.consumes_counters.as_ref().is_some_and(|c| c.len() == 1))
                );
            }
        }
    }

    #[test]
    fn a_vf_whose_pf_is_not_published_consumes_nothing() {
        let mut inv = inventory(1, 2);
        inv.functions.remove("mock0");
        let vf = &inv.functions["mock0_vf0"];
        assert_eq!(consumption(vf, &inv), None);
        let slices = pack(&inv, 128, true, None);
        assert_eq!(slices.len(), 1, "no counter set without a PF: {slices:?}");
    }

    /// Hot-plug with counters costs no more writes than without: a VF added
    /// (sriov_numvfs) writes its device slice; a PF added or removed writes
    /// the counters slice and one device slice, in place (same generation).
    #[test]
    fn counters_follow_hot_plug_in_place() {
        let mut p = publisher(128);
        p.counters = true;
        let mut existing = BTreeMap::new();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        let devices = dir.path().join("sys/devices/mock-accel");
        write_fake_tree(&root, 2, 2).unwrap();
        let first = plan(&p, &pack(&scan(&root).unwrap(), 128, true, None), &existing, 0);
        assert_eq!(
            first.writes.iter().map(Write::verb).collect::<Vec<_>>(),
            ["create", "create"]
        );
        applied(&mut existing, &first);
        // A third VF on mock1: its device slice only.
        write_fake_function(&root, &devices, 1, Some(2), 3).unwrap();
        let vf = plan(&p, &pack(&scan(&root).unwrap(), 128, true, None), &existing, 1);
        assert_eq!((vf.writes.len(), vf.generation), (1, 1), "{:?}", vf.writes);
        assert_eq!(vf.writes[0].name(), p.slice_name(1));
        applied(&mut existing, &vf);
        // A new PF: its counter set first, then its device.
        write_fake_function(&root, &devices, 2, None, 0).unwrap();
        let pf = plan(&p, &pack(&scan(&root).unwrap(), 128, true, None), &existing, 1);
        assert_eq!(
            pf.writes
                .iter()
                .map(|w| (w.verb(), w.name().to_string()))
                .collect::<Vec<_>>(),
            [("update", p.slice_name(0)), ("update", p.slice_name(1))]
        );
        assert_eq!(pf.generation, 1);
        applied(&mut existing, &pf);
        // Counters turned off (a cluster that drops them): a new layout, a
        // new generation, the counters slice deleted.
        p.counters = false;
        let off = plan(&p, &pack(&scan(&root).unwrap(), 128, false, None), &existing, 1);
        assert_eq!(off.generation, 2);
        assert_eq!(
            off.writes.iter().map(Write::verb).collect::<Vec<_>>(),
            ["update", "delete"]
        );
    }

    /// Health taints: failed with the chosen effect, degraded informational,
    /// gone on recovery; each a write of the device's slice in place, and
    /// the time the API server gives a taint is kept, not fought over.
    #[test]
    fn health_taints_follow_the_module() {
        let mut p = publisher(128);
        p.taints = TaintEffect::NoExecute;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, 2, 2).unwrap();
        let taints = |slices: &[Content]| -> Vec<(String, String, String)> {
            slices
                .iter()
                .flat_map(|c| match c {
                    Content::Devices(d) => d.clone(),
                    Content::Counters(_) => vec![],
                })
                .flat_map(|d| {
                    d.taints
                        .into_iter()
                        .flatten()
                        .map(move |t| (d.name.clone(), t.value.unwrap_or_default(), t.effect))
                })
                .collect()
        };
        let mut existing = BTreeMap::new();
        let first = plan(&p, &p.pack(&scan(&root).unwrap()), &existing, 0);
        applied(&mut existing, &first);
        fs::write(root.join("mock1_vf0/health"), "failed\n").unwrap();
        fs::write(root.join("mock0/health"), "degraded\n").unwrap();
        let inv = scan(&root).unwrap();
        assert_eq!(
            taints(&p.pack(&inv)),
            [
                ("mock0".into(), "degraded".into(), "None".into()),
                ("mock1-vf0".into(), "failed".into(), "NoExecute".into())
            ]
        );
        let key = &p.pack(&inv)[0];
        let Content::Devices(d) = key else { panic!("{key:?}") };
        assert_eq!(d[0].taints.as_ref().unwrap()[0].key, "mock-accel.example.com/health");
        let tainted = plan(&p, &p.pack(&inv), &existing, 1);
        assert_eq!(
            (tainted.writes.len(), tainted.generation),
            (1, 1),
            "{:?}",
            tainted.writes
        );
        // The server sets the taints' time; planning again writes nothing.
        applied(&mut existing, &tainted);
        let at = Time("2026-12-01T10:00:00Z".parse().unwrap());
        for s in existing.values_mut() {
            for t in s
                .spec
                .devices
                .iter_mut()
                .flatten()
                .flat_map(|d| d.taints.iter_mut().flatten())
            {
                t.time_added = Some(at.clone());
            }
        }
        assert_eq!(plan(&p, &p.pack(&inv), &existing, 1).writes, []);
        // An unrelated change keeps the time of the taints that stay.
        fs::write(root.join("mock0/health"), "ok\n").unwrap();
        let recovered = plan(&p, &p.pack(&scan(&root).unwrap()), &existing, 1);
        let [Write::Update(s)] = &recovered.writes[..] else {
            panic!("{:?}", recovered.writes)
        };
        let kept: Vec<_> = s
            .spec
            .devices
            .iter()
            .flatten()
            .filter_map(|d| d.taints.clone())
            .flatten()
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].time_added, Some(at));
        // A taint whose effect changes gets a new time (the server's).
        p.taints = TaintEffect::NoSchedule;
        let changed = plan(&p, &p.pack(&scan(&root).unwrap()), &existing, 1);
        let [Write::Update(s)] = &changed.writes[..] else {
            panic!("{:?}", changed.writes)
        };
        let t = s.spec.devices.iter().flatten().find_map(|d| d.taints.clone()).unwrap();
        assert_eq!((t[0].effect.as_str(), t[0].time_added.is_none()), ("NoSchedule", true));
        // Off: no taints at all.
        p.taints = TaintEffect::Off;
        assert_eq!(taints(&p.pack(&scan(&root).unwrap())), []);
    }

    #[test]
    fn slice_names_stay_valid() {
        let mut p = publisher(128);
        assert_eq!(p.slice_name(0), "node-a-mock-accel.example.com-0");
        p.node = "n".repeat(300);
        assert!(p.slice_name(12).len() <= 253);
        assert!(!p.labels().contains_key("node"));
    }
}
