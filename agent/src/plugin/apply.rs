//! A prepared claim made true on the node, and undone: its devices marked
//! allocated (or freed) through the backend, its CDI spec written (or
//! removed). Every step may be repeated: a crash at any point is completed
//! or undone by the next call.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::debug;

use super::checkpoint::{Claims, PreparedClaim, PreparedDevice};
use super::resolve::{ClaimError, unknown_device};
use super::{cdi, metadata};
use crate::backend::{Access, Backend, DeviceError};
use crate::claims::ClaimRef;
use crate::inventory::{Function, Inventory};

/// The node's devices and CDI directory, as the plugin changes them.
pub(super) struct Devices {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) driver: String,
    pub(super) cdi_root: PathBuf,
    /// Where the device metadata files go (None: not written).
    pub(super) metadata_root: Option<PathBuf>,
}

impl Devices {
    /// The devices' own word, read now (the last scan may predate our own
    /// last release): one marked allocated that no other claim of ours
    /// holds is something else's. (A device another claim holds a share of
    /// is marked already.)
    pub(super) fn check_free(
        &self,
        claim: &ClaimRef,
        devices: &[PreparedDevice],
        state: &Claims,
    ) -> Result<(), ClaimError> {
        let held: Vec<&PreparedDevice> = state
            .0
            .iter()
            .filter(|(uid, _)| *uid != &claim.uid)
            .flat_map(|(_, c)| c.devices.iter())
            .filter(|d| !d.admin_access)
            .collect();
        for d in devices.iter().filter(|d| !d.admin_access) {
            let allocated = self.backend.allocated(&d.function).unwrap_or(false);
            if allocated && !held.iter().any(|h| h.function == d.function) {
                return Err(ClaimError::new(
                    "conflict",
                    format!(
                        "device {} is marked allocated in {} (status=1) but no claim of this driver holds it: \
                         something else uses it; {}",
                        d.device,
                        self.backend.kind(),
                        self.backend.free_hint(&d.function)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Marks a device allocated or free, with the backend's refusals in words.
    pub(super) fn set_status(&self, d: &PreparedDevice, allocated: bool) -> Result<(), ClaimError> {
        let device = &d.device;
        self.backend.set_allocated(&d.function, allocated).map_err(|e| match e {
            DeviceError::Gone => ClaimError::new("device_gone", format!("device {device} is gone")),
            DeviceError::Removing => ClaimError::new("device_gone", format!("device {device} is being removed")),
            DeviceError::Unhealthy => ClaimError::new(
                "unhealthy",
                format!("device {device} is failed (health=failed): the module refuses to allocate it"),
            ),
            DeviceError::NotAttached => ClaimError::new(
                "not_attached",
                format!(
                    "device {device} is fabric-attached and not attached (attach): the module refuses to allocate it"
                ),
            ),
            e @ DeviceError::Io { .. } => ClaimError::new(self.backend.kind(), e.to_string()),
        })
    }

    /// Marks the devices allocated and writes the claim's CDI spec.
    pub(super) fn apply(&self, uid: &str, rec: &PreparedClaim, inv: &Inventory) -> Result<(), ClaimError> {
        let mut functions = Vec::new();
        for d in &rec.devices {
            let f = inv
                .functions
                .get(&d.function)
                .ok_or_else(|| unknown_device(inv, &d.device))?;
            functions.push(f);
        }
        for d in rec.devices.iter().filter(|d| !d.admin_access) {
            self.set_status(d, true)?;
        }
        crate::failpoints::crash("prepare/status-written");
        if let Some(root) = &self.metadata_root {
            metadata::write(root, &self.driver, uid, rec, &functions).map_err(|e| ClaimError::new("metadata", e))?;
        }
        let spec = self.spec(uid, rec, &functions);
        cdi::write_spec(&self.cdi_root, &rec.cdi_spec, &spec).map_err(|e| ClaimError::new("cdi", e))
    }

    /// The device node (kernel) or identity file (sim) of a function:
    /// read-only for admin access.
    fn access(&self, f: &Function, admin_access: bool) -> cdi::ContainerEdits {
        match self.backend.access(f) {
            Access::CharDevice { path, devnum } => cdi::ContainerEdits {
                device_nodes: vec![cdi::DeviceNode {
                    path,
                    kind: Some("c".into()),
                    major: devnum.map(|(m, _)| m as i64),
                    minor: devnum.map(|(_, n)| n as i64),
                    permissions: Some(if admin_access { "r" } else { "rw" }.into()),
                    host_path: None,
                }],
                ..Default::default()
            },
            Access::File { host_path, path } => cdi::ContainerEdits {
                mounts: vec![cdi::Mount {
                    host_path: host_path.display().to_string(),
                    container_path: path,
                    options: ["ro", "nosuid", "nodev", "noexec", "bind"].map(String::from).to_vec(),
                }],
                ..Default::default()
            },
        }
    }

    fn spec(&self, uid: &str, rec: &PreparedClaim, functions: &[&Function]) -> cdi::Spec {
        // Each request's metadata file, mounted by its first device.
        let mut mounts: Vec<Vec<cdi::Mount>> = vec![Vec::new(); rec.devices.len()];
        if let Some(root) = &self.metadata_root {
            for (base, (first, _)) in metadata::requests(rec) {
                mounts[first].push(metadata::mount(root, &self.driver, rec, &base));
            }
        }
        let devices = rec
            .devices
            .iter()
            .zip(functions)
            .zip(mounts)
            .map(|((d, f), metadata)| {
                let mut edits = cdi::ContainerEdits {
                    env: [
                        format!("MOCK_ACCEL_UUID={}", f.uuid),
                        format!("MOCK_ACCEL_PCI={}", f.pci_address),
                        format!("MOCK_ACCEL_DEVICE={}", f.name),
                        format!("MOCK_ACCEL_TYPE={}", f.kind.as_str()),
                        format!("MOCK_ACCEL_NUMA_NODE={}", f.numa_node),
                        // The container's share of the memory: what its
                        // claim consumed, else the whole device's.
                        format!(
                            "MOCK_ACCEL_MEMORY={}",
                            d.consumed_memory
                                .clone()
                                .unwrap_or_else(|| crate::slices::bytes_quantity(f.memory_bytes))
                        ),
                    ]
                    .into_iter()
                    .chain(d.share_id.as_ref().map(|s| format!("MOCK_ACCEL_SHARE_ID={s}")))
                    .collect(),
                    // The module's device node, or the sim's identity file.
                    ..self.access(f, d.admin_access)
                };
                edits.mounts.extend(metadata);
                cdi::Device {
                    name: cdi::device_name(uid, &d.device, d.share_id.as_deref()),
                    container_edits: edits,
                }
            })
            .collect();
        let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
        let mut spec = cdi::Spec {
            cdi_version: String::new(),
            kind: cdi::kind(&self.driver),
            devices,
            container_edits: cdi::ContainerEdits {
                env: vec![format!("MOCK_ACCEL_DEVICES={}", names.join(","))],
                ..Default::default()
            },
        };
        spec.cdi_version = cdi::minimum_version(&spec).to_string();
        spec
    }

    /// Frees the devices and removes the spec: all it can, then the first
    /// error. A device another claim still holds a share of (`others`)
    /// stays marked allocated: the last share frees it.
    pub(super) fn release(&self, rec: &PreparedClaim, others: &HashSet<String>) -> Result<(), ClaimError> {
        let spec = cdi::remove_spec(&rec.cdi_spec).map_err(|e| ClaimError::new("cdi", e));
        crate::failpoints::crash("unprepare/spec-removed");
        let mut first_err = spec.err();
        if let Some(root) = &self.metadata_root
            && let Err(e) = metadata::remove(root, rec)
        {
            first_err.get_or_insert(ClaimError::new("metadata", e));
        }
        for d in rec
            .devices
            .iter()
            .filter(|d| !d.admin_access && !others.contains(&d.function))
        {
            // Test-only fault: a write that fails.
            let freed = if crate::failpoints::fails(&format!("release-status/{}", rec.name)) {
                Err(ClaimError::new(
                    self.backend.kind(),
                    format!("freeing {}: injected fault", d.function),
                ))
            } else {
                self.set_status(d, false)
            };
            match freed {
                Ok(()) => {}
                // Gone with the device: nothing left to free.
                Err(e) if e.reason == "device_gone" => {
                    debug!(device = %d.device, "device gone; nothing to free")
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether a device of the claim is still marked allocated, or its CDI
    /// spec still there (after a release that failed: what it could not
    /// undo may never have been done).
    pub(super) fn holds_anything(&self, rec: &PreparedClaim, others: &HashSet<String>) -> bool {
        rec.cdi_spec.exists()
            || self
                .metadata_root
                .as_ref()
                .is_some_and(|root| metadata::claim_dir(root, &rec.namespace, &rec.name).exists())
            || rec
                .devices
                .iter()
                .filter(|d| !d.admin_access && !others.contains(&d.function))
                .any(|d| matches!(self.backend.allocated(&d.function), Ok(true)))
    }
}
