//! What a scenario asks of this node, as backend writes: pure, from the
//! scenario's spec, the inventory, the provider's parameters and what the
//! agent changed for an earlier scenario. A spec the node cannot realise,
//! or that would take a device a claim holds, plans nothing at all (no
//! write is half of a scenario), and says why.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::schedule::Running;
use super::spec::Spec;
use crate::backend::Params;
use crate::inventory::{Function, Health, Inventory, Kind, parse_name};

/// One write through the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddPf { id: u32, numa_node: Option<u32> },
    RemovePf { id: u32 },
    SetVfs { pf: String, vfs: u32 },
    SetHealth { function: String, health: Health },
    FailAttaches { function: String, n: u32 },
}

impl Step {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Step::AddPf { .. } => "DeviceAdded",
            Step::RemovePf { .. } => "DeviceRemoved",
            Step::SetVfs { .. } => "VFsSet",
            Step::SetHealth { .. } => "HealthSet",
            Step::FailAttaches { .. } => "AttachFailuresArmed",
        }
    }

    /// The device it writes to.
    pub fn target(&self) -> String {
        match self {
            Step::AddPf { id, .. } | Step::RemovePf { id } => format!("mock{id}"),
            Step::SetVfs { pf, .. } => pf.clone(),
            Step::SetHealth { function, .. } | Step::FailAttaches { function, .. } => function.clone(),
        }
    }

    /// In words, for the Event and the log.
    pub fn describe(&self) -> String {
        match self {
            Step::AddPf { id, numa_node: Some(n) } => format!("PF mock{id} hot-plugged on NUMA node {n}"),
            Step::AddPf { id, numa_node: None } => format!("PF mock{id} hot-plugged"),
            Step::RemovePf { id } => format!("PF mock{id} and its VFs hot-unplugged"),
            Step::SetVfs { pf, vfs } => format!("{pf}: {vfs} VFs enabled"),
            Step::SetHealth { function, health } => format!("{function}: health {}", health.as_str()),
            Step::FailAttaches { function, n } => format!("{function}: its next {n} attaches fail"),
        }
    }
}

/// Why nothing was planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// `NotRealisable` (the node cannot be what the spec says) or
    /// `DeviceInUse` (it could, once a claim lets a device go: applied then).
    pub reason: &'static str,
    pub message: String,
}

pub const NOT_REALISABLE: &str = "NotRealisable";
pub const DEVICE_IN_USE: &str = "DeviceInUse";

fn not_realisable(message: String) -> Blocked {
    Blocked {
        reason: NOT_REALISABLE,
        message,
    }
}

/// What the agent changed on the node for the scenario it applied last:
/// what to give back when the scenario goes or stops asking for it. Kept
/// in a file of the agent's own (a restarted agent does not apply a
/// generation twice, nor forget what to undo).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub scenario: String,
    pub uid: String,
    pub generation: i64,
    /// Health the agent set (not ok).
    pub health: BTreeMap<String, String>,
    /// Functions it armed attach failures on.
    pub fail_attaches: BTreeSet<String>,
    /// The generation's scheduled faults.
    #[serde(default)]
    pub running: Running,
}

impl Applied {
    /// The record after `spec` (generation `generation` of scenario
    /// `name`, `uid`) was applied.
    pub fn after(name: &str, uid: &str, generation: i64, spec: &Spec, now_ms: i64) -> Applied {
        Applied {
            scenario: name.to_string(),
            uid: uid.to_string(),
            generation,
            health: spec
                .devices
                .iter()
                .filter_map(|d| {
                    d.health
                        .filter(|h| *h != Health::Ok)
                        .map(|h| (d.name.clone(), h.as_str().into()))
                })
                .collect(),
            fail_attaches: spec
                .devices
                .iter()
                .filter(|d| d.fail_attaches.is_some_and(|n| n > 0))
                .map(|d| d.name.clone())
                .collect(),
            running: Running::start(&spec.faults, now_ms),
        }
    }
}

fn held(inv: &Inventory, pf: u32) -> Vec<&str> {
    inv.functions
        .values()
        .filter(|f| f.pf_index == pf && f.status == 1)
        .map(|f| f.name.as_str())
        .collect()
}

fn vfs_held(inv: &Inventory, pf: u32) -> Vec<&str> {
    inv.functions
        .values()
        .filter(|f| f.pf_index == pf && f.kind == Kind::Vf && f.status == 1)
        .map(|f| f.name.as_str())
        .collect()
}

fn in_use(what: String, holders: &[&str]) -> Blocked {
    Blocked {
        reason: DEVICE_IN_USE,
        message: format!(
            "{what} needs {} free, and a claim holds it: waiting for its release (nothing applied until then)",
            holders.join(", ")
        ),
    }
}

/// The writes that make the node what `spec` says (`None`: no scenario is
/// for the node any more), undoing first what `applied` recorded and the
/// spec no longer asks. Order: PFs removed, PFs added, VFs, then each
/// device's faults (on the functions as they will be).
pub fn plan(spec: Option<&Spec>, inv: &Inventory, params: &Params, applied: &Applied) -> Result<Vec<Step>, Blocked> {
    let mut steps = Vec::new();
    let pfs: BTreeMap<u32, &Function> = inv
        .functions
        .values()
        .filter(|f| f.kind == Kind::Pf)
        .map(|f| (f.pf_index, f))
        .collect();
    // The topology after the plan: PF id -> its VF count.
    let mut after: BTreeMap<u32, u32> = pfs.iter().map(|(id, f)| (*id, f.sriov.map_or(0, |s| s.0))).collect();
    // Functions made anew by the plan (they come up healthy).
    let mut fresh: BTreeSet<u32> = BTreeSet::new();
    if let Some(spec) = spec {
        if let Some(m) = spec.memory_mib
            && m != params.memory_mib
        {
            return Err(not_realisable(format!(
                "every PF here has memory_mib={} MiB (a load parameter of the module), the scenario asks {m} MiB",
                params.memory_mib
            )));
        }
        if spec.attach.is_some_and(|a| a != Default::default()) && params.fabric_attach_ms == 0 {
            return Err(not_realisable(
                "attach delays and failures need fabric-attached devices, and they are local here (fabric_attach_ms=0)"
                    .into(),
            ));
        }
        if let Some(wanted) = &spec.pfs {
            let wanted_ids: BTreeSet<u32> = wanted.iter().map(|p| p.id).collect();
            for id in pfs.keys().filter(|id| !wanted_ids.contains(id)) {
                let h = held(inv, *id);
                if !h.is_empty() {
                    return Err(in_use(format!("removing PF mock{id}"), &h));
                }
                steps.push(Step::RemovePf { id: *id });
                after.remove(id);
            }
            let mut vf_steps = Vec::new();
            for p in wanted {
                if let Some(n) = p.numa_node
                    && n >= params.numa_nodes
                {
                    return Err(not_realisable(format!(
                        "PF mock{}: NUMA node {n} is not below numa_nodes={} here",
                        p.id, params.numa_nodes
                    )));
                }
                if let Some(v) = p.vfs
                    && v > params.max_vfs
                {
                    return Err(not_realisable(format!(
                        "PF mock{}: {v} VFs is above max_vfs={} here",
                        p.id, params.max_vfs
                    )));
                }
                let pf = format!("mock{}", p.id);
                match pfs.get(&p.id) {
                    None => {
                        steps.push(Step::AddPf {
                            id: p.id,
                            numa_node: p.numa_node,
                        });
                        fresh.insert(p.id);
                        let v = p.vfs.unwrap_or(0);
                        if v > 0 {
                            vf_steps.push(Step::SetVfs { pf, vfs: v });
                        }
                        after.insert(p.id, v);
                    }
                    Some(f) => {
                        if let Some(n) = p.numa_node
                            && n != f.numa_node
                        {
                            return Err(not_realisable(format!(
                                "PF mock{} is on NUMA node {}, the scenario asks {n}: a PF is not moved (leave it out of pfs to remove it, then add it back)",
                                p.id, f.numa_node
                            )));
                        }
                        let (now, total) = f.sriov.unwrap_or((0, params.max_vfs));
                        let Some(v) = p.vfs.filter(|v| *v != now) else {
                            continue;
                        };
                        if v > total {
                            return Err(not_realisable(format!(
                                "PF mock{}: {v} VFs is above its sriov_totalvfs={total}",
                                p.id
                            )));
                        }
                        if now > 0 {
                            let h = vfs_held(inv, p.id);
                            if !h.is_empty() {
                                return Err(in_use(format!("changing {pf}'s VFs from {now} to {v}"), &h));
                            }
                            vf_steps.push(Step::SetVfs { pf: pf.clone(), vfs: 0 });
                        }
                        if v > 0 {
                            vf_steps.push(Step::SetVfs { pf, vfs: v });
                        }
                        fresh.insert(p.id);
                        after.insert(p.id, v);
                    }
                }
            }
            steps.extend(vf_steps);
        }
    }
    // Whether `name` exists once the plan ran, and its health then.
    let exists =
        |name: &str| parse_name(name).is_some_and(|(pf, vf)| after.get(&pf).is_some_and(|n| vf.is_none_or(|v| v < *n)));
    let health_then = |name: &str| -> Health {
        let recreated =
            parse_name(name).is_some_and(|(pf, vf)| fresh.contains(&pf) && (vf.is_some() || !pfs.contains_key(&pf)));
        if recreated {
            Health::Ok
        } else {
            inv.functions.get(name).map_or(Health::Ok, |f| f.health)
        }
    };
    let declared = spec.map(|s| s.devices.as_slice()).unwrap_or_default();
    // Undo what the last applied scenario set and this one does not ask.
    for (name, was) in &applied.health {
        let still = declared.iter().any(|d| &d.name == name && d.health.is_some());
        if !still && exists(name) && health_then(name).as_str() == was {
            steps.push(Step::SetHealth {
                function: name.clone(),
                health: Health::Ok,
            });
        }
    }
    for name in &applied.fail_attaches {
        let still = declared.iter().any(|d| &d.name == name && d.fail_attaches.is_some());
        if !still && exists(name) && params.fabric_attach_ms > 0 {
            steps.push(Step::FailAttaches {
                function: name.clone(),
                n: 0,
            });
        }
    }
    for d in declared {
        if !exists(&d.name) {
            return Err(not_realisable(format!(
                "{} does not exist here{}",
                d.name,
                if spec.is_some_and(|s| s.pfs.is_some()) {
                    ""
                } else {
                    " (list its PF in pfs, with enough vfs, to have it made)"
                }
            )));
        }
        if let Some(h) = d.health
            && h != health_then(&d.name)
        {
            steps.push(Step::SetHealth {
                function: d.name.clone(),
                health: h,
            });
        }
        if let Some(n) = d.fail_attaches {
            if params.fabric_attach_ms == 0 {
                return Err(not_realisable(format!(
                    "{}: failAttaches needs fabric-attached devices, and they are local here (fabric_attach_ms=0)",
                    d.name
                )));
            }
            steps.push(Step::FailAttaches {
                function: d.name.clone(),
                n,
            });
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declared::spec;

    /// PFs 0..pfs with `vfs` VFs each.
    fn node(pfs: u32, vfs: u32) -> Inventory {
        let mut inv = Inventory {
            scanned: true,
            ..Default::default()
        };
        for pf in 0..pfs {
            for f in std::iter::once(None).chain((0..vfs).map(Some)) {
                let f = crate::declared::test_function(pf, f, vfs);
                inv.functions.insert(f.name.clone(), f);
            }
        }
        inv
    }

    fn spec(json: serde_json::Value) -> Spec {
        let mut obj = serde_json::json!({"metadata": {"name": "s"}, "spec": json});
        obj["spec"]["nodeName"] = "n".into();
        spec::parse(&obj).unwrap().spec
    }

    fn steps(s: &Spec, inv: &Inventory) -> Vec<Step> {
        plan(Some(s), inv, &Params::default(), &Applied::default()).unwrap()
    }

    #[test]
    fn pfs_are_made_exactly_what_the_spec_lists() {
        let inv = node(2, 2);
        let s = spec(serde_json::json!({"pfs": [{"id": 1, "vfs": 4}, {"id": 5, "numaNode": 1, "vfs": 2}]}));
        assert_eq!(
            steps(&s, &inv),
            vec![
                Step::RemovePf { id: 0 },
                Step::AddPf {
                    id: 5,
                    numa_node: Some(1)
                },
                Step::SetVfs {
                    pf: "mock1".into(),
                    vfs: 0
                },
                Step::SetVfs {
                    pf: "mock1".into(),
                    vfs: 4
                },
                Step::SetVfs {
                    pf: "mock5".into(),
                    vfs: 2
                },
            ]
        );
        // Already so: nothing to do.
        let s = spec(serde_json::json!({"pfs": [{"id": 0, "vfs": 2}, {"id": 1}]}));
        assert_eq!(steps(&s, &inv), vec![]);
    }

    #[test]
    fn faults_apply_to_the_functions_as_they_will_be() {
        let inv = node(1, 2);
        let s = spec(serde_json::json!({
            "pfs": [{"id": 0, "vfs": 3}],
            "devices": [{"name": "mock0_vf2", "health": "failed"}, {"name": "mock0", "health": "ok"}]
        }));
        let st = steps(&s, &inv);
        assert_eq!(
            st.last(),
            Some(&Step::SetHealth {
                function: "mock0_vf2".into(),
                health: Health::Failed
            })
        );
        assert_eq!(st.len(), 3, "{st:?}: mock0 is ok already");
        // A VF that will not exist: refused, nothing planned.
        let s = spec(serde_json::json!({"devices": [{"name": "mock0_vf5", "health": "failed"}]}));
        let e = plan(Some(&s), &inv, &Params::default(), &Applied::default()).unwrap_err();
        assert_eq!(e.reason, NOT_REALISABLE);
        assert!(e.message.contains("mock0_vf5 does not exist"), "{e:?}");
    }

    #[test]
    fn what_the_node_cannot_be_plans_nothing_and_says_why() {
        let inv = node(2, 0);
        let refused = |json: serde_json::Value, says: &str| {
            let e = plan(Some(&spec(json.clone())), &inv, &Params::default(), &Applied::default()).unwrap_err();
            assert_eq!(e.reason, NOT_REALISABLE, "{json}");
            assert!(e.message.contains(says), "{json}: {}", e.message);
        };
        refused(serde_json::json!({"memoryMiB": 8192}), "memory_mib=16384");
        refused(
            serde_json::json!({"pfs": [{"id": 0}, {"id": 1, "vfs": 9}]}),
            "above max_vfs=8",
        );
        refused(serde_json::json!({"pfs": [{"id": 0, "numaNode": 1}]}), "is not moved");
        refused(serde_json::json!({"pfs": [{"id": 7, "numaNode": 2}]}), "numa_nodes=2");
        refused(
            serde_json::json!({"devices": [{"name": "mock1", "failAttaches": 2}]}),
            "fabric_attach_ms=0",
        );
        let fabric = Params {
            fabric_attach_ms: 100,
            ..Params::default()
        };
        let s = spec(serde_json::json!({"devices": [{"name": "mock1", "failAttaches": 2}]}));
        assert_eq!(
            plan(Some(&s), &inv, &fabric, &Applied::default()).unwrap(),
            vec![Step::FailAttaches {
                function: "mock1".into(),
                n: 2
            }]
        );
    }

    #[test]
    fn a_held_device_is_waited_for_not_taken() {
        let mut inv = node(2, 2);
        inv.functions.get_mut("mock1_vf1").unwrap().status = 1;
        for json in [
            serde_json::json!({"pfs": [{"id": 0}]}),
            serde_json::json!({"pfs": [{"id": 0}, {"id": 1, "vfs": 4}]}),
        ] {
            let e = plan(Some(&spec(json.clone())), &inv, &Params::default(), &Applied::default()).unwrap_err();
            assert_eq!(e.reason, DEVICE_IN_USE, "{json}");
            assert!(e.message.contains("mock1_vf1"), "{}", e.message);
        }
        // Failing a held device is what the spec asks: done.
        let s = spec(serde_json::json!({"devices": [{"name": "mock1_vf1", "health": "failed"}]}));
        assert_eq!(steps(&s, &inv).len(), 1);
    }

    #[test]
    fn what_the_agent_set_is_given_back_and_a_manual_change_is_not() {
        let mut inv = node(2, 0);
        let s = spec(
            serde_json::json!({"devices": [{"name": "mock0", "health": "failed"}, {"name": "mock1", "health": "degraded"}]}),
        );
        let applied = Applied::after("s", "u", 1, &s, 0);
        inv.functions.get_mut("mock0").unwrap().health = Health::Failed;
        // Changed on the node since (an operator's echo): left alone.
        inv.functions.get_mut("mock1").unwrap().health = Health::Failed;
        assert_eq!(
            plan(None, &inv, &Params::default(), &applied).unwrap(),
            vec![Step::SetHealth {
                function: "mock0".into(),
                health: Health::Ok
            }]
        );
        // A new generation that still fails mock0: nothing to give back.
        let s2 = spec(serde_json::json!({"devices": [{"name": "mock0", "health": "failed"}]}));
        assert_eq!(plan(Some(&s2), &inv, &Params::default(), &applied).unwrap(), vec![]);
    }
}
