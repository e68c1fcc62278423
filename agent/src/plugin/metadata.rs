//! Device metadata for containers (KEP-5304; the metadata API of
//! k8s.io/dynamic-resource-allocation v0.37.2): for each request of a
//! prepared claim, a file in the plugin's directory naming the request's
//! devices with their attributes, which the first device of the request
//! bind-mounts read-only (CDI) where the KEP puts it:
//!
//! - `/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json`
//!   for a claim the pod names;
//! - `…/resourceclaimtemplates/<pod claim name>/<request>/<driver>-metadata.json`
//!   for one made from a template (its name is generated; the pod's own
//!   name for it comes from the claim's `resource.kubernetes.io/pod-claim-name`).
//!
//! A file is a JSON stream: the same `DeviceMetadata` once per API version,
//! newest first, so that a consumer takes the first version it knows.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::cdi;
use super::checkpoint::PreparedClaim;
use crate::inventory::Function;

/// Under the plugin's directory.
pub const SUBDIR: &str = "dra-device-metadata";
/// In the container.
pub const CONTAINER_DIR: &str = "/var/run/kubernetes.io/dra-device-attributes";
/// The versions written, newest first.
pub const VERSIONS: [&str; 2] = ["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"];

/// A request's name without its subrequest (`a/whole` → `a`): the file is
/// the request's, whichever subrequest was chosen.
pub fn base_request(request: &str) -> &str {
    request.split('/').next().unwrap_or(request)
}

/// The claim's directory on the host.
pub fn claim_dir(root: &Path, namespace: &str, name: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}"))
}

/// A request's file on the host.
pub fn host_file(root: &Path, rec: &PreparedClaim, base: &str) -> PathBuf {
    claim_dir(root, &rec.namespace, &rec.name)
        .join(base)
        .join("metadata.json")
}

/// Where the container finds it.
pub fn container_file(driver: &str, rec: &PreparedClaim, base: &str) -> String {
    let file = format!("{driver}-metadata.json");
    match rec.pod_claim_name.as_deref().filter(|n| !n.is_empty()) {
        Some(pod_claim) => format!("{CONTAINER_DIR}/resourceclaimtemplates/{pod_claim}/{base}/{file}"),
        None => format!("{CONTAINER_DIR}/resourceclaims/{}/{base}/{file}", rec.name),
    }
}

/// The claim's requests (base names) with, for each, the index in
/// `rec.devices` of its first device (the one that mounts the file) and
/// the full request name as allocated (`a/whole` for a subrequest).
pub fn requests(rec: &PreparedClaim) -> BTreeMap<String, (usize, String)> {
    let mut out: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, d) in rec.devices.iter().enumerate() {
        for r in &d.requests {
            out.entry(base_request(r).to_string()).or_insert((i, r.clone()));
        }
    }
    out
}

/// One request's file: the stream of `DeviceMetadata` objects; `base` the
/// request's name, `request` as allocated (`a/whole` for a subrequest).
pub fn stream(
    driver: &str,
    uid: &str,
    rec: &PreparedClaim,
    (base, request): (&str, &str),
    functions: &[&Function],
) -> Vec<u8> {
    let devices: Vec<Value> = rec
        .devices
        .iter()
        .zip(functions)
        .filter(|(d, _)| d.requests.iter().any(|r| base_request(r) == base))
        .map(|(d, f)| {
            let attributes = crate::slices::device(f).attributes.unwrap_or_default();
            json!({"driver": driver, "pool": d.pool, "name": d.device, "attributes": attributes})
        })
        .collect();
    let mut out = Vec::new();
    for version in VERSIONS {
        let mut object = json!({
            "kind": "DeviceMetadata",
            "apiVersion": version,
            "metadata": {"name": rec.name, "namespace": rec.namespace, "uid": uid, "generation": 1},
            "requests": [{"name": request, "devices": devices}],
        });
        if let Some(pod_claim) = &rec.pod_claim_name {
            object["podClaimName"] = json!(pod_claim);
        }
        out.extend(serde_json::to_vec_pretty(&object).expect("JSON values encode"));
        out.push(b'\n');
    }
    out
}

/// Writes every request's file (atomically: a container never sees half).
pub fn write(root: &Path, driver: &str, uid: &str, rec: &PreparedClaim, functions: &[&Function]) -> Result<(), String> {
    for (base, (_, request)) in requests(rec) {
        let path = host_file(root, rec, &base);
        let dir = path.parent().expect("a file in a directory");
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        cdi::write_atomic(&path, &stream(driver, uid, rec, (&base, &request), functions))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The mount of a request's file, for its first device's CDI edits.
pub fn mount(root: &Path, driver: &str, rec: &PreparedClaim, base: &str) -> cdi::Mount {
    cdi::Mount {
        host_path: host_file(root, rec, base).display().to_string(),
        container_path: container_file(driver, rec, base),
        options: ["ro", "nosuid", "nodev", "noexec", "bind"].map(String::from).to_vec(),
    }
}

/// Removes the claim's files; none there is fine.
pub fn remove(root: &Path, rec: &PreparedClaim) -> Result<(), String> {
    let dir = claim_dir(root, &rec.namespace, &rec.name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::checkpoint::{ClaimState, PreparedDevice};

    fn device(device: &str, requests: &[&str]) -> PreparedDevice {
        PreparedDevice {
            requests: requests.iter().map(|r| r.to_string()).collect(),
            pool: "node-a".into(),
            device: device.into(),
            function: device.replace('-', "_"),
            physfn: None,
            admin_access: false,
            share_id: None,
            consumed_memory: None,
            cdi_device_id: format!("k8s.mock-accel.example.com/accel=u-{device}"),
        }
    }

    fn claim(pod_claim: Option<&str>) -> PreparedClaim {
        PreparedClaim {
            namespace: "dra".into(),
            name: "c".into(),
            state: ClaimState::PrepareCompleted,
            boot_id: "b".into(),
            cdi_spec: "/cdi/x.json".into(),
            devices: vec![
                device("mock0", &["a/whole"]),
                device("mock1-vf0", &["b"]),
                device("mock1-vf1", &["b"]),
            ],
            pod_claim_name: pod_claim.map(String::from),
        }
    }

    #[test]
    fn files_and_paths_follow_the_kep() {
        let rec = claim(None);
        let reqs = requests(&rec);
        assert_eq!(reqs["a"], (0, "a/whole".to_string()));
        assert_eq!(reqs["b"], (1, "b".to_string()));
        let root = Path::new("/p/dra-device-metadata");
        assert_eq!(
            host_file(root, &rec, "a"),
            Path::new("/p/dra-device-metadata/dra_c/a/metadata.json")
        );
        assert_eq!(
            container_file("mock-accel.example.com", &rec, "b"),
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/c/b/mock-accel.example.com-metadata.json"
        );
        assert_eq!(
            container_file("mock-accel.example.com", &claim(Some("acc")), "b"),
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/acc/b/mock-accel.example.com-metadata.json"
        );
    }

    #[test]
    fn a_stream_holds_each_version_newest_first() {
        let mut rec = claim(Some("acc"));
        rec.devices.truncate(1);
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("mock-accel");
        crate::backend::sysfs::write_fake_tree(&class, 1, 0).unwrap();
        let inv = crate::backend::sysfs::scan(&class).unwrap();
        let f = inv.functions.values().next().unwrap();
        let (_, request) = &requests(&rec)["a"];
        let bytes = stream("mock-accel.example.com", "uid-1", &rec, ("a", request), &[f]);
        let objects: Vec<Value> = serde_json::Deserializer::from_slice(&bytes)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap();
        let versions: Vec<&str> = objects.iter().map(|o| o["apiVersion"].as_str().unwrap()).collect();
        assert_eq!(versions, VERSIONS);
        assert_eq!(objects[0], {
            let mut o = objects[1].clone();
            o["apiVersion"] = json!(VERSIONS[0]);
            o
        });
        let o = &objects[0];
        assert_eq!(
            o["metadata"],
            json!({"name": "c", "namespace": "dra", "uid": "uid-1", "generation": 1})
        );
        assert_eq!(o["podClaimName"], "acc");
        assert_eq!(o["requests"][0]["name"], "a/whole");
        let d = &o["requests"][0]["devices"][0];
        assert_eq!(
            (d["driver"].as_str(), d["pool"].as_str(), d["name"].as_str()),
            (Some("mock-accel.example.com"), Some("node-a"), Some("mock0"))
        );
        assert_eq!(d["attributes"]["uuid"]["string"], json!(f.uuid));
    }
}
