//! The node's mock-accel functions as typed records, and how one is read
//! from its attributes (the module's, kmod/ABI.md) whoever serves them: a
//! backend ([`crate::backend`]) or the fuzzer's bytes. No I/O here;
//! nothing here knows of Kubernetes.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pf,
    Vf,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pf => "pf",
            Kind::Vf => "vf",
        }
    }
}

/// Ordered by severity: `Ok < Degraded < Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Ok,
    Degraded,
    Failed,
}

impl Health {
    /// From the word the module's `health` attribute says.
    pub fn parse(word: &str) -> Option<Health> {
        [Health::Ok, Health::Degraded, Health::Failed]
            .into_iter()
            .find(|h| h.as_str() == word)
    }

    /// As the module's `health` attribute says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Failed => "failed",
        }
    }
}

/// Where a fabric-attached function's attach stands (`attach`, ABI.md);
/// a local function (or a module without the file) has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Detached,
    Attaching,
    Attached,
    Failed,
}

impl Attach {
    pub fn as_str(self) -> &'static str {
        match self {
            Attach::Detached => "detached",
            Attach::Attaching => "attaching",
            Attach::Attached => "attached",
            Attach::Failed => "failed",
        }
    }
}

/// One PF or VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The class device name: `mock0`, `mock0_vf3`.
    pub name: String,
    pub kind: Kind,
    pub pf_index: u32,
    pub vf_index: Option<u32>,
    pub uuid: String,
    /// `0000:1a:00.0`
    pub pci_address: String,
    pub numa_node: u32,
    pub memory_bytes: u64,
    /// `compute,dma,sriov`
    pub capabilities: String,
    pub fw_version: String,
    /// The PF's class device name, for a VF.
    pub physfn: Option<String>,
    pub health: Health,
    /// 0 free, 1 allocated.
    pub status: u32,
    /// `(sriov_numvfs, sriov_totalvfs)` for a PF.
    pub sriov: Option<(u32, u32)>,
    /// The character device's `(major, minor)`, from `dev`.
    pub devnum: Option<(u32, u32)>,
    /// Fabric-attached functions only.
    pub attach: Option<Attach>,
}

impl Function {
    /// The function's character device node.
    pub fn device_node(&self) -> String {
        format!("/dev/mock-accel/{}", self.name)
    }
}

/// Why a function was left out of the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    MissingAttribute,
    BadValue,
    BadName,
}

impl SkipReason {
    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MissingAttribute => "missing_attribute",
            SkipReason::BadValue => "bad_value",
            SkipReason::BadName => "bad_name",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub reason: SkipReason,
    pub detail: String,
}

/// What a scan found: the usable functions, and those skipped with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub functions: BTreeMap<String, Function>,
    pub skipped: Vec<Skipped>,
    /// Made by a scan (the default, before the first one, is not).
    pub scanned: bool,
}

impl Inventory {
    /// Functions in (PF index, VF index) order, PFs before their VFs.
    pub fn ordered(&self) -> Vec<&Function> {
        let mut v: Vec<&Function> = self.functions.values().collect();
        v.sort_by_key(|f| (f.pf_index, f.vf_index.map_or(0, |i| i + 1)));
        v
    }
}

/// `mock3` → (3, None), `mock3_vf12` → (3, Some(12)).
pub fn parse_name(name: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix("mock")?;
    let digits = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match rest.split_once("_vf") {
        Some((pf, vf)) => Some((digits(pf)?, Some(digits(vf)?))),
        None => Some((digits(rest)?, None)),
    }
}

/// Where a function's attributes come from: its sysfs directory
/// ([`crate::backend::sysfs`]), or bytes
/// (the fuzz target, [`crate::fuzz::sysfs_function`]). Parsing sees only
/// what these return, so both go through the same checks.
pub trait Attributes {
    /// An attribute file's text as read (untrimmed); `NotFound` when absent.
    fn read(&self, attr: &str) -> io::Result<String>;
    /// Where a link points.
    fn read_link(&self, link: &str) -> io::Result<PathBuf>;
}

struct Reader<'a, A: Attributes + ?Sized> {
    attrs: &'a A,
}

impl<A: Attributes + ?Sized> Reader<'_, A> {
    fn text(&self, attr: &str) -> Result<String, (SkipReason, String)> {
        self.attrs.read(attr).map(|s| s.trim().to_string()).map_err(|e| {
            // There but not text (not UTF-8) is a bad value, not a missing one.
            let reason = match e.kind() {
                io::ErrorKind::InvalidData => SkipReason::BadValue,
                _ => SkipReason::MissingAttribute,
            };
            (reason, format!("{attr}: {e}"))
        })
    }

    fn number<T: std::str::FromStr>(&self, attr: &str) -> Result<T, (SkipReason, String)> {
        let text = self.text(attr)?;
        text.parse()
            .map_err(|_| (SkipReason::BadValue, format!("{attr}: {text:?} is not a number")))
    }

    fn link_name(&self, link: &str) -> Result<String, (SkipReason, String)> {
        self.attrs
            .read_link(link)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| (SkipReason::MissingAttribute, format!("{link}: not a link")))
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_pci_address(s: &str) -> bool {
    // dddd:bb:dd.f
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// One function from its attributes (a class directory, `name` its entry).
pub fn read_function<A: Attributes + ?Sized>(attrs: &A, name: &str) -> Result<Function, (SkipReason, String)> {
    let (pf_index, vf_index) = parse_name(name).ok_or((SkipReason::BadName, "not mockN or mockN_vfM".to_string()))?;
    let r = Reader { attrs };
    let kind = match r.text("type")?.as_str() {
        "pf" => Kind::Pf,
        "vf" => Kind::Vf,
        other => return Err((SkipReason::BadValue, format!("type: {other:?}"))),
    };
    if (kind == Kind::Vf) != vf_index.is_some() {
        return Err((
            SkipReason::BadName,
            format!("type {} does not match the name", kind.as_str()),
        ));
    }
    let uuid = r.text("uuid")?;
    if !is_uuid(&uuid) {
        return Err((SkipReason::BadValue, format!("uuid: {uuid:?}")));
    }
    let pci_address = r.link_name("device")?;
    if !is_pci_address(&pci_address) {
        return Err((
            SkipReason::BadValue,
            format!("device: {pci_address:?} is not a PCI address"),
        ));
    }
    let text = r.text("health")?;
    let Some(health) = Health::parse(&text) else {
        return Err((SkipReason::BadValue, format!("health: {text:?}")));
    };
    let fw_version = r.text("fw_version")?;
    let capabilities = r.text("capabilities")?;
    if fw_version.is_empty() || fw_version.len() > 64 || capabilities.len() > 64 {
        return Err((
            SkipReason::BadValue,
            "fw_version or capabilities: empty or longer than 64".into(),
        ));
    }
    let physfn = match kind {
        Kind::Vf => Some(r.link_name("physfn")?),
        Kind::Pf => None,
    };
    let sriov = match kind {
        Kind::Pf => Some((r.number("sriov_numvfs")?, r.number("sriov_totalvfs")?)),
        Kind::Vf => None,
    };
    Ok(Function {
        name: name.to_string(),
        kind,
        pf_index,
        vf_index,
        uuid,
        pci_address,
        numa_node: r.number("numa_node")?,
        memory_bytes: r.number("memory_size")?,
        capabilities,
        fw_version,
        physfn,
        health,
        status: r.number("status")?,
        sriov,
        devnum: read_devnum(attrs),
        attach: read_attach(attrs)?,
    })
}

/// `attach`: none for a local function, or a module older than the file.
/// Also read on its own by the backend, for the module's word now.
pub fn read_attach<A: Attributes + ?Sized>(attrs: &A) -> Result<Option<Attach>, (SkipReason, String)> {
    let text = match attrs.read("attach") {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err((SkipReason::MissingAttribute, format!("attach: {e}"))),
    };
    Ok(Some(match text.trim() {
        "local" => return Ok(None),
        "detached" => Attach::Detached,
        "attaching" => Attach::Attaching,
        "attached" => Attach::Attached,
        "failed" => Attach::Failed,
        other => return Err((SkipReason::BadValue, format!("attach: {other:?}"))),
    }))
}

/// `dev` holds "MAJOR:MINOR"; a function without one has no node (yet).
fn read_devnum<A: Attributes + ?Sized>(attrs: &A) -> Option<(u32, u32)> {
    let text = attrs.read("dev").ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Records for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A local, healthy, free PF named `name`; the rest empty.
    pub fn function(name: &str) -> Function {
        Function {
            name: name.into(),
            kind: Kind::Pf,
            pf_index: 0,
            vf_index: None,
            uuid: String::new(),
            pci_address: String::new(),
            numa_node: 0,
            memory_bytes: 0,
            capabilities: String::new(),
            fw_version: String::new(),
            physfn: None,
            health: Health::Ok,
            status: 0,
            sriov: None,
            devnum: None,
            attach: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("mock3"), Some((3, None)));
        assert_eq!(parse_name("mock3_vf12"), Some((3, Some(12))));
        assert_eq!(parse_name("mock"), None);
        assert_eq!(parse_name("mock3_vf"), None);
        assert_eq!(parse_name("mockx"), None);
        assert_eq!(parse_name("other0"), None);
    }
}
