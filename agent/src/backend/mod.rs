//! The device backend: the one owner of everything the agent does to the
//! devices. [`Backend`] is all the rest of the agent sees of them — scan,
//! allocate and free, attach and detach, hot-plug, and the triggers that
//! say a scan is due — in the records of [`crate::inventory`] and the
//! errors of [`DeviceError`], never a path. [`sysfs::Sysfs`] is the kernel
//! module's implementation (kmod/ABI.md), with its two trigger sources:
//! [`uevents`] and the [`ebpf`] probes.
//!
//! Tests use the same implementation on a tree of files written the way
//! the module writes them ([`sysfs::write_fake_tree`]).

pub mod ebpf;
pub mod owner;
pub mod sim;
pub mod sysfs;
pub mod uevents;

use std::io;
use std::path::PathBuf;
use std::time::Instant;

use kobject_uevent::UEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::inventory::{Attach, Function, Health, Inventory};

/// What a backend did not do, in words the plugin and the binding reporter
/// turn into a claim's error or a metric.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No such function (removed, or never there).
    #[error("the function is gone")]
    Gone,
    /// The function is being removed.
    #[error("the function is being removed")]
    Removing,
    /// Refused: the function is failed (health=failed).
    #[error("the function is failed (health=failed)")]
    Unhealthy,
    /// Refused: a fabric-attached function that is not attached.
    #[error("the function is fabric-attached and not attached")]
    NotAttached,
    /// Anything else: what was tried, and the error.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Whether the device provider is there (for the kernel: the module is
/// loaded), and how many times it has come (a reload kills the eBPF
/// probes even if its going was never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModuleState {
    pub loaded: bool,
    pub loads: u64,
}

/// Why a scan is wanted.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A uevent about a mock-accel device or the module.
    /// `ebpf_attached`: whether the probes were attached when it was received
    /// (so eBPF should have seen the same device event).
    Uevent {
        source: &'static str,
        event: Box<UEvent>,
        at: Instant,
        ebpf_attached: bool,
    },
    /// The kernel dropped events (ENOBUFS): everything must be rescanned.
    Overflow { at: Instant },
    /// The eBPF probe saw the module probe or remove a function; `at` is
    /// the kernel's timestamp.
    Probe {
        event: mock_accel_ebpf::ProbeEvent,
        at: Instant,
    },
}

impl Trigger {
    /// When it happened (or was received).
    pub fn at(&self) -> Instant {
        match self {
            Trigger::Uevent { at, .. } | Trigger::Overflow { at } | Trigger::Probe { at, .. } => *at,
        }
    }
}

/// How a container reaches a function (its CDI edits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The function's character device, at `path` in the container too.
    CharDevice { path: String, devnum: Option<(u32, u32)> },
    /// No device node: a read-only file with what reading the device
    /// would return, mounted at `path`.
    File { host_path: PathBuf, path: String },
}

/// One write of `value` to an existing attribute file: never created,
/// never truncated (sysfs takes one write at offset 0).
pub(crate) fn write_attribute(path: &std::path::Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

/// PF ids 0..63, VFs 0..63 per PF (the module's limits).
pub const MAX_PFS: u32 = 64;
pub const MAX_VFS: u32 = 64;

/// The module's parameters (its load parameters: kmod/ABI.md), with its
/// defaults and ranges; the sim takes them from its flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub num_pfs: u32,
    pub numa_nodes: u32,
    pub max_vfs: u32,
    pub memory_mib: u64,
    pub fabric_attach_ms: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            num_pfs: 4,
            numa_nodes: 2,
            max_vfs: 8,
            memory_mib: 16384,
            fabric_attach_ms: 0,
        }
    }
}

impl Params {
    /// The module's load-time checks: the parameter out of range, named.
    pub fn check(&self) -> Result<(), String> {
        let checks: [(&str, u64, u64, u64); 5] = [
            ("num_pfs", self.num_pfs.into(), 0, MAX_PFS.into()),
            ("numa_nodes", self.numa_nodes.into(), 1, 8),
            ("max_vfs", self.max_vfs.into(), 0, MAX_VFS.into()),
            ("memory_mib", self.memory_mib, 1, 1 << 20),
            ("fabric_attach_ms", self.fabric_attach_ms.into(), 0, 60_000),
        ];
        for (name, v, lo, hi) in checks {
            if v < lo || v > hi {
                return Err(format!("{name}={v} is out of range ({lo}..{hi})"));
            }
        }
        Ok(())
    }
}

/// Which trigger sources to start (`--uevents`, `--ebpf`).
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    pub uevents: bool,
    pub ebpf: bool,
}

/// The devices of a node, whatever provides them. Calls are short and
/// blocking (file writes, for sysfs); every method but [`Backend::watch`]
/// may run on any thread.
pub trait Backend: Send + Sync + 'static {
    /// A bounded name for metric labels and reasons: `sysfs`, `sim`.
    fn kind(&self) -> &'static str;

    /// Where the devices are, for logs.
    fn location(&self) -> String;

    /// Every function now. A function that cannot be read is skipped with
    /// why; no provider (the module not loaded) is an empty inventory.
    fn scan(&self) -> io::Result<Inventory>;

    /// Whether the function is marked allocated now (a scan may be older
    /// than the last write).
    fn allocated(&self, function: &str) -> Result<bool, DeviceError>;

    /// Marks the function allocated or free; the provider may refuse.
    fn set_allocated(&self, function: &str, allocated: bool) -> Result<(), DeviceError>;

    /// Where a fabric-attached function's attach stands now; `None` for a
    /// local function or one that is gone.
    fn attach_state(&self, function: &str) -> Result<Option<Attach>, DeviceError>;

    /// Starts (`true`) or undoes (`false`) a fabric-attached function's attach.
    fn set_attached(&self, function: &str, attached: bool) -> Result<(), DeviceError>;

    /// How an operator frees a function that something else marked allocated.
    fn free_hint(&self, function: &str) -> String;

    /// Hot-plug: adds PF `pf` (on `numa_node`, else the provider's choice).
    fn add_pf(&self, pf: u32, numa_node: Option<u32>) -> Result<(), DeviceError>;

    /// Hot-plug: removes PF `pf` and its VFs, whatever their state.
    fn remove_pf(&self, pf: u32) -> Result<(), DeviceError>;

    /// SR-IOV: gives the PF named `pf` `vfs` VFs (0 removes them).
    fn set_vfs(&self, pf: &str, vfs: u32) -> Result<(), DeviceError>;

    /// Fault injection: the function's health.
    fn set_health(&self, function: &str, health: Health) -> Result<(), DeviceError>;

    /// Fault injection: the function's next `n` attaches fail (0 disarms).
    fn fail_attaches(&self, function: &str, n: u32) -> Result<(), DeviceError>;

    /// The provider's parameters now (for the module: its load
    /// parameters); not there (the module not loaded) is an error.
    fn parameters(&self) -> Result<Params, DeviceError>;

    /// Whether the provider is there now.
    fn module_state(&self) -> ModuleState;

    /// How a container reaches the function.
    fn access(&self, f: &Function) -> Access;

    /// Starts the sources that say a scan is due, as tasks in `tasks`;
    /// each sends to `tx` until `cancel`.
    fn watch(
        &self,
        sources: Sources,
        tx: mpsc::Sender<Trigger>,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        cancel: &CancellationToken,
    );
}
