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

/// What the stored slice lacks of what we sent, and why we think so.
pub(super) fn dropped(sent: &ResourceSlice, stored: &ResourceSlice) -> Option<(Dropped, String)> {
    if let Some(why) = counters_dropped(sent, stored) {
        return Some((Dropped::Counters, why));
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
