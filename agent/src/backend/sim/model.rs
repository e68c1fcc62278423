//! The module's semantics in user space (kmod/ABI.md), as a pure model:
//! the same files by the same relative names (`bus/new_device`,
//! `class/mock1/health`, `parameters/max_vfs`), the same values, the same
//! errnos for the same bad writes, and the same class-device uevents in
//! the same order. No I/O and no clock: an attach completes when the
//! caller says its time has come ([`Model::due`], [`Model::complete_attach`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::{Attach, Function, Health, Kind};

/// PF ids 0..63, VFs 0..63 per PF (the module's limits).
pub use crate::backend::{MAX_PFS, MAX_VFS};
const MAX_FAIL_ATTACH: u32 = 1000;
pub const FW_VERSION: &str = "1.4.2";

/// An errno, as the module returns it for a write or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name (`EINVAL`), as the scenarios print it.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::ENOENT => "ENOENT",
            libc::EIO => "EIO",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::ENODEV => "ENODEV",
            libc::EINVAL => "EINVAL",
            libc::ERANGE => "ERANGE",
            libc::ENOLINK => "ENOLINK",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EPERM => "EPERM",
            _ => "EUNKNOWN",
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub use crate::backend::Params;

/// Where a function's fabric attach stands (`Local` without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachState {
    Local,
    Detached,
    Attaching,
    Attached,
    Failed,
}

impl AttachState {
    /// As the inventory records it (`None`: local, nothing to attach).
    pub fn published(self) -> Option<Attach> {
        match self {
            AttachState::Local => None,
            AttachState::Detached => Some(Attach::Detached),
            AttachState::Attaching => Some(Attach::Attaching),
            AttachState::Attached => Some(Attach::Attached),
            AttachState::Failed => Some(Attach::Failed),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Local => "local",
            AttachState::Detached => "detached",
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Failed => "failed",
        }
    }
}

/// One function's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FnState {
    pub numa_node: u32,
    pub memory_size: u64,
    pub status: u32,
    pub health: HealthState,
    pub attach: AttachState,
    pub fail_attach: u32,
    /// Bumped by every attach started: a completion for an older one is
    /// ignored (the module's pending work finds the state changed).
    pub attach_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Ok,
    Degraded,
    Failed,
}

impl HealthState {
    const NAMES: [(&str, HealthState); 3] = [
        ("ok", HealthState::Ok),
        ("degraded", HealthState::Degraded),
        ("failed", HealthState::Failed),
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES.iter().find(|(_, h)| *h == self).map_or("ok", |(n, _)| n)
    }

    fn health(self) -> Health {
        match self {
            HealthState::Ok => Health::Ok,
            HealthState::Degraded => Health::Degraded,
            HealthState::Failed => Health::Failed,
        }
    }
}

/// A PF, its VFs (index = VF id) and `sriov_totalvfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pf {
    pub f: FnState,
    pub total_vfs: u32,
    pub vfs: Vec<FnState>,
}

/// A class-device uevent, as the module sends it: `add`, `remove` or
/// `change` of function `pf`/`vf`, with the change's `MOCK_ACCEL_EVENT`
/// key and value (`("health", "MOCK_ACCEL_HEALTH", "failed")`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub action: &'static str,
    pub pf: u32,
    pub vf: Option<u32>,
    pub numa_node: u32,
    pub memory_size: u64,
    pub change: Option<(&'static str, &'static str, String)>,
}

/// The devices of one node, as the module would hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub params: Params,
    pub pfs: BTreeMap<u32, Pf>,
}

/// Which function a name means: PF `pf`, or its VF `vf`.
type Id = (u32, Option<u32>);

impl Model {
    /// The module just loaded: PFs 0..num_pfs-1.
    pub fn load(params: Params) -> Result<Model, String> {
        params.check()?;
        let mut m = Model {
            params,
            pfs: BTreeMap::new(),
        };
        for pf in 0..m.params.num_pfs {
            m.add_pf(pf, pf % m.params.numa_nodes);
        }
        Ok(m)
    }

    fn new_fn(&self, numa_node: u32, memory_size: u64) -> FnState {
        FnState {
            numa_node,
            memory_size,
            status: 0,
            health: HealthState::Ok,
            attach: if self.params.fabric_attach_ms > 0 {
                AttachState::Detached
            } else {
                AttachState::Local
            },
            fail_attach: 0,
            attach_seq: 0,
        }
    }

    fn add_pf(&mut self, pf: u32, numa_node: u32) -> Vec<Event> {
        let f = self.new_fn(numa_node, self.params.memory_mib << 20);
        let added = event("add", pf, None, &f);
        self.pfs.insert(
            pf,
            Pf {
                f,
                total_vfs: self.params.max_vfs,
                vfs: Vec::new(),
            },
        );
        vec![added]
    }

    /// The function called `name` (`mock3`, `mock3_vf1`), if it exists.
    fn lookup(&self, name: &str) -> Option<Id> {
        let (pf, vf) = crate::inventory::parse_name(name)?;
        let p = self.pfs.get(&pf)?;
        match vf {
            Some(v) if (v as usize) < p.vfs.len() => Some((pf, Some(v))),
            Some(_) => None,
            None => Some((pf, None)),
        }
    }

    fn get(&self, (pf, vf): Id) -> &FnState {
        let p = &self.pfs[&pf];
        vf.map_or(&p.f, |v| &p.vfs[v as usize])
    }

    fn get_mut(&mut self, (pf, vf): Id) -> &mut FnState {
        let p = self.pfs.get_mut(&pf).expect("looked up");
        match vf {
            Some(v) => &mut p.vfs[v as usize],
            None => &mut p.f,
        }
    }

    /// Every function's name, PFs then their VFs.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (pf, p) in &self.pfs {
            out.push(format!("mock{pf}"));
            out.extend((0..p.vfs.len()).map(|v| format!("mock{pf}_vf{v}")));
        }
        out
    }

    /// Reads a file: `parameters/<p>`, `class/<function>/<attribute>`
    /// (the identity attributes come from [`Identity`]).
    pub fn read(&self, path: &str, identity: &dyn Identity) -> Result<String, Errno> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let text = match parts[..] {
            ["parameters", p] => {
                let v = &self.params;
                match p {
                    "num_pfs" => v.num_pfs.to_string(),
                    "numa_nodes" => v.numa_nodes.to_string(),
                    "max_vfs" => v.max_vfs.to_string(),
                    "memory_mib" => v.memory_mib.to_string(),
                    "fabric_attach_ms" => v.fabric_attach_ms.to_string(),
                    _ => return Err(Errno(libc::ENOENT)),
                }
            }
            ["bus", "new_device" | "del_device"] => return Err(Errno(libc::EACCES)),
            ["class", name, attr] => {
                let id = self.lookup(name).ok_or(Errno(libc::ENOENT))?;
                let f = self.get(id);
                let pf_only = |v: String| {
                    if id.1.is_none() {
                        Ok(v)
                    } else {
                        Err(Errno(libc::ENOENT))
                    }
                };
                match attr {
                    "uuid" => identity.uuid(id.0, id.1),
                    "type" => if id.1.is_some() { "vf" } else { "pf" }.into(),
                    "memory_size" => f.memory_size.to_string(),
                    "capabilities" => if id.1.is_some() {
                        "compute,dma"
                    } else {
                        "compute,dma,sriov"
                    }
                    .into(),
                    "numa_node" => f.numa_node.to_string(),
                    "fw_version" => FW_VERSION.into(),
                    "status" => f.status.to_string(),
                    "health" => f.health.as_str().into(),
                    "attach" => f.attach.as_str().into(),
                    "fail_attach" => f.fail_attach.to_string(),
                    "sriov_totalvfs" => pf_only(self.pfs[&id.0].total_vfs.to_string())?,
                    "sriov_numvfs" => pf_only(self.pfs[&id.0].vfs.len().to_string())?,
                    _ => return Err(Errno(libc::ENOENT)),
                }
            }
            _ => return Err(Errno(libc::ENOENT)),
        };
        Ok(format!("{text}\n"))
    }

    /// Writes a file, with the module's checks in the module's order; on
    /// success, the uevents the module would have sent.
    pub fn write(&mut self, path: &str, value: &str) -> Result<Vec<Event>, Errno> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts[..] {
            ["bus", "new_device"] => self.new_device(value),
            ["bus", "del_device"] => self.del_device(value),
            ["parameters", _] => Err(Errno(libc::EACCES)),
            ["class", name, attr] => {
                let id = self.lookup(name).ok_or(Errno(libc::ENOENT))?;
                match attr {
                    "status" => self.set_status(id, value),
                    "health" => self.set_health(id, value),
                    "attach" => self.set_attach(id, value),
                    "fail_attach" => self.set_fail_attach(id, value),
                    "sriov_numvfs" if id.1.is_none() => self.set_numvfs(id.0, value),
                    "uuid" | "type" | "memory_size" | "capabilities" | "numa_node" | "fw_version" => {
                        Err(Errno(libc::EACCES))
                    }
                    "sriov_totalvfs" if id.1.is_none() => Err(Errno(libc::EACCES)),
                    _ => Err(Errno(libc::ENOENT)),
                }
            }
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    fn new_device(&mut self, value: &str) -> Result<Vec<Event>, Errno> {
        let vals = parse_u32s(value, 2)?;
        let pf = vals[0];
        if pf >= MAX_PFS {
            return Err(Errno(libc::ERANGE));
        }
        let numa = match vals.get(1) {
            None => pf % self.params.numa_nodes,
            Some(&n) if n >= self.params.numa_nodes => return Err(Errno(libc::ERANGE)),
            Some(&n) => n,
        };
        if self.pfs.contains_key(&pf) {
            return Err(Errno(libc::EEXIST));
        }
        Ok(self.add_pf(pf, numa))
    }

    fn del_device(&mut self, value: &str) -> Result<Vec<Event>, Errno> {
        let pf = parse_u32s(value, 1)?[0];
        if pf >= MAX_PFS {
            return Err(Errno(libc::ERANGE));
        }
        let p = self.pfs.remove(&pf).ok_or(Errno(libc::ENODEV))?;
        // A surprise removal: VFs first, newest first, whatever their state.
        let mut events: Vec<Event> = (0..p.vfs.len() as u32)
            .rev()
            .map(|v| event("remove", pf, Some(v), &p.vfs[v as usize]))
            .collect();
        events.push(event("remove", pf, None, &p.f));
        Ok(events)
    }

    fn set_status(&mut self, id: Id, value: &str) -> Result<Vec<Event>, Errno> {
        let status = kstrtou32(value)?;
        if status > 1 {
            return Err(Errno(libc::ERANGE));
        }
        let f = self.get_mut(id);
        if status == 1 && f.health == HealthState::Failed {
            return Err(Errno(libc::EIO));
        }
        if status == 1 && !matches!(f.attach, AttachState::Local | AttachState::Attached) {
            return Err(Errno(libc::ENOLINK));
        }
        if status == f.status {
            return Ok(vec![]);
        }
        f.status = status;
        Ok(vec![change(id, f, "status", "MOCK_ACCEL_STATUS", status.to_string())])
    }

    fn set_health(&mut self, id: Id, value: &str) -> Result<Vec<Event>, Errno> {
        let health = HealthState::NAMES
            .iter()
            .find(|(n, _)| sysfs_streq(value, n))
            .map(|(_, h)| *h)
            .ok_or(Errno(libc::EINVAL))?;
        let f = self.get_mut(id);
        if health == f.health {
            return Ok(vec![]);
        }
        f.health = health;
        Ok(vec![change(
            id,
            f,
            "health",
            "MOCK_ACCEL_HEALTH",
            health.as_str().into(),
        )])
    }

    fn set_attach(&mut self, id: Id, value: &str) -> Result<Vec<Event>, Errno> {
        let attach = if sysfs_streq(value, "attach") {
            true
        } else if sysfs_streq(value, "detach") {
            false
        } else {
            return Err(Errno(libc::EINVAL));
        };
        let f = self.get_mut(id);
        let to = match (f.attach, attach) {
            (AttachState::Local, _) => return Err(Errno(libc::EOPNOTSUPP)),
            (AttachState::Detached | AttachState::Failed, true) => {
                f.attach_seq += 1;
                AttachState::Attaching
            }
            (_, true) => return Ok(vec![]),
            (_, false) if f.status != 0 => return Err(Errno(libc::EBUSY)),
            (_, false) => AttachState::Detached,
        };
        Ok(self.attach_to(id, to))
    }

    fn attach_to(&mut self, id: Id, to: AttachState) -> Vec<Event> {
        let f = self.get_mut(id);
        if f.attach == to {
            return vec![];
        }
        f.attach = to;
        vec![change(id, f, "attach", "MOCK_ACCEL_ATTACH", to.as_str().into())]
    }

    fn set_fail_attach(&mut self, id: Id, value: &str) -> Result<Vec<Event>, Errno> {
        let n = kstrtou32(value)?;
        if n > MAX_FAIL_ATTACH {
            return Err(Errno(libc::ERANGE));
        }
        let f = self.get_mut(id);
        if f.attach == AttachState::Local {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        f.fail_attach = n;
        Ok(vec![])
    }

    fn set_numvfs(&mut self, pf: u32, value: &str) -> Result<Vec<Event>, Errno> {
        let n = kstrtou32(value)?;
        let p = &self.pfs[&pf];
        if n > p.total_vfs {
            return Err(Errno(libc::ERANGE));
        }
        let now = p.vfs.len() as u32;
        if n == now {
            return Ok(vec![]);
        }
        let mut events = Vec::new();
        if n == 0 {
            if p.vfs.iter().any(|v| v.status != 0) {
                return Err(Errno(libc::EBUSY));
            }
            events.extend((0..now).rev().map(|v| event("remove", pf, Some(v), &p.vfs[v as usize])));
            self.pfs.get_mut(&pf).expect("there").vfs.clear();
        } else if now > 0 {
            return Err(Errno(libc::EBUSY));
        } else {
            let share = p.f.memory_size / n as u64;
            let share = if share >= 1 << 20 {
                share & !((1 << 20) - 1)
            } else {
                share
            };
            let vf = self.new_fn(p.f.numa_node, share);
            events.extend((0..n).map(|v| event("add", pf, Some(v), &vf)));
            self.pfs.get_mut(&pf).expect("there").vfs = vec![vf; n as usize];
        }
        events.push(change(
            (pf, None),
            &self.pfs[&pf].f,
            "sriov",
            "MOCK_ACCEL_NUMVFS",
            n.to_string(),
        ));
        Ok(events)
    }

    /// Where the named function's attach stands (`None`: no such function).
    pub fn attach_state(&self, name: &str) -> Option<AttachState> {
        self.lookup(name).map(|id| self.get(id).attach)
    }

    /// The sequence number of the named function's attach under way.
    pub fn attach_seq(&self, name: &str) -> Option<u64> {
        let f = self.get(self.lookup(name)?);
        (f.attach == AttachState::Attaching).then_some(f.attach_seq)
    }

    /// Attaches under way, with the sequence number each must still have
    /// when it completes: `(function, seq)`.
    pub fn attaching(&self) -> Vec<(String, u64)> {
        self.names()
            .into_iter()
            .filter_map(|name| {
                let f = self.get(self.lookup(&name)?);
                (f.attach == AttachState::Attaching).then_some((name, f.attach_seq))
            })
            .collect()
    }

    /// The end of an attach started as `seq` (fabric_attach_ms after it):
    /// attached, or failed if a failure was armed or the function failed.
    /// Nothing if the attach was undone or restarted since.
    pub fn complete_attach(&mut self, name: &str, seq: u64) -> Vec<Event> {
        let Some(id) = self.lookup(name) else { return vec![] };
        let f = self.get_mut(id);
        if f.attach != AttachState::Attaching || f.attach_seq != seq {
            return vec![];
        }
        let to = if f.fail_attach > 0 || f.health == HealthState::Failed {
            f.fail_attach = f.fail_attach.saturating_sub(1);
            AttachState::Failed
        } else {
            AttachState::Attached
        };
        self.attach_to(id, to)
    }

    /// Every function as the inventory's record.
    pub fn functions(&self, identity: &dyn Identity) -> Vec<Function> {
        let mut out = Vec::new();
        for (&pf, p) in &self.pfs {
            out.push(self.function(identity, (pf, None), &p.f, Some((p.vfs.len() as u32, p.total_vfs))));
            for (v, f) in p.vfs.iter().enumerate() {
                out.push(self.function(identity, (pf, Some(v as u32)), f, None));
            }
        }
        out
    }

    fn function(&self, identity: &dyn Identity, (pf, vf): Id, f: &FnState, sriov: Option<(u32, u32)>) -> Function {
        Function {
            name: name(pf, vf),
            kind: if vf.is_some() { Kind::Vf } else { Kind::Pf },
            pf_index: pf,
            vf_index: vf,
            uuid: identity.uuid(pf, vf),
            pci_address: identity.pci_address(pf, vf),
            numa_node: f.numa_node,
            memory_bytes: f.memory_size,
            capabilities: if vf.is_some() {
                "compute,dma"
            } else {
                "compute,dma,sriov"
            }
            .into(),
            fw_version: FW_VERSION.into(),
            physfn: vf.map(|_| format!("mock{pf}")),
            health: f.health.health(),
            status: f.status,
            sriov,
            devnum: None,
            attach: f.attach.published(),
        }
    }
}

/// A function's identity: per node for the sim, from the PF and VF index.
pub trait Identity {
    fn uuid(&self, pf: u32, vf: Option<u32>) -> String;
    fn pci_address(&self, pf: u32, vf: Option<u32>) -> String;
}

/// The class device's name.
pub fn name(pf: u32, vf: Option<u32>) -> String {
    match vf {
        Some(v) => format!("mock{pf}_vf{v}"),
        None => format!("mock{pf}"),
    }
}

fn event(action: &'static str, pf: u32, vf: Option<u32>, f: &FnState) -> Event {
    Event {
        action,
        pf,
        vf,
        numa_node: f.numa_node,
        memory_size: f.memory_size,
        change: None,
    }
}

fn change((pf, vf): Id, f: &FnState, what: &'static str, key: &'static str, value: String) -> Event {
    Event {
        change: Some((what, key, value)),
        ..event("change", pf, vf, f)
    }
}

/// The kernel's `sysfs_streq`: equal but for one trailing newline on either.
fn sysfs_streq(a: &str, b: &str) -> bool {
    a.strip_suffix('\n').unwrap_or(a) == b.strip_suffix('\n').unwrap_or(b)
}

/// The kernel's `kstrtou32(s, 0)`: an optional `+`, a `0x` (hex) or `0`
/// (octal) prefix, one trailing newline; EINVAL for anything else, ERANGE
/// above u32.
pub fn kstrtou32(s: &str) -> Result<u32, Errno> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(Errno(libc::EINVAL));
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(Errno(libc::ERANGE))
}

/// The module's `mock_accel_parse_u32s`: up to `max` integers separated by
/// spaces or tabs, the whole under 64 bytes.
fn parse_u32s(value: &str, max: usize) -> Result<Vec<u32>, Errno> {
    if value.len() >= 64 {
        return Err(Errno(libc::EINVAL));
    }
    let mut vals = Vec::new();
    for tok in value.trim().split([' ', '\t']).filter(|t| !t.is_empty()) {
        if vals.len() == max {
            return Err(Errno(libc::EINVAL));
        }
        vals.push(kstrtou32(tok)?);
    }
    if vals.is_empty() {
        return Err(Errno(libc::EINVAL));
    }
    Ok(vals)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;
    impl Identity for Plain {
        fn uuid(&self, pf: u32, vf: Option<u32>) -> String {
            format!("u{pf}-{vf:?}")
        }
        fn pci_address(&self, pf: u32, vf: Option<u32>) -> String {
            format!("p{pf}-{vf:?}")
        }
    }

    fn w(m: &mut Model, path: &str, value: &str) -> String {
        match m.write(path, value) {
            Ok(_) => "ok".into(),
            Err(e) => e.name().into(),
        }
    }

    fn r(m: &Model, path: &str) -> String {
        m.read(path, &Plain)
            .map_or_else(|e| e.name().into(), |s| s.trim_end().to_string())
    }

    #[test]
    fn numbers_parse_as_the_kernel_parses_them() {
        assert_eq!(kstrtou32("1\n"), Ok(1));
        assert_eq!(kstrtou32("+7"), Ok(7));
        assert_eq!(kstrtou32("0x10"), Ok(16));
        assert_eq!(kstrtou32("010"), Ok(8));
        assert_eq!(kstrtou32("0"), Ok(0));
        for bad in ["", "\n", " 1", "1 ", "1\n\n", "x", "-1", "08", "0x"] {
            assert_eq!(kstrtou32(bad), Err(Errno(libc::EINVAL)), "{bad:?}");
        }
        assert_eq!(kstrtou32("4294967296"), Err(Errno(libc::ERANGE)));
        assert_eq!(parse_u32s("3 1\n", 2), Ok(vec![3, 1]));
        assert_eq!(parse_u32s("3\t 1", 2), Ok(vec![3, 1]));
        assert_eq!(parse_u32s("1 2 3", 2), Err(Errno(libc::EINVAL)));
        assert_eq!(parse_u32s("   ", 2), Err(Errno(libc::EINVAL)));
        assert_eq!(parse_u32s(&"1 ".repeat(40), 99), Err(Errno(libc::EINVAL)));
    }

    #[test]
    fn parameters_are_checked_and_name_the_one_out_of_range() {
        assert!(Model::load(Params::default()).is_ok());
        let e = Model::load(Params {
            max_vfs: 65,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("max_vfs=65"), "{e}");
        let e = Model::load(Params {
            numa_nodes: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("numa_nodes=0"), "{e}");
    }

    #[test]
    fn attach_runs_its_course_and_a_stale_completion_does_nothing() {
        let mut m = Model::load(Params {
            num_pfs: 1,
            fabric_attach_ms: 100,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r(&m, "class/mock0/attach"), "detached");
        assert_eq!(w(&mut m, "class/mock0/status", "1"), "ENOLINK");
        assert_eq!(w(&mut m, "class/mock0/attach", "attach\n"), "ok");
        let attaching = m.attaching();
        let [(name, seq)] = &attaching[..] else { panic!() };
        let seq = *seq;
        assert_eq!(name, "mock0");
        // Detach then attach again: the first completion is stale.
        assert_eq!(w(&mut m, "class/mock0/attach", "detach"), "ok");
        assert_eq!(w(&mut m, "class/mock0/attach", "attach"), "ok");
        assert!(m.complete_attach("mock0", seq).is_empty());
        assert_eq!(r(&m, "class/mock0/attach"), "attaching");
        let events = m.complete_attach("mock0", seq + 1);
        assert_eq!(events[0].change.as_ref().unwrap().2, "attached");
        assert_eq!(w(&mut m, "class/mock0/status", "1"), "ok");
        assert_eq!(w(&mut m, "class/mock0/attach", "detach"), "EBUSY");
        // An armed failure: failed, then the next attach works.
        assert_eq!(w(&mut m, "class/mock0/status", "0"), "ok");
        assert_eq!(w(&mut m, "class/mock0/attach", "detach"), "ok");
        assert_eq!(w(&mut m, "class/mock0/fail_attach", "1"), "ok");
        assert_eq!(w(&mut m, "class/mock0/attach", "attach"), "ok");
        let seq = m.attaching()[0].1;
        m.complete_attach("mock0", seq);
        assert_eq!(r(&m, "class/mock0/attach"), "failed");
        assert_eq!(r(&m, "class/mock0/fail_attach"), "0");
        assert_eq!(w(&mut m, "class/mock0/attach", "attach"), "ok");
        m.complete_attach("mock0", seq + 1);
        assert_eq!(r(&m, "class/mock0/attach"), "attached");
    }

    #[test]
    fn local_functions_have_nothing_to_attach() {
        let mut m = Model::load(Params::default()).unwrap();
        assert_eq!(r(&m, "class/mock0/attach"), "local");
        assert_eq!(w(&mut m, "class/mock0/attach", "attach"), "EOPNOTSUPP");
        assert_eq!(w(&mut m, "class/mock0/fail_attach", "1"), "EOPNOTSUPP");
        assert_eq!(w(&mut m, "class/mock0/attach", "plug"), "EINVAL");
        assert!(m.functions(&Plain).iter().all(|f| f.attach.is_none()));
    }

    #[test]
    fn vfs_share_the_pf_memory_and_follow_the_pci_core_rules() {
        let mut m = Model::load(Params {
            num_pfs: 1,
            memory_mib: 1000,
            ..Default::default()
        })
        .unwrap();
        let events = m.write("class/mock0/sriov_numvfs", "3").unwrap();
        let actions: Vec<_> = events.iter().map(|e| (e.action, e.vf)).collect();
        assert_eq!(
            actions,
            [("add", Some(0)), ("add", Some(1)), ("add", Some(2)), ("change", None)]
        );
        // 1000 MiB / 3, rounded down to a MiB.
        assert_eq!(r(&m, "class/mock0_vf2/memory_size"), (333u64 << 20).to_string());
        assert_eq!(r(&m, "class/mock0_vf2/sriov_numvfs"), "ENOENT");
        assert_eq!(w(&mut m, "class/mock0/sriov_numvfs", "2"), "EBUSY");
        assert_eq!(w(&mut m, "class/mock0/sriov_numvfs", "3"), "ok");
        assert_eq!(w(&mut m, "class/mock0/sriov_numvfs", "9"), "ERANGE");
        assert_eq!(w(&mut m, "class/mock0_vf1/status", "1"), "ok");
        assert_eq!(w(&mut m, "class/mock0/sriov_numvfs", "0"), "EBUSY");
        assert_eq!(w(&mut m, "class/mock0_vf1/status", "0"), "ok");
        let events = m.write("class/mock0/sriov_numvfs", "0").unwrap();
        let actions: Vec<_> = events.iter().map(|e| (e.action, e.vf)).collect();
        assert_eq!(
            actions,
            [
                ("remove", Some(2)),
                ("remove", Some(1)),
                ("remove", Some(0)),
                ("change", None)
            ]
        );
        assert_eq!(r(&m, "class/mock0_vf0/status"), "ENOENT");
    }

    #[test]
    fn the_model_round_trips_through_json() {
        let mut m = Model::load(Params::default()).unwrap();
        m.write("class/mock1/sriov_numvfs", "2").unwrap();
        m.write("class/mock1_vf1/health", "degraded").unwrap();
        let back: Model = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
