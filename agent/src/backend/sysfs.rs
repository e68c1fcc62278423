//! The kernel module's devices, through its sysfs ABI (kmod/ABI.md): the
//! class directory (`/sys/class/mock-accel/<function>/<attribute>`), the
//! bus's hot-plug files (`/sys/bus/mock-accel/new_device`, `del_device`)
//! and the module's own directory (`/sys/module/mock_accel`). Every path
//! of the module the agent uses is built here, and every errno the module
//! answers is put in words here.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::owner::{self, Ownership};
use super::uevents::{self, MODULE, SUBSYSTEM};
use super::{Access, Backend, DeviceError, ModuleState, Params, Sources, Trigger, ebpf};
use crate::inventory::{self, Attach, Attributes, Function, Health, Inventory, Skipped};
use crate::metrics as m;

/// The module's devices under a class directory: `/sys/class/mock-accel`
/// on a node, a tree of [`write_fake_tree`] in tests. With an
/// [`Ownership`], only this node's functions (see [`super::owner`]).
#[derive(Debug)]
pub struct Sysfs {
    class: PathBuf,
    owner: Option<Ownership>,
    /// The module load whose PFs were taken (its directory's inode: a new
    /// one per load), so a reload, which forgets every owner, takes again.
    taken_at: Mutex<Option<u64>>,
}

impl Sysfs {
    pub fn new(class: impl Into<PathBuf>) -> Sysfs {
        Sysfs {
            class: class.into(),
            owner: None,
            taken_at: Mutex::new(None),
        }
    }

    /// This node's functions only, by their owners.
    pub fn owned_by(mut self, o: Ownership) -> Sysfs {
        self.owner = Some(o);
        self
    }

    /// On a shared kernel, at the first scan after each load of the module:
    /// takes what the ownership asks for.
    fn take_if_loaded_anew(&self, o: &Ownership) {
        if !o.shared || (o.take == 0 && o.take_ids.is_empty()) {
            return;
        }
        let module = self.sys().join("module").join(MODULE);
        let Ok(load) = fs::metadata(&module)
            .or_else(|_| fs::metadata(&self.class))
            .map(|m| m.ino())
        else {
            return; // not loaded
        };
        let mut taken_at = self.taken_at.lock().unwrap();
        if *taken_at == Some(load) {
            return;
        }
        match owner::take_at_load(&self.class, o) {
            Ok(r) => {
                *taken_at = Some(load);
                ::metrics::counter!(m::OWNER_TAKEN).increment(r.taken.len() as u64);
                info!(node = %o.node, had = ?r.had, taken = ?r.taken, "shared kernel: this node's PFs");
                for (id, who) in &r.refused {
                    ::metrics::counter!(m::OWNER_REFUSED).increment(1);
                    warn!(pf = id, owner = %who, "shared kernel: PF {id} was asked for but node {who} owns it");
                }
                for id in &r.missing {
                    warn!(pf = id, "shared kernel: PF {id} was asked for but does not exist");
                }
                if r.had.len() + r.taken.len() < o.take as usize {
                    warn!(
                        want = o.take,
                        have = r.had.len() + r.taken.len(),
                        "shared kernel: fewer unowned PFs than asked for"
                    );
                }
            }
            Err(e) => warn!(error = %e, "shared kernel: taking PFs failed; trying again at the next scan"),
        }
    }

    /// Gives back every PF `node` owns (a node gone from the cluster; the
    /// controller decides when), its functions freed first.
    pub fn release(&self, node: &str) -> io::Result<Vec<u32>> {
        owner::release(&self.class, node)
    }

    /// The owners of the PFs on this kernel, with their PF ids.
    pub fn owners(&self) -> io::Result<BTreeMap<String, Vec<u32>>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (id, who) in owner::pfs(&self.class)? {
            if !who.is_empty() {
                out.entry(who).or_default().push(id);
            }
        }
        Ok(out)
    }

    /// The class directory.
    pub fn class(&self) -> &Path {
        &self.class
    }

    fn attribute(&self, function: &str, attribute: &str) -> PathBuf {
        self.class.join(function).join(attribute)
    }

    /// The sysfs mount the class directory is in (`/sys`), taken from its
    /// path (the class directory is absent while the module is not loaded).
    fn sys(&self) -> PathBuf {
        self.class
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("/sys"), Path::to_path_buf)
    }

    fn bus_file(&self, file: &str) -> PathBuf {
        self.sys().join("bus").join(SUBSYSTEM).join(file)
    }

    /// Writes `value` to an existing attribute file: never created, never
    /// truncated (sysfs takes one write at offset 0).
    fn write(path: &Path, value: &str) -> Result<(), DeviceError> {
        super::write_attribute(path, value).map_err(|e| match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => DeviceError::Gone,
            (_, Some(libc::ENODEV)) => DeviceError::Removing,
            (_, Some(libc::EIO)) => DeviceError::Unhealthy,
            (_, Some(libc::ENOLINK)) => DeviceError::NotAttached,
            _ => DeviceError::Io {
                what: format!("writing {value} to {}", path.display()),
                source: e,
            },
        })
    }
}

impl Attributes for Path {
    fn read(&self, attr: &str) -> io::Result<String> {
        fs::read_to_string(self.join(attr))
    }

    fn read_link(&self, link: &str) -> io::Result<PathBuf> {
        fs::read_link(self.join(link))
    }
}

impl Backend for Sysfs {
    fn kind(&self) -> &'static str {
        "sysfs"
    }

    fn location(&self) -> String {
        self.class.display().to_string()
    }

    /// Reads every function of the class directory. A missing directory is
    /// an empty inventory (the module is not loaded); a function with a
    /// missing or broken attribute is skipped, with the reason, and the
    /// rest are kept.
    fn scan(&self) -> io::Result<Inventory> {
        if let Some(o) = &self.owner {
            self.take_if_loaded_anew(o);
        }
        let mut inv = Inventory {
            scanned: true,
            ..Default::default()
        };
        let entries = match fs::read_dir(&self.class) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(inv),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(o) = &self.owner {
                match owner::read(&entry.path()) {
                    Ok(who) if o.mine(&who) => {}
                    Ok(_) => continue, // another node's (or nobody's, shared)
                    Err(_) if !entry.path().exists() => continue,
                    Err(e) => {
                        inv.skipped.push(Skipped {
                            name,
                            reason: inventory::SkipReason::BadValue,
                            detail: format!("owner: {e}"),
                        });
                        continue;
                    }
                }
            }
            // Class entries are symlinks to the device directories.
            match inventory::read_function(entry.path().as_path(), &name) {
                Ok(f) => {
                    inv.functions.insert(name, f);
                }
                // A function removed while we read it is not an error.
                Err(_) if !entry.path().exists() => {}
                Err((reason, detail)) => inv.skipped.push(Skipped { name, reason, detail }),
            }
        }
        inv.skipped.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(inv)
    }

    fn allocated(&self, function: &str) -> Result<bool, DeviceError> {
        let path = self.attribute(function, "status");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim() == "1"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DeviceError::Gone),
            Err(e) => Err(DeviceError::Io {
                what: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    fn set_allocated(&self, function: &str, allocated: bool) -> Result<(), DeviceError> {
        Self::write(&self.attribute(function, "status"), if allocated { "1" } else { "0" })
    }

    fn attach_state(&self, function: &str) -> Result<Option<Attach>, DeviceError> {
        inventory::read_attach(self.class.join(function).as_path()).map_err(|(_, detail)| DeviceError::Io {
            what: format!("reading {}", self.attribute(function, "attach").display()),
            source: io::Error::new(io::ErrorKind::InvalidData, detail),
        })
    }

    fn set_attached(&self, function: &str, attached: bool) -> Result<(), DeviceError> {
        Self::write(
            &self.attribute(function, "attach"),
            if attached { "attach" } else { "detach" },
        )
    }

    fn free_hint(&self, function: &str) -> String {
        format!("write 0 to {} to free it", self.attribute(function, "status").display())
    }

    /// On a shared kernel the PF is added with this node as its owner (from
    /// its first uevent on); one that exists unowned is taken instead, one
    /// of another node is refused, naming it.
    fn add_pf(&self, pf: u32, numa_node: Option<u32>) -> Result<(), DeviceError> {
        let Some(o) = self.owner.as_ref().filter(|o| o.shared) else {
            let value = match numa_node {
                Some(n) => format!("{pf} {n}"),
                None => pf.to_string(),
            };
            return Self::write(&self.bus_file("new_device"), &value);
        };
        let numa_node = match numa_node {
            Some(n) => n,
            None => pf % self.parameters()?.numa_nodes.max(1),
        };
        match Self::write(&self.bus_file("new_device"), &format!("{pf} {numa_node} {}", o.node)) {
            Err(DeviceError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                match owner::take(&self.class, pf, &o.node) {
                    Ok(owner::Taken::Yes) => Ok(()),
                    Ok(owner::Taken::Gone) => Err(DeviceError::Gone),
                    Ok(owner::Taken::Busy(who)) => Err(DeviceError::Io {
                        what: format!("adding PF {pf}"),
                        source: io::Error::other(format!("it exists and belongs to node {who}")),
                    }),
                    Err(e) => Err(DeviceError::Io {
                        what: format!("taking the existing PF {pf}"),
                        source: e,
                    }),
                }
            }
            r => r,
        }
    }

    fn remove_pf(&self, pf: u32) -> Result<(), DeviceError> {
        Self::write(&self.bus_file("del_device"), &pf.to_string())
    }

    fn set_vfs(&self, pf: &str, vfs: u32) -> Result<(), DeviceError> {
        Self::write(&self.attribute(pf, "sriov_numvfs"), &vfs.to_string())
    }

    fn set_health(&self, function: &str, health: Health) -> Result<(), DeviceError> {
        Self::write(&self.attribute(function, "health"), health.as_str())
    }

    fn fail_attaches(&self, function: &str, n: u32) -> Result<(), DeviceError> {
        Self::write(&self.attribute(function, "fail_attach"), &n.to_string())
    }

    fn parameters(&self) -> Result<Params, DeviceError> {
        let dir = self.sys().join("module").join(MODULE).join("parameters");
        let read = |p: &str| -> Result<u64, DeviceError> {
            let path = dir.join(p);
            let text = fs::read_to_string(&path).map_err(|e| DeviceError::Io {
                what: format!("reading {}", path.display()),
                source: e,
            })?;
            text.trim().parse().map_err(|_| DeviceError::Io {
                what: format!("reading {}", path.display()),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {:?}", text.trim())),
            })
        };
        let small = |p: &str| -> Result<u32, DeviceError> {
            u32::try_from(read(p)?).map_err(|_| DeviceError::Io {
                what: format!("reading {}", dir.join(p).display()),
                source: io::Error::new(io::ErrorKind::InvalidData, "out of range"),
            })
        };
        Ok(Params {
            num_pfs: small("num_pfs")?,
            numa_nodes: small("numa_nodes")?,
            max_vfs: small("max_vfs")?,
            memory_mib: read("memory_mib")?,
            fabric_attach_ms: small("fabric_attach_ms")?,
        })
    }

    fn module_state(&self) -> ModuleState {
        ModuleState {
            loaded: self.sys().join("module").join(MODULE).exists(),
            loads: 0,
        }
    }

    fn access(&self, f: &Function) -> Access {
        Access::CharDevice {
            path: f.device_node(),
            devnum: f.devnum,
        }
    }

    fn watch(
        &self,
        sources: Sources,
        tx: mpsc::Sender<Trigger>,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    ) {
        // The uevents tell the probes when the module comes and goes.
        let (module_tx, module_rx) = tokio::sync::watch::channel(self.module_state());
        let ebpf_attached = Arc::new(AtomicBool::new(false));
        if sources.ebpf {
            let (tx, attached, cancel) = (tx.clone(), ebpf_attached.clone(), cancel.clone());
            tasks.spawn(
                async move {
                    // Not critical: on failure the agent goes on with uevents.
                    if let Err(e) = ebpf::run(tx, module_rx, attached, cancel.clone()).await {
                        ::metrics::gauge!(m::EBPF_ATTACHED).set(0.0);
                        warn!(error = %format!("{e:#}"), "the eBPF probes stopped; going on with uevents alone");
                        cancel.cancelled().await;
                    }
                    Ok(())
                }
                .instrument(info_span!("ebpf")),
            );
        } else {
            ::metrics::gauge!(m::EBPF_AVAILABLE).set(0.0);
            info!("eBPF probes off (--ebpf=false)");
        }
        if sources.uevents {
            tasks.spawn(
                uevents::kernel_uevents(tx.clone(), module_tx, ebpf_attached, cancel.clone())
                    .instrument(info_span!("uevents")),
            );
            // The udev thread ends with the token; it is not critical.
            let _ = uevents::udev_uevents(tx, cancel.clone());
        } else {
            warn!("kernel uevents are off (--uevents=false): only rescans update the slices");
        }
    }
}

/// One scan of the class directory `class` (see [`Backend::scan`]).
pub fn scan(class: &Path) -> io::Result<Inventory> {
    Sysfs::new(class).scan()
}

/// Writes a fake class directory of `pfs` PFs with `vfs` VFs each at
/// `root`, as the module would (for tests and benchmarks without it).
pub fn write_fake_tree(root: &Path, pfs: u32, vfs: u32) -> io::Result<()> {
    let devices = root.join("../../devices/mock-accel");
    for pf in 0..pfs {
        write_fake_function(root, &devices, pf, None, vfs)?;
        for vf in 0..vfs {
            write_fake_function(root, &devices, pf, Some(vf), vfs)?;
        }
    }
    Ok(())
}

/// One fake function (see [`write_fake_tree`]).
pub fn write_fake_function(root: &Path, devices: &Path, pf: u32, vf: Option<u32>, vfs: u32) -> io::Result<()> {
    let name = match vf {
        Some(v) => format!("mock{pf}_vf{v}"),
        None => format!("mock{pf}"),
    };
    let devfn = vf.map_or(0, |v| v + 1);
    let pci = format!("0000:{:02x}:{:02x}.{}", 0x1a + pf, devfn >> 3, devfn & 7);
    let dir = devices.join(&pci).join("mock-accel").join(&name);
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(root)?;
    let attrs: Vec<(&str, String)> = vec![
        (
            "uuid",
            format!("{:08x}-0000-8000-8000-{:012x}", pf, vf.map_or(0xfff, |v| v as u64)),
        ),
        ("type", if vf.is_some() { "vf" } else { "pf" }.into()),
        (
            "memory_size",
            if vf.is_some() {
                (16u64 << 30) / vfs.max(1) as u64
            } else {
                16u64 << 30
            }
            .to_string(),
        ),
        (
            "capabilities",
            if vf.is_some() {
                "compute,dma"
            } else {
                "compute,dma,sriov"
            }
            .into(),
        ),
        ("numa_node", (pf % 2).to_string()),
        ("fw_version", "1.4.2".into()),
        ("status", "0".into()),
        ("health", "ok".into()),
        ("dev", format!("240:{}", pf * 256 + vf.map_or(0, |v| v + 1))),
        ("owner", String::new()),
    ];
    for (attr, value) in attrs {
        fs::write(dir.join(attr), format!("{value}\n"))?;
    }
    let _ = fs::remove_file(dir.join("device"));
    std::os::unix::fs::symlink(format!("../../../{pci}"), dir.join("device"))?;
    if vf.is_some() {
        let _ = fs::remove_file(dir.join("physfn"));
        std::os::unix::fs::symlink(
            format!("../../../0000:{:02x}:00.0/mock-accel/mock{pf}", 0x1a + pf),
            dir.join("physfn"),
        )?;
    } else {
        fs::write(dir.join("sriov_numvfs"), format!("{vfs}\n"))?;
        fs::write(dir.join("sriov_totalvfs"), format!("{}\n", vfs.max(8)))?;
    }
    let link = root.join(&name);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&dir, link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::owner::Ownership;
    use crate::inventory::{Kind, SkipReason};

    fn tree(pfs: u32, vfs: u32) -> (tempfile::TempDir, Sysfs) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, pfs, vfs).unwrap();
        (dir, Sysfs::new(root))
    }

    fn dev(s: &Sysfs, name: &str) -> PathBuf {
        fs::canonicalize(s.class().join(name)).unwrap()
    }

    #[test]
    fn a_good_tree() {
        let (_dir, s) = tree(2, 3);
        let inv = s.scan().unwrap();
        assert!(inv.skipped.is_empty(), "{:?}", inv.skipped);
        assert_eq!(inv.functions.len(), 8);
        let vf = &inv.functions["mock1_vf2"];
        assert_eq!(vf.kind, Kind::Vf);
        assert_eq!(vf.physfn.as_deref(), Some("mock1"));
        assert_eq!(vf.pci_address, "0000:1b:00.3");
        assert_eq!(vf.numa_node, 1);
        let pf = &inv.functions["mock0"];
        assert_eq!(pf.sriov, Some((3, 8)));
        assert_eq!(pf.memory_bytes, 16 << 30);
        assert_eq!(vf.devnum, Some((240, 259)));
        assert_eq!(vf.device_node(), "/dev/mock-accel/mock1_vf2");
        let order: Vec<&str> = inv.ordered().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order[..5], ["mock0", "mock0_vf0", "mock0_vf1", "mock0_vf2", "mock1"]);
    }

    #[test]
    fn broken_functions_are_skipped_and_the_rest_kept() {
        let (_dir, s) = tree(4, 0);
        fs::remove_file(dev(&s, "mock0").join("uuid")).unwrap();
        fs::write(dev(&s, "mock1").join("numa_node"), "two\n").unwrap();
        fs::write(dev(&s, "mock2").join("health"), "meh\n").unwrap();
        std::os::unix::fs::symlink(dev(&s, "mock3"), s.class().join("weird7")).unwrap();
        let inv = s.scan().unwrap();
        assert_eq!(inv.functions.keys().collect::<Vec<_>>(), ["mock3"]);
        let reasons: Vec<(&str, SkipReason)> = inv.skipped.iter().map(|s| (s.name.as_str(), s.reason)).collect();
        assert_eq!(
            reasons,
            [
                ("mock0", SkipReason::MissingAttribute),
                ("mock1", SkipReason::BadValue),
                ("mock2", SkipReason::BadValue),
                ("weird7", SkipReason::BadName)
            ]
        );
    }

    #[test]
    fn fabric_attach_states_are_read_and_local_means_none() {
        let (_dir, s) = tree(4, 0);
        fs::write(dev(&s, "mock0").join("attach"), "local\n").unwrap();
        fs::write(dev(&s, "mock1").join("attach"), "attaching\n").unwrap();
        fs::write(dev(&s, "mock2").join("attach"), "plugged\n").unwrap();
        let inv = s.scan().unwrap();
        assert_eq!(inv.functions["mock0"].attach, None);
        assert_eq!(inv.functions["mock1"].attach, Some(Attach::Attaching));
        assert_eq!(inv.functions["mock3"].attach, None, "no file: an older module");
        let skipped: Vec<(&str, SkipReason)> = inv.skipped.iter().map(|s| (s.name.as_str(), s.reason)).collect();
        assert_eq!(skipped, [("mock2", SkipReason::BadValue)]);
        assert_eq!(s.attach_state("mock1").unwrap(), Some(Attach::Attaching));
        assert_eq!(s.attach_state("mock3").unwrap(), None);
        assert_eq!(s.attach_state("mock9").unwrap(), None, "gone");
        let e = s.attach_state("mock2").unwrap_err().to_string();
        assert!(e.contains("mock2/attach") && e.contains("plugged"), "{e}");
    }

    #[test]
    fn a_missing_root_is_empty_and_a_huge_tree_scans() {
        let dir = tempfile::tempdir().unwrap();
        let none = Sysfs::new(dir.path().join("nope")).scan().unwrap();
        assert!(
            none.scanned && none.functions.is_empty() && none.skipped.is_empty(),
            "{none:?}"
        );
        let (_dir, s) = tree(64, 64);
        let inv = s.scan().unwrap();
        assert_eq!(inv.functions.len(), 64 * 65);
        assert!(inv.skipped.is_empty());
    }

    /// Issue 18 #9: the status attribute was written with
    /// O_CREAT|O_TRUNC: a function directory without its attribute got a
    /// regular file, and the write "succeeded".
    #[test]
    fn attributes_are_written_only_where_they_are() {
        let (_dir, s) = tree(1, 0);
        let status = dev(&s, "mock0").join("status");
        fs::remove_file(&status).unwrap();
        assert!(matches!(s.set_allocated("mock0", true), Err(DeviceError::Gone)));
        assert!(!status.exists(), "a status file was created");
        assert!(matches!(s.allocated("mock0"), Err(DeviceError::Gone)));
        fs::write(&status, "0\n").unwrap();
        s.set_allocated("mock0", true).unwrap();
        // One write at offset 0, as sysfs takes it.
        assert_eq!(fs::read_to_string(&status).unwrap(), "1\n");
        assert!(s.allocated("mock0").unwrap());
        assert!(
            matches!(s.set_attached("mock0", true), Err(DeviceError::Gone)),
            "no attach file"
        );
        assert!(s.free_hint("mock0").contains("mock-accel/mock0/status"));
    }

    /// Issue 35: another node's functions are never scanned; on a shared
    /// kernel unowned ones are not either, and the PFs asked for are taken
    /// at the first scan of a load.
    #[test]
    fn only_this_nodes_functions_are_scanned() {
        let (_dir, s) = tree(4, 1);
        let class = s.class().to_path_buf();
        for (f, who) in [
            ("mock1", "node-b"),
            ("mock1_vf0", "node-b"),
            ("mock2", "node-a"),
            ("mock2_vf0", "node-a"),
        ] {
            fs::write(class.join(f).join("owner"), format!("{who}\n")).unwrap();
        }
        let scan = |shared: bool, take: u32| {
            Sysfs::new(&class)
                .owned_by(Ownership {
                    node: "node-a".into(),
                    shared,
                    take,
                    take_ids: vec![],
                })
                .scan()
                .unwrap()
                .functions
                .into_keys()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            scan(false, 0),
            ["mock0", "mock0_vf0", "mock2", "mock2_vf0", "mock3", "mock3_vf0"]
        );
        assert_eq!(scan(true, 0), ["mock2", "mock2_vf0"]);
        // Taking one more: the lowest unowned PF (on files a VF does not
        // follow its PF as it does in the kernel).
        assert_eq!(scan(true, 2), ["mock0", "mock2", "mock2_vf0"]);
        assert_eq!(fs::read_to_string(class.join("mock0/owner")).unwrap().trim(), "node-a");
    }

    #[test]
    fn hot_plug_writes_the_bus_and_the_pf() {
        let (dir, s) = tree(1, 0);
        let bus = dir.path().join("sys/bus/mock-accel");
        assert!(matches!(s.add_pf(3, None), Err(DeviceError::Gone)), "no bus: no module");
        fs::create_dir_all(&bus).unwrap();
        for f in ["new_device", "del_device"] {
            fs::write(bus.join(f), "").unwrap();
        }
        s.add_pf(3, Some(1)).unwrap();
        assert_eq!(fs::read_to_string(bus.join("new_device")).unwrap(), "3 1");
        s.remove_pf(3).unwrap();
        assert_eq!(fs::read_to_string(bus.join("del_device")).unwrap(), "3");
        s.set_vfs("mock0", 4).unwrap();
        assert_eq!(
            fs::read_to_string(dev(&s, "mock0").join("sriov_numvfs")).unwrap(),
            "4\n"
        );
        assert!(!s.module_state().loaded);
        fs::create_dir_all(dir.path().join("sys/module/mock_accel")).unwrap();
        assert!(s.module_state().loaded);
    }
}
