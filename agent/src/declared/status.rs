//! A node's entry in a scenario's `status.nodes`: what its agent applied,
//! the named devices as they are, and the conditions (`Applied`,
//! `Drifted`). Each agent server-side-applies its own entry only (the list
//! is a map keyed by node), so agents never conflict. Pure.

use serde::Serialize;
use serde_json::{Value, json};

use super::schedule::Action;
use super::spec::{KIND, Scenario, VERSION};
use crate::inventory::Inventory;

pub const APPLIED: &str = "Applied";
pub const DRIFTED: &str = "Drifted";

/// Why the Applied condition is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub applied: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub name: String,
    pub present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
    pub last_transition_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    pub observed_generation: i64,
    pub applied: bool,
    pub functions: usize,
    pub devices: Vec<DeviceStatus>,
    /// Scheduled faults on now: `mock2: failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active_faults: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// How each device the scenario names is now; a drift is a difference
/// from the spec after it was applied (a write on the node since).
/// Devices a fault is acting on (`faulted`: their names, a removed PF's
/// VFs included) are not drift.
pub fn devices(scenario: &Scenario, inv: &Inventory, applied: bool, faulted: &[String]) -> Vec<DeviceStatus> {
    let mut out: Vec<DeviceStatus> = Vec::new();
    let pf_names = scenario.spec.pfs.iter().flatten().map(|p| format!("mock{}", p.id));
    let named = scenario.spec.devices.iter().map(|d| d.name.clone());
    for name in pf_names.chain(named) {
        if out.iter().any(|d| d.name == name) {
            continue;
        }
        let f = inv.functions.get(&name);
        let declared = scenario
            .spec
            .devices
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.health);
        let acted_on = faulted
            .iter()
            .any(|d| *d == name || name.strip_prefix(d.as_str()).is_some_and(|r| r.starts_with("_vf")));
        let drift = match (applied && !acted_on, f) {
            (false, _) => None,
            (true, None) => Some("gone from the node since the scenario was applied".to_string()),
            (true, Some(f)) => declared.filter(|h| *h != f.health).map(|h| {
                format!(
                    "health is {} on the node, the scenario says {} (changed there since it was applied)",
                    f.health.as_str(),
                    h.as_str()
                )
            }),
        };
        out.push(DeviceStatus {
            name,
            present: f.is_some(),
            health: f.map(|f| f.health.as_str().to_string()),
            held: f.map(|f| f.status == 1),
            drift,
        });
    }
    out
}

/// A condition, keeping the transition time of `previous` (the entry's
/// last written conditions) where its status did not change.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    previous: &[Value],
    now: &str,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since.into(),
    }
}

/// The entry, from the outcome and the devices as they are now.
pub fn node_status(
    node: &str,
    scenario: &Scenario,
    inv: &Inventory,
    outcome: &Outcome,
    faults_on: &[(String, Action)],
    previous: &[Value],
    now: &str,
) -> NodeStatus {
    let faulted: Vec<String> = faults_on.iter().map(|(d, _)| d.clone()).collect();
    let devices = devices(scenario, inv, outcome.applied, &faulted);
    let drifts: Vec<String> = devices
        .iter()
        .filter_map(|d| d.drift.as_ref().map(|w| format!("{}: {w}", d.name)))
        .collect();
    let g = scenario.generation;
    let conditions = vec![
        condition(
            APPLIED,
            outcome.applied,
            &outcome.reason,
            &outcome.message,
            g,
            previous,
            now,
        ),
        if drifts.is_empty() {
            condition(DRIFTED, false, "AsDeclared", "", g, previous, now)
        } else {
            condition(DRIFTED, true, "ChangedOnTheNode", &drifts.join("; "), g, previous, now)
        },
    ];
    NodeStatus {
        node: node.into(),
        observed_generation: g,
        applied: outcome.applied,
        functions: inv.functions.len(),
        devices,
        active_faults: faults_on.iter().map(|(d, a)| format!("{d}: {}", a.as_str())).collect(),
        conditions,
    }
}

/// The server-side apply body that makes `entry` this agent's part of the
/// scenario's status (`None`: the agent gives its entry up).
pub fn apply_body(group: &str, scenario: &str, entry: Option<&NodeStatus>) -> Value {
    json!({
        "apiVersion": format!("{group}/{VERSION}"),
        "kind": KIND,
        "metadata": {"name": scenario},
        "status": {"nodes": entry.map_or_else(Vec::new, |e| vec![serde_json::to_value(e).expect("plain data")])},
    })
}

/// The entry's part that changes only when something happened (not the
/// transition times): to skip writing what is already there.
pub fn same(written: &Value, entry: &NodeStatus) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(written) == strip(&serde_json::to_value(entry).expect("plain data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declared::spec::parse;
    use crate::inventory::Health;

    #[test]
    fn drift_is_said_only_once_applied_and_transition_times_are_kept() {
        let sc = parse(&json!({"metadata": {"name": "s", "generation": 3}, "spec": {"nodeName": "n", "devices": [{"name": "mock0", "health": "failed"}]}})).unwrap();
        let mut inv = crate::inventory::Inventory::default();
        let mut f = crate::declared::test_function(0, None, 0);
        f.health = Health::Ok;
        inv.functions.insert("mock0".into(), f);
        let waiting = Outcome {
            applied: false,
            reason: "DeviceInUse".into(),
            message: "m".into(),
        };
        let e = node_status("n", &sc, &inv, &waiting, &[], &[], "T1");
        assert!(e.devices[0].drift.is_none());
        assert_eq!(e.conditions[0].status, "False");
        let done = Outcome {
            applied: true,
            reason: "Applied".into(),
            message: String::new(),
        };
        let prev = serde_json::to_value(&e.conditions).unwrap();
        let e2 = node_status("n", &sc, &inv, &done, &[], prev.as_array().unwrap(), "T2");
        assert!(e2.devices[0].drift.as_deref().unwrap().contains("health is ok"));
        assert_eq!(e2.conditions[1].status, "True");
        assert_eq!(e2.conditions[0].last_transition_time, "T2", "Applied changed");
        let prev2 = serde_json::to_value(&e2.conditions).unwrap();
        let e3 = node_status("n", &sc, &inv, &done, &[], prev2.as_array().unwrap(), "T3");
        // A fault acting on it: no drift.
        let on = [("mock0".to_string(), Action::Failed)];
        let e4 = node_status("n", &sc, &inv, &done, &on, prev2.as_array().unwrap(), "T3");
        assert!(
            e4.devices[0].drift.is_none() && e4.active_faults == ["mock0: failed"],
            "{e4:?}"
        );
        assert_eq!(e3.conditions[0].last_transition_time, "T2", "Applied did not change");
        assert!(same(&serde_json::to_value(&e2).unwrap(), &e3));
        assert!(!same(&serde_json::to_value(&e).unwrap(), &e3));
    }
}
