//! The plugin's checkpoint: which claims are prepared with which devices,
//! on which boot. A versioned JSON file in the plugin directory with a
//! checksum, replaced atomically. A file we cannot trust (corrupt, or
//! written by a newer agent) is never overwritten: every call fails with
//! the reason until an operator moves it away.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cdi::write_atomic;

/// The format this agent writes; it reads this one only.
pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "checkpoint.json";

/// Where a claim is in its preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum ClaimState {
    /// Recorded before any device was touched: on a crash, the next call
    /// completes it (prepare) or undoes whatever was done (unprepare).
    PrepareStarted,
    PrepareCompleted,
}

/// One device of a prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreparedDevice {
    /// The requests of the claim this device answers.
    pub requests: Vec<String>,
    pub pool: String,
    /// The device name in the ResourceSlice (`mock0-vf3`).
    pub device: String,
    /// The module's function name (`mock0_vf3`).
    pub function: String,
    /// The PF's function name, for a VF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physfn: Option<String>,
    /// Admin access: no exclusive allocation, no sysfs status change.
    #[serde(default)]
    pub admin_access: bool,
    /// The share of a device several claims hold (consumable capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// The memory that share takes (`consumedCapacity.memory`, "4Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_memory: Option<String>,
    pub cdi_device_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    pub state: ClaimState,
    /// The boot the devices were prepared in.
    pub boot_id: String,
    pub cdi_spec: PathBuf,
    pub devices: Vec<PreparedDevice>,
    /// The pod's name for a claim made from a template
    /// (`resource.kubernetes.io/pod-claim-name`): where its device
    /// metadata is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_claim_name: Option<String>,
}

/// The checkpoint's content, by claim UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Claims(pub BTreeMap<String, PreparedClaim>);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    version: u32,
    driver: String,
    node: String,
    /// CRC-32 of the canonical JSON of `claims`.
    checksum: u32,
    claims: Claims,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "the checkpoint {path} is corrupt ({detail}); it is kept as is: move it away to start afresh (prepared devices are then forgotten)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the checkpoint {path} has format version {found}, newer than this agent's {VERSION}: downgrading would lose data, so it is left alone"
    )]
    FutureVersion { path: PathBuf, found: u32 },
    #[error("the checkpoint {path} belongs to driver {driver:?} on node {node:?}, not this one")]
    Foreign {
        path: PathBuf,
        driver: String,
        node: String,
    },
    #[error("reading the checkpoint {path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

impl Error {
    /// A bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Corrupt { .. } => "corrupt",
            Error::FutureVersion { .. } => "future_version",
            Error::Foreign { .. } => "foreign",
            Error::Io { .. } => "io",
        }
    }
}

/// The checkpoint file of one driver on one node.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    driver: String,
    node: String,
}

fn checksum(claims: &Claims) -> u32 {
    crc32fast::hash(&serde_json::to_vec(claims).expect("claims serialise"))
}

impl Checkpoint {
    pub fn new(dir: &Path, driver: &str, node: &str) -> Checkpoint {
        Checkpoint {
            path: dir.join(FILE_NAME),
            driver: driver.into(),
            node: node.into(),
        }
    }

    /// Reads the claims; no file is no claim.
    pub fn load(&self) -> Result<Claims, Error> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Claims::default()),
            Err(e) => {
                return Err(Error::Io {
                    path: self.path.clone(),
                    detail: e.to_string(),
                });
            }
        };
        self.decode(&bytes)
    }

    /// The claims in a checkpoint file's bytes (what [`Checkpoint::load`]
    /// read), checked: format version, checksum, driver and node.
    pub fn decode(&self, bytes: &[u8]) -> Result<Claims, Error> {
        let path = self.path.clone();
        // The version first, so that a newer format is recognised even if
        // this agent cannot parse the rest of it.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            detail: format!("not JSON: {e}"),
        })?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == VERSION as u64 => {}
            Some(v) if v > VERSION as u64 => {
                return Err(Error::FutureVersion {
                    path,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                });
            }
            other => {
                return Err(Error::Corrupt {
                    path,
                    detail: format!("version {other:?} is not a known format version"),
                });
            }
        }
        let file: File = serde_json::from_value(value).map_err(|e| Error::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if checksum(&file.claims) != file.checksum {
            return Err(Error::Corrupt {
                path,
                detail: "checksum mismatch".into(),
            });
        }
        if file.driver != self.driver || file.node != self.node {
            return Err(Error::Foreign {
                path,
                driver: file.driver,
                node: file.node,
            });
        }
        Ok(file.claims)
    }

    /// Replaces the file atomically (temp file, fsync, rename).
    pub fn save(&self, claims: &Claims) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&self.path, &self.encode(claims))
    }

    /// The file's bytes for these claims (what [`Checkpoint::save`] writes).
    pub fn encode(&self, claims: &Claims) -> Vec<u8> {
        let file = File {
            version: VERSION,
            driver: self.driver.clone(),
            node: self.node.clone(),
            checksum: checksum(claims),
            claims: claims.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("a checkpoint serialises");
        json.push(b'\n');
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        let mut c = Claims::default();
        c.0.insert(
            "uid-1".into(),
            PreparedClaim {
                namespace: "default".into(),
                name: "c".into(),
                state: ClaimState::PrepareCompleted,
                boot_id: "b1".into(),
                cdi_spec: "/var/run/cdi/x.json".into(),
                devices: vec![PreparedDevice {
                    requests: vec!["accel".into()],
                    pool: "node-a".into(),
                    device: "mock0-vf1".into(),
                    function: "mock0_vf1".into(),
                    physfn: Some("mock0".into()),
                    admin_access: false,
                    share_id: None,
                    consumed_memory: None,
                    cdi_device_id: "k8s.d/accel=uid-1-mock0-vf1".into(),
                }],
                pod_claim_name: None,
            },
        );
        c
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint::new(dir.path(), "d", "node-a");
        assert_eq!(cp.load().unwrap(), Claims::default());
        cp.save(&claims()).unwrap();
        assert_eq!(cp.load().unwrap(), claims());

        let good = fs::read_to_string(&cp.path).unwrap();
        // A flipped byte that keeps the JSON valid: the checksum catches it.
        fs::write(&cp.path, good.replace("mock0-vf1", "mock0-vf2")).unwrap();
        assert_eq!(cp.load().unwrap_err().kind(), "corrupt");
        // Truncated.
        fs::write(&cp.path, &good[..good.len() / 2]).unwrap();
        let err = cp.load().unwrap_err();
        assert_eq!(err.kind(), "corrupt");
        assert!(err.to_string().contains("kept as is"), "{err}");
        // From a newer agent, with fields this one does not know.
        fs::write(&cp.path, r#"{"version": 7, "whatever": []}"#).unwrap();
        let err = cp.load().unwrap_err();
        assert_eq!(
            err,
            Error::FutureVersion {
                path: cp.path.clone(),
                found: 7
            }
        );
        // Another node's file.
        Checkpoint::new(dir.path(), "d", "node-b").save(&claims()).unwrap();
        assert_eq!(cp.load().unwrap_err().kind(), "foreign");
    }
}
