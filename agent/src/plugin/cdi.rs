//! CDI (Container Device Interface) specs: one file per prepared claim in
//! the runtime's CDI directory, written atomically, with the lowest
//! `cdiVersion` its fields need (runtimes parse strictly and refuse
//! versions they do not know).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The CDI class of our devices: kind `k8s.<driver>/accel`.
pub const CLASS: &str = "accel";

/// A CDI spec, with the fields this driver uses. Unknown fields are
/// rejected, like the runtimes' parsers do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(rename = "cdiVersion")]
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(rename = "containerEdits", default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    #[serde(rename = "containerEdits")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "deviceNodes", default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }
}

/// A bind mount (CDI 0.3.0; `type` would need 0.4.0 and is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    #[serde(rename = "hostPath")]
    pub host_path: String,
    #[serde(rename = "containerPath")]
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(rename = "hostPath", default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

/// `k8s.<driver>/accel`
pub fn kind(driver: &str) -> String {
    format!("k8s.{driver}/{CLASS}")
}

/// `<dir>/k8s.<driver>-accel_<claimUID>.json`
pub fn spec_path(dir: &Path, driver: &str, claim_uid: &str) -> PathBuf {
    dir.join(format!("k8s.{driver}-{CLASS}_{claim_uid}.json"))
}

/// `<claimUID>-<device>`: unique across claims on the node.
pub fn device_name(claim_uid: &str, device: &str, share: Option<&str>) -> String {
    match share {
        // One claim may hold two shares of one device (two requests).
        Some(share) => format!("{claim_uid}-{device}-{share}"),
        None => format!("{claim_uid}-{device}"),
    }
}

/// The fully qualified name the kubelet hands to the runtime.
pub fn qualified_name(driver: &str, claim_uid: &str, device: &str, share: Option<&str>) -> String {
    format!("{}={}", kind(driver), device_name(claim_uid, device, share))
}

/// The lowest CDI version whose rules the spec satisfies (the rules of
/// the CDI project's `MinimumRequiredVersion`, for the fields we write):
/// 0.5.0 for a device name starting with a non-letter or a device node
/// `hostPath`, 0.6.0 for a dot in the class, else 0.3.0.
pub fn minimum_version(spec: &Spec) -> &'static str {
    let class_has_dot = spec.kind.split_once('/').is_some_and(|(_, c)| c.contains('.'));
    if class_has_dot {
        return "0.6.0";
    }
    let name_needs_050 = spec
        .devices
        .iter()
        .any(|d| !d.name.starts_with(|c: char| c.is_ascii_alphabetic()));
    let edits = spec
        .devices
        .iter()
        .map(|d| &d.container_edits)
        .chain(std::iter::once(&spec.container_edits));
    let host_path = edits.flat_map(|e| &e.device_nodes).any(|n| n.host_path.is_some());
    if name_needs_050 || host_path { "0.5.0" } else { "0.3.0" }
}

/// Checks a spec against the CDI rules a runtime applies when it loads
/// one (names, env, device nodes, version): the same checks guard what we
/// write and what the tests read back.
pub fn validate(spec: &Spec) -> Result<(), String> {
    const KNOWN: [&str; 6] = ["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"];
    if !KNOWN.contains(&spec.cdi_version.as_str()) {
        return Err(format!("cdiVersion {:?} is not a CDI version", spec.cdi_version));
    }
    let need = minimum_version(spec);
    if version_lt(&spec.cdi_version, need) {
        return Err(format!(
            "cdiVersion {} is below {need}, which the fields need",
            spec.cdi_version
        ));
    }
    let (vendor, class) = spec
        .kind
        .split_once('/')
        .ok_or_else(|| format!("kind {:?} is not vendor/class", spec.kind))?;
    let name_ok = |s: &str, extra: &[char]| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if !name_ok(vendor, &['-', '_', '.']) {
        return Err(format!("vendor {vendor:?} is not a valid CDI vendor name"));
    }
    if !name_ok(class, &['-', '_', '.']) {
        return Err(format!("class {class:?} is not a valid CDI class name"));
    }
    if spec.devices.is_empty() {
        return Err("a spec needs at least one device".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &spec.devices {
        let n = &d.name;
        let ok = n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !ok {
            return Err(format!("device name {n:?} is not a valid CDI device name"));
        }
        if !seen.insert(n) {
            return Err(format!("device {n:?} is listed twice"));
        }
        if d.container_edits.is_empty() {
            return Err(format!("device {n:?} has no container edits"));
        }
        validate_edits(&d.container_edits)?;
    }
    validate_edits(&spec.container_edits)
}

fn validate_edits(e: &ContainerEdits) -> Result<(), String> {
    for env in &e.env {
        match env.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(format!("env {env:?} is not KEY=VALUE")),
        }
    }
    for n in &e.device_nodes {
        if !n.path.starts_with('/') {
            return Err(format!("device node path {:?} is not absolute", n.path));
        }
        if let Some(t) = &n.kind
            && !["b", "c", "u", "p"].contains(&t.as_str())
        {
            return Err(format!("device node {}: type {t:?} is not b, c, u or p", n.path));
        }
        if let Some(p) = &n.permissions
            && (p.is_empty() || !p.chars().all(|c| "rwm".contains(c)))
        {
            return Err(format!(
                "device node {}: permissions {p:?} are not a subset of rwm",
                n.path
            ));
        }
    }
    for m in &e.mounts {
        if !m.container_path.starts_with('/') || !m.host_path.starts_with('/') {
            return Err(format!(
                "mount {} -> {}: both paths must be absolute",
                m.host_path, m.container_path
            ));
        }
    }
    Ok(())
}

fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    parse(a) < parse(b)
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. Readers see the old
/// file or the new one, never a part.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".mock-accel-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    crate::failpoints::crash("atomic-write/before-rename");
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

/// Removes what [`write_atomic`] leaves behind when the process dies
/// between creating its temporary file and the rename: the
/// `.mock-accel-*.tmp` files in `dir` last written more than `age` ago
/// (younger ones may be a live writer's). Returns how many went.
pub fn sweep_temporary(dir: &Path, age: std::time::Duration) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".mock-accel-") && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed >= age);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The bytes [`write_spec`] writes: the spec validated first.
pub fn encode(spec: &Spec) -> Result<Vec<u8>, String> {
    validate(spec).map_err(|e| format!("refusing to write an invalid CDI spec: {e}"))?;
    let mut json = serde_json::to_vec_pretty(spec).expect("a spec serialises");
    json.push(b'\n');
    Ok(json)
}

/// Writes the spec (validated first) to `dir`, creating the directory.
pub fn write_spec(dir: &Path, path: &Path, spec: &Spec) -> Result<(), String> {
    let json = encode(spec)?;
    fs::create_dir_all(dir).map_err(|e| format!("creating the CDI directory {}: {e}", dir.display()))?;
    write_atomic(path, &json).map_err(|e| format!("writing the CDI spec {}: {e}", path.display()))
}

/// Removes a spec; a missing one is already removed.
pub fn remove_spec(path: &Path) -> Result<(), String> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        // Not there, or cannot be: its directory is not one.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(()),
        Err(e) => Err(format!("removing the CDI spec {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_removes_only_old_temporary_files_of_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(".mock-accel-abc.tmp");
        let spec = dir.path().join("k8s.mock-accel.example.com-accel_u.json");
        let theirs = dir.path().join(".other-abc.tmp");
        for f in [&ours, &spec, &theirs] {
            fs::write(f, "x").unwrap();
        }
        // Just written: perhaps a live writer's.
        assert_eq!(sweep_temporary(dir.path(), std::time::Duration::from_secs(60)), 0);
        assert_eq!(sweep_temporary(dir.path(), std::time::Duration::ZERO), 1);
        assert!(!ours.exists() && spec.exists() && theirs.exists());
        assert_eq!(
            sweep_temporary(&dir.path().join("missing"), std::time::Duration::ZERO),
            0
        );
    }

    fn spec(name: &str) -> Spec {
        Spec {
            cdi_version: "0.3.0".into(),
            kind: kind("mock-accel.example.com"),
            devices: vec![Device {
                name: name.into(),
                container_edits: ContainerEdits {
                    env: vec!["MOCK_ACCEL_UUID=x".into()],
                    device_nodes: vec![DeviceNode {
                        path: "/dev/mock-accel/mock0".into(),
                        kind: Some("c".into()),
                        major: Some(240),
                        minor: Some(0),
                        permissions: Some("rw".into()),
                        host_path: None,
                    }],
                    mounts: vec![],
                },
            }],
            container_edits: ContainerEdits::default(),
        }
    }

    #[test]
    fn versions_follow_the_fields() {
        let mut s = spec("a1b2-mock0");
        assert_eq!(minimum_version(&s), "0.3.0");
        assert_eq!(validate(&s), Ok(()));
        s.devices[0].name = "1b2c-mock0".into();
        assert_eq!(minimum_version(&s), "0.5.0");
        assert!(validate(&s).unwrap_err().contains("below 0.5.0"));
        s.cdi_version = "0.5.0".into();
        assert_eq!(validate(&s), Ok(()));
        s.devices[0].container_edits.device_nodes[0].host_path = Some("/dev/x".into());
        s.devices[0].name = "b".into();
        assert_eq!(minimum_version(&s), "0.5.0");
        s.kind = "k8s.x/a.b".into();
        assert_eq!(minimum_version(&s), "0.6.0");
        s.cdi_version = "0.9.0".into();
        assert!(validate(&s).unwrap_err().contains("not a CDI version"));
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec("a-");
        assert!(validate(&s).unwrap_err().contains("device name"));
        s = spec("a");
        s.devices[0].container_edits.env = vec!["=x".into()];
        assert!(validate(&s).unwrap_err().contains("KEY=VALUE"));
        s = spec("a");
        s.devices[0].container_edits.device_nodes[0].permissions = Some("rx".into());
        assert!(validate(&s).unwrap_err().contains("rwm"));
        s = spec("a");
        s.kind = "nokind".into();
        assert!(validate(&s).is_err());
        s = spec("a");
        s.devices.push(s.devices[0].clone());
        assert!(validate(&s).unwrap_err().contains("twice"));
    }

    #[test]
    fn strict_parsing_and_atomic_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = spec_path(dir.path(), "d.example.com", "u1");
        assert!(path.ends_with("k8s.d.example.com-accel_u1.json"));
        write_spec(dir.path(), &path, &spec("u1-mock0")).unwrap();
        let back: Spec = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, spec("u1-mock0"));
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        v["devices"][0]["containerEdits"]["bogus"] = 1.into();
        assert!(serde_json::from_value::<Spec>(v).is_err());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove_spec(&path).unwrap();
        remove_spec(&path).unwrap();
        // A file where the directory should be: a clear error.
        let blocked = dir.path().join("file");
        fs::write(&blocked, "").unwrap();
        let err = write_spec(&blocked, &blocked.join("x.json"), &spec("a")).unwrap_err();
        assert!(err.contains("CDI directory"), "{err}");
    }
}
