//! What the API server may drop from a slice we write (the fields of a
//! feature gate that is off) or refuse, and how we notice.

use k8s_openapi::api::resource::v1::ResourceSlice;

/// What the API server may drop (its feature gate off) or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    Counters,
    Taints,
    Capacity,
    Lists,
    Groups,
    NodeResources,
}

/// Whether a slice we write has devices shared by memory.
pub(super) fn has_shares(s: &ResourceSlice) -> bool {
    shared(s) > 0
}

fn shared(s: &ResourceSlice) -> usize {
    s.spec
        .devices
        .iter()
        .flatten()
        .filter(|d| d.allow_multiple_allocations == Some(true))
        .count()
}

/// Whether a slice we write carries device taints.
pub(super) fn has_taints(s: &ResourceSlice) -> bool {
    s.spec.devices.iter().flatten().any(|d| d.taints.is_some())
}

/// Whether a slice we write has list-typed attributes.
pub(super) fn has_lists(s: &ResourceSlice) -> bool {
    listed(s) > 0
}

fn listed(s: &ResourceSlice) -> usize {
    s.spec
        .devices
        .iter()
        .flatten()
        .flat_map(|d| d.attributes.iter().flatten())
        .filter(|(_, a)| a.strings.is_some() || a.ints.is_some() || a.bools.is_some() || a.versions.is_some())
        .count()
}

/// How many counter consumptions of a slice we write name compatibility
/// groups.
fn grouped(s: &ResourceSlice) -> usize {
    s.spec
        .devices
        .iter()
        .flatten()
        .flat_map(|d| d.consumes_counters.iter().flatten())
        .filter(|c| c.compatibility_groups.as_ref().is_some_and(|g| !g.is_empty()))
        .count()
}

/// How many devices of a slice we write declare node allocatable resources.
fn node_resources(s: &ResourceSlice) -> usize {
    s.spec
        .devices
        .iter()
        .flatten()
        .filter(|d| d.node_allocatable_resources.as_ref().is_some_and(|m| !m.is_empty()))
        .count()
}

/// Whether a slice we write declares node allocatable resources.
pub(super) fn has_node_resources(s: &ResourceSlice) -> bool {
    node_resources(s) > 0
}

/// Whether a slice we write has compatibility groups.
pub(super) fn has_groups(s: &ResourceSlice) -> bool {
    grouped(s) > 0
}

/// Which feature's fields the API server refused in `sent` (a gate off may
/// refuse rather than drop: a list attribute left with no value): the one
/// its message names, else the first `sent` has in the order below
/// (counters first). None: `sent` has none of them (a bug of ours).
pub(super) fn refused(sent: &ResourceSlice, message: &str) -> Option<Dropped> {
    // (feature, whether `sent` has it, the words of a message naming it),
    // in the order a message is matched; lists last, "attributes" is broad.
    let features: [(Dropped, bool, &[&str]); 6] = [
        (
            Dropped::NodeResources,
            has_node_resources(sent),
            &["nodeAllocatableResources"],
        ),
        (Dropped::Groups, has_groups(sent), &["compatibilityGroups"]),
        (
            Dropped::Capacity,
            has_shares(sent),
            &["allowMultipleAllocations", "requestPolicy"],
        ),
        (Dropped::Taints, has_taints(sent), &["taints"]),
        (
            Dropped::Counters,
            has_counters(sent),
            &["sharedCounters", "consumesCounters"],
        ),
        (Dropped::Lists, has_lists(sent), &["attributes"]),
    ];
    let named = features
        .iter()
        .find(|(_, has, words)| *has && words.iter().any(|w| message.contains(w)));
    const BLAME: [Dropped; 6] = [
        Dropped::Counters,
        Dropped::Taints,
        Dropped::Capacity,
        Dropped::Lists,
        Dropped::Groups,
        Dropped::NodeResources,
    ];
    named.map(|(d, ..)| *d).or_else(|| {
        BLAME
            .into_iter()
            .find(|d| features.iter().any(|(f, has, _)| f == d && *has))
    })
}

/// What the stored slice lacks of what we sent, and why we think so.
pub(super) fn dropped(sent: &ResourceSlice, stored: &ResourceSlice) -> Option<(Dropped, String)> {
    if let Some(why) = counters_dropped(sent, stored) {
        return Some((Dropped::Counters, why));
    }
    // (the counters dropped take the groups with them: reported above)
    if grouped(sent) > grouped(stored) {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        return Some((
            Dropped::Groups,
            format!("{name}: devices[].consumesCounters[].compatibilityGroups was dropped"),
        ));
    }
    if node_resources(sent) > node_resources(stored) {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        return Some((
            Dropped::NodeResources,
            format!("{name}: devices[].nodeAllocatableResources was dropped"),
        ));
    }
    if shared(sent) > shared(stored) {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        return Some((
            Dropped::Capacity,
            format!("{name}: devices[].allowMultipleAllocations was dropped"),
        ));
    }
    if listed(sent) > listed(stored) {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        return Some((Dropped::Lists, format!("{name}: list-typed attributes were dropped")));
    }
    let tainted = |s: &ResourceSlice| s.spec.devices.iter().flatten().filter(|d| d.taints.is_some()).count();
    (tainted(sent) > tainted(stored)).then(|| {
        let name = sent.metadata.name.as_deref().unwrap_or("");
        (Dropped::Taints, format!("{name}: devices[].taints was dropped"))
    })
}

/// Whether a slice we write carries shared counters or consumes them.
pub(super) fn has_counters(s: &ResourceSlice) -> bool {
    s.spec.shared_counters.is_some() || s.spec.devices.iter().flatten().any(|d| d.consumes_counters.is_some())
}

/// Why the stored slice lacks the counters we sent (the API server drops
/// fields of a disabled feature on write), if it does.
fn counters_dropped(sent: &ResourceSlice, stored: &ResourceSlice) -> Option<String> {
    let name = sent.metadata.name.as_deref().unwrap_or_default();
    if sent.spec.shared_counters.is_some() && stored.spec.shared_counters.is_none() {
        return Some(format!("{name}: spec.sharedCounters was dropped"));
    }
    let consuming = |s: &ResourceSlice| {
        s.spec
            .devices
            .iter()
            .flatten()
            .filter(|d| d.consumes_counters.is_some())
            .count()
    };
    (consuming(sent) > consuming(stored)).then(|| format!("{name}: devices[].consumesCounters was dropped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_counters_are_noticed() {
        use k8s_openapi::api::resource::v1::{CounterSet, Device, DeviceCounterConsumption};
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-0".into());
        sent.spec.shared_counters = Some(vec![CounterSet {
            name: "mock0".into(),
            ..Default::default()
        }]);
        let mut stored = sent.clone();
        assert_eq!(counters_dropped(&sent, &stored), None);
        assert!(has_counters(&sent));
        stored.spec.shared_counters = None;
        assert_eq!(
            counters_dropped(&sent, &stored).as_deref(),
            Some("s-0: spec.sharedCounters was dropped")
        );
        let consuming = Device {
            name: "mock0".into(),
            consumes_counters: Some(vec![DeviceCounterConsumption {
                counter_set: "mock0".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        sent.spec.shared_counters = None;
        sent.spec.devices = Some(vec![consuming.clone()]);
        let mut stored = sent.clone();
        assert_eq!(counters_dropped(&sent, &stored), None);
        stored.spec.devices = Some(vec![Device {
            consumes_counters: None,
            ..consuming
        }]);
        assert!(
            counters_dropped(&sent, &stored)
                .unwrap()
                .contains("consumesCounters was dropped")
        );
        assert!(!has_counters(&stored));
    }

    /// A list value gone from the stored slice (an attribute fewer) is
    /// noticed as the list attributes, not as anything else.
    #[test]
    fn dropped_lists_are_noticed() {
        use k8s_openapi::api::resource::v1::{Device, DeviceAttribute};
        let list = DeviceAttribute {
            strings: Some(vec!["compute".into(), "dma".into()]),
            ..Default::default()
        };
        let listed = Device {
            name: "mock0-vf0".into(),
            attributes: Some([("capabilityList".to_string(), list)].into()),
            ..Default::default()
        };
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-2".into());
        sent.spec.devices = Some(vec![listed.clone()]);
        assert!(has_lists(&sent) && !has_counters(&sent) && !has_taints(&sent));
        assert_eq!(dropped(&sent, &sent.clone()), None);
        let mut stored = sent.clone();
        stored.spec.devices = Some(vec![Device {
            attributes: Some(Default::default()),
            ..listed
        }]);
        assert_eq!(
            dropped(&sent, &stored),
            Some((Dropped::Lists, "s-2: list-typed attributes were dropped".into()))
        );
    }

    /// Compatibility groups stripped (DRADeviceCompatibilityGroups off) while
    /// the consumption stays: noticed as the groups, not the counters; the
    /// consumption gone too is the counters.
    #[test]
    fn dropped_groups_are_noticed() {
        use k8s_openapi::api::resource::v1::{Device, DeviceCounterConsumption};
        let consumption = DeviceCounterConsumption {
            counter_set: "mock0".into(),
            compatibility_groups: Some(vec!["sriov".into()]),
            ..Default::default()
        };
        let grouped = Device {
            name: "mock0-vf0".into(),
            consumes_counters: Some(vec![consumption.clone()]),
            ..Default::default()
        };
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-3".into());
        sent.spec.devices = Some(vec![grouped.clone()]);
        assert!(has_groups(&sent) && has_counters(&sent));
        assert_eq!(dropped(&sent, &sent.clone()), None);
        let mut stored = sent.clone();
        stored.spec.devices = Some(vec![Device {
            consumes_counters: Some(vec![DeviceCounterConsumption {
                compatibility_groups: None,
                ..consumption
            }]),
            ..grouped.clone()
        }]);
        assert_eq!(
            dropped(&sent, &stored),
            Some((
                Dropped::Groups,
                "s-3: devices[].consumesCounters[].compatibilityGroups was dropped".into()
            ))
        );
        stored.spec.devices = Some(vec![Device {
            consumes_counters: None,
            ..grouped
        }]);
        assert_eq!(dropped(&sent, &stored).map(|d| d.0), Some(Dropped::Counters));
    }

    /// A refusal is put on the feature its message names, else on the first
    /// the slice has (counters first); none for a slice with none of them.
    #[test]
    fn a_refusal_is_put_on_the_feature_it_names() {
        use k8s_openapi::api::resource::v1::{Device, DeviceAttribute, DeviceCounterConsumption, DeviceTaint};
        let mut d = Device {
            name: "mock0".into(),
            ..Default::default()
        };
        let slice = |d: &Device| {
            let mut s = ResourceSlice::default();
            s.spec.devices = Some(vec![d.clone()]);
            s
        };
        assert_eq!(refused(&slice(&d), "anything"), None);
        d.attributes = Some(
            [(
                "capabilityList".to_string(),
                DeviceAttribute {
                    strings: Some(vec![]),
                    ..Default::default()
                },
            )]
            .into(),
        );
        assert_eq!(refused(&slice(&d), "spec.devices[0]: invalid"), Some(Dropped::Lists));
        d.taints = Some(vec![DeviceTaint::default()]);
        assert_eq!(refused(&slice(&d), "spec.devices[0]: invalid"), Some(Dropped::Taints));
        assert_eq!(
            refused(&slice(&d), "spec.devices[0].attributes[capabilityList]: Required value"),
            Some(Dropped::Lists)
        );
        d.consumes_counters = Some(vec![DeviceCounterConsumption {
            counter_set: "mock0".into(),
            compatibility_groups: Some(vec!["pf".into()]),
            ..Default::default()
        }]);
        assert_eq!(refused(&slice(&d), "spec.devices[0]: invalid"), Some(Dropped::Counters));
        assert_eq!(
            refused(&slice(&d), "devices[0].taints[0].key: Invalid"),
            Some(Dropped::Taints)
        );
        assert_eq!(
            refused(&slice(&d), "consumesCounters[0].compatibilityGroups[0]: Invalid"),
            Some(Dropped::Groups)
        );
    }

    /// A server with DRADeviceTaints off keeps the device and drops its
    /// taints: noticed as taints, not counters.
    #[test]
    fn dropped_taints_are_noticed() {
        use k8s_openapi::api::resource::v1::Device;
        let tainted = Device {
            name: "mock1".into(),
            taints: Some(vec![k8s_openapi::api::resource::v1::DeviceTaint {
                key: "mock-accel.example.com/health".into(),
                value: Some("failed".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]),
            ..Default::default()
        };
        let mut sent = ResourceSlice::default();
        sent.metadata.name = Some("s-1".into());
        sent.spec.devices = Some(vec![tainted.clone()]);
        assert!(has_taints(&sent) && !has_counters(&sent));
        assert_eq!(dropped(&sent, &sent.clone()), None);
        let mut stored = sent.clone();
        stored.spec.devices = Some(vec![Device {
            taints: None,
            ..tainted
        }]);
        assert_eq!(
            dropped(&sent, &stored),
            Some((Dropped::Taints, "s-1: devices[].taints was dropped".into()))
        );
    }
}
