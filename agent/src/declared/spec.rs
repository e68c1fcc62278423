//! A DeviceScenario as the agent reads it: the spec's types, parsed from
//! the API's JSON and checked again with the CRD's own rules (a cluster
//! may hold an older CRD, or none of its CEL), and which nodes it is for.
//! No I/O here (the fuzzer feeds [`parse`] bytes).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;

use std::time::Duration;

use super::schedule::{self, Fault};
use crate::backend::{MAX_PFS, MAX_VFS};
use crate::inventory::{Health, parse_name};

pub const KIND: &str = "DeviceScenario";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "devicescenarios";

/// The most devices a scenario may name (the CRD's maxItems).
pub const MAX_DEVICES: usize = 512;
/// The most faults a scenario may schedule (the CRD's maxItems).
pub const MAX_FAULTS: usize = 64;
/// The most armed attach failures (the module's fail_attach limit).
pub const MAX_FAIL_ATTACHES: u32 = 1000;

/// One PF a node is to have.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PfSpec {
    pub id: u32,
    #[serde(default)]
    pub numa_node: Option<u32>,
    #[serde(default)]
    pub vfs: Option<u32>,
}

/// One device's faults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    pub name: String,
    #[serde(default, deserialize_with = "health")]
    pub health: Option<Health>,
    #[serde(default)]
    pub fail_attaches: Option<u32>,
}

fn health<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Health>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        Health::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("health {s:?} is not ok, degraded or failed")))
    })
    .transpose()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    #[serde(default)]
    pub pfs: Option<Vec<PfSpec>>,
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub attach: Option<AttachSpec>,
}

/// Faults of the fabric attaches the agent starts (fabric-attached
/// devices only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachSpec {
    /// Each attach starts this much later than the claim asks for it.
    #[serde(default, deserialize_with = "duration")]
    pub delay: Duration,
    /// This share of attaches fail, spread evenly (25: every 4th).
    #[serde(default)]
    pub failure_percent: u32,
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::args::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A scenario: its identity, and its spec (checked).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// RFC 3339, for the oldest-wins rule (then the name).
    pub created: String,
    pub spec: Spec,
    /// The node selector, compiled (`None`: the scenario names its node).
    selector: Option<Selector>,
}

impl Scenario {
    /// Whether the scenario is for the node `name` with `labels`.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.spec.node_name, &self.selector) {
            (Some(n), _) => n == name,
            (None, Some(s)) => s.matches(labels),
            (None, None) => false,
        }
    }

    /// Which of several scenarios for one node it follows: the oldest,
    /// then the first by name.
    pub fn precedence(&self) -> (&str, &str) {
        (&self.created, &self.name)
    }
}

/// Reads a scenario from the API's object (JSON), with every check of the
/// CRD's schema and rules the agent relies on. The error says what is
/// wrong, naming the field.
pub fn parse(object: &serde_json::Value) -> Result<Scenario, String> {
    let meta = &object["metadata"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let name = text(&meta["name"]);
    if name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    let spec_json = object.get("spec").ok_or("spec is missing")?;
    let spec: Spec = serde_json::from_value(spec_json.clone()).map_err(|e| format!("spec: {e}"))?;
    let selector = check(&spec)?;
    Ok(Scenario {
        name,
        uid: text(&meta["uid"]),
        generation: meta["generation"].as_i64().unwrap_or(0),
        created: text(&meta["creationTimestamp"]),
        spec,
        selector,
    })
}

fn check(spec: &Spec) -> Result<Option<Selector>, String> {
    let selector = match (&spec.node_name, &spec.node_selector) {
        (Some(n), None) if !n.is_empty() && n.len() <= 253 => None,
        (Some(_), None) => return Err("spec.nodeName must be 1 to 253 characters".into()),
        (None, Some(s)) => Some(Selector::try_from(s.clone()).map_err(|e| format!("spec.nodeSelector: {e}"))?),
        _ => return Err("spec: exactly one of nodeName and nodeSelector names the nodes".into()),
    };
    if let Some(pfs) = &spec.pfs {
        if pfs.len() > MAX_PFS as usize {
            return Err(format!(
                "spec.pfs: {} PFs, the module makes at most {MAX_PFS}",
                pfs.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in pfs.iter().enumerate() {
            if p.id >= MAX_PFS {
                return Err(format!("spec.pfs[{i}].id: {} is above {}", p.id, MAX_PFS - 1));
            }
            if !seen.insert(p.id) {
                return Err(format!("spec.pfs[{i}].id: PF {} is listed twice", p.id));
            }
            if p.vfs.is_some_and(|v| v > MAX_VFS) {
                return Err(format!("spec.pfs[{i}].vfs: above {MAX_VFS}"));
            }
            if p.numa_node.is_some_and(|n| n >= 8) {
                return Err(format!("spec.pfs[{i}].numaNode: above 7"));
            }
        }
    }
    if spec.memory_mib.is_some_and(|m| m == 0 || m > 1 << 20) {
        return Err("spec.memoryMiB: 1 to 1048576".into());
    }
    if spec.devices.len() > MAX_DEVICES {
        return Err(format!("spec.devices: more than {MAX_DEVICES}"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, d) in spec.devices.iter().enumerate() {
        let Some((pf, vf)) = parse_name(&d.name).filter(|(pf, vf)| *pf < MAX_PFS && vf.is_none_or(|v| v < MAX_VFS))
        else {
            return Err(format!(
                "spec.devices[{i}].name: {:?} is not a function name (mock<0-63> or mock<0-63>_vf<0-63>)",
                d.name
            ));
        };
        if !seen.insert(&d.name) {
            return Err(format!("spec.devices[{i}].name: {} is listed twice", d.name));
        }
        if d.fail_attaches.is_some_and(|n| n > MAX_FAIL_ATTACHES) {
            return Err(format!("spec.devices[{i}].failAttaches: above {MAX_FAIL_ATTACHES}"));
        }
        if let Some(pfs) = &spec.pfs {
            let Some(p) = pfs.iter().find(|p| p.id == pf) else {
                return Err(format!(
                    "spec.devices[{i}]: {} is on PF {pf}, which spec.pfs does not list",
                    d.name
                ));
            };
            if let (Some(v), Some(n)) = (vf, p.vfs)
                && v >= n
            {
                return Err(format!("spec.devices[{i}]: {} is VF {v} of a PF given {n} VFs", d.name));
            }
        }
    }
    if spec.faults.len() > MAX_FAULTS {
        return Err(format!("spec.faults: more than {MAX_FAULTS}"));
    }
    for (i, f) in spec.faults.iter().enumerate() {
        let at = format!("spec.faults[{i}]");
        f.check(&at)?;
        if let (Some(pfs), Some((pf, vf))) = (&spec.pfs, parse_name(&f.device)) {
            let listed = pfs.iter().find(|p| p.id == pf);
            if listed.is_none_or(|p| vf.is_some_and(|v| p.vfs.is_some_and(|n| v >= n))) {
                return Err(format!("{at}.device: {} is not among the devices pfs makes", f.device));
            }
        }
    }
    if let Some(a) = &spec.attach {
        if a.failure_percent > 100 {
            return Err("spec.attach.failurePercent: 0 to 100".into());
        }
        if a.delay > schedule::MAX_DURATION {
            return Err("spec.attach.delay: longer than a day".into());
        }
    }
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(spec: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "s", "uid": "u", "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec})
    }

    #[test]
    fn a_good_scenario_and_its_nodes() {
        let s = parse(&object(json!({
            "nodeSelector": {"matchLabels": {"pool": "a"}, "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z9"]}]},
            "pfs": [{"id": 0, "vfs": 2}, {"id": 5, "numaNode": 1}],
            "memoryMiB": 16384,
            "devices": [{"name": "mock0_vf1", "health": "failed"}, {"name": "mock5", "failAttaches": 3}]
        })))
        .unwrap();
        assert_eq!(s.generation, 2);
        assert_eq!(s.spec.devices[0].health, Some(Health::Failed));
        let labels = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(s.selects("n1", &labels(&[("pool", "a")])));
        assert!(!s.selects("n1", &labels(&[("pool", "a"), ("zone", "z9")])));
        assert!(!s.selects("n1", &labels(&[("pool", "b")])));
        let by_name = parse(&object(json!({"nodeName": "n2"}))).unwrap();
        assert!(by_name.selects("n2", &BTreeMap::new()) && !by_name.selects("n1", &BTreeMap::new()));
    }

    #[test]
    fn impossible_scenarios_are_refused_naming_the_field() {
        let refused = |spec: serde_json::Value, says: &str| {
            let e = parse(&object(spec.clone())).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        };
        refused(json!({}), "exactly one of nodeName and nodeSelector");
        refused(json!({"nodeName": "a", "nodeSelector": {}}), "exactly one");
        refused(json!({"nodeName": "a", "pfs": [{"id": 64}]}), "spec.pfs[0].id");
        refused(json!({"nodeName": "a", "pfs": [{"id": 1}, {"id": 1}]}), "listed twice");
        refused(
            json!({"nodeName": "a", "pfs": [{"id": 1, "vfs": 65}]}),
            "spec.pfs[0].vfs",
        );
        refused(json!({"nodeName": "a", "pfs": [{"id": 1, "vfs": -1}]}), "spec:");
        refused(
            json!({"nodeName": "a", "devices": [{"name": "gpu0"}]}),
            "not a function name",
        );
        refused(
            json!({"nodeName": "a", "devices": [{"name": "mock1", "health": "sick"}]}),
            "health \"sick\"",
        );
        refused(
            json!({"nodeName": "a", "devices": [{"name": "mock1", "failAttaches": 1001}]}),
            "failAttaches",
        );
        refused(
            json!({"nodeName": "a", "pfs": [{"id": 0}], "devices": [{"name": "mock1"}]}),
            "does not list",
        );
        refused(
            json!({"nodeName": "a", "pfs": [{"id": 0, "vfs": 2}], "devices": [{"name": "mock0_vf2"}]}),
            "given 2 VFs",
        );
        refused(json!({"nodeName": "a", "memoryMiB": 0}), "memoryMiB");
        refused(
            json!({"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}),
            "spec",
        );
        refused(
            json!({"nodeName": "a", "faults": [{"device": "mock1", "period": "1s"}]}),
            "spec.faults[0].period",
        );
        refused(
            json!({"nodeName": "a", "pfs": [{"id": 0}], "faults": [{"device": "mock1"}]}),
            "spec.faults[0].device",
        );
        refused(
            json!({"nodeName": "a", "attach": {"failurePercent": 101}}),
            "failurePercent",
        );
        refused(json!({"nodeName": "a", "attach": {"delay": "-1s"}}), "spec:");
    }
}
