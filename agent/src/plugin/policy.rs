//! Who may hold what, from the node's checkpoint alone (pure): a device
//! goes to one claim at a time (admin access and shares aside), a PF and
//! its VFs never to two claims, nor both to one.

use std::collections::HashSet;

use super::checkpoint::{Claims, PreparedClaim, PreparedDevice};
use super::resolve::ClaimError;
use crate::claims::ClaimRef;

/// A device goes to one claim at a time (admin access aside), and a PF
/// and its VFs never to two claims, nor both to one. Pure: what the
/// devices' own state says is checked on top (`apply`).
pub(super) fn check_exclusive(claim: &ClaimRef, devices: &[PreparedDevice], state: &Claims) -> Result<(), ClaimError> {
    let held: Vec<(&String, &PreparedClaim, &PreparedDevice)> = state
        .0
        .iter()
        .flat_map(|(uid, c)| c.devices.iter().map(move |d| (uid, c, d)))
        .filter(|(uid, _, d)| *uid != &claim.uid && !d.admin_access)
        .collect();
    let owner = |c: &PreparedClaim, uid: &str| format!("{}/{} ({uid})", c.namespace, c.name);
    let exclusive: Vec<&PreparedDevice> = devices.iter().filter(|d| !d.admin_access).collect();
    for d in &exclusive {
        for (uid, c, h) in &held {
            // Two shares of one device (consumable capacity): the
            // scheduler keeps their sum within the device's memory.
            let shares = d.share_id.is_some() && h.share_id.is_some() && d.share_id != h.share_id;
            if h.function == d.function && !shares {
                return Err(ClaimError::new(
                    "conflict",
                    format!("device {} is already prepared for claim {}", d.device, owner(c, uid)),
                ));
            }
            if h.physfn.as_deref() == Some(d.function.as_str()) {
                return Err(ClaimError::new(
                    "conflict",
                    format!(
                        "PF {} cannot be prepared: its VF {} is prepared for claim {}",
                        d.device,
                        h.device,
                        owner(c, uid)
                    ),
                ));
            }
            if d.physfn.as_deref() == Some(h.function.as_str()) {
                return Err(ClaimError::new(
                    "conflict",
                    format!(
                        "VF {} cannot be prepared: its PF {} is prepared for claim {}",
                        d.device,
                        h.device,
                        owner(c, uid)
                    ),
                ));
            }
        }
        if let Some(pf) = exclusive
            .iter()
            .find(|other| d.physfn.as_deref() == Some(other.function.as_str()))
        {
            return Err(ClaimError::new(
                "conflict",
                format!(
                    "the claim asks for PF {} and its VF {} together: a PF is exclusive with its VFs",
                    pf.device, d.device
                ),
            ));
        }
    }
    Ok(())
}

/// The functions other claims than `uid` hold a share of (consumable
/// capacity): they stay marked allocated while one of those is prepared.
pub(super) fn shared_by_others(state: &Claims, uid: &str) -> HashSet<String> {
    state
        .0
        .iter()
        .filter(|(other, _)| other.as_str() != uid)
        .flat_map(|(_, c)| c.devices.iter())
        .filter(|d| d.share_id.is_some() && !d.admin_access)
        .map(|d| d.function.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plugin::checkpoint::ClaimState;

    fn device(function: &str, physfn: Option<&str>, share: Option<&str>, admin: bool) -> PreparedDevice {
        PreparedDevice {
            requests: vec!["r".into()],
            pool: "node-a".into(),
            device: function.replace('_', "-"),
            function: function.into(),
            physfn: physfn.map(Into::into),
            admin_access: admin,
            consumed_memory: None,
            share_id: share.map(Into::into),
            cdi_device_id: String::new(),
        }
    }

    fn claim(uid: &str) -> ClaimRef {
        ClaimRef {
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
        }
    }

    fn holding(uid: &str, devices: Vec<PreparedDevice>) -> Claims {
        Claims(BTreeMap::from([(
            uid.to_string(),
            PreparedClaim {
                namespace: "default".into(),
                name: uid.into(),
                state: ClaimState::PrepareCompleted,
                boot_id: String::new(),
                cdi_spec: Default::default(),
                devices,
                pod_claim_name: None,
            },
        )]))
    }

    #[test]
    fn one_claim_per_device_and_never_a_pf_beside_its_vfs() {
        let state = holding("a", vec![device("mock0", None, None, false)]);
        let b = claim("b");
        let e = check_exclusive(&b, &[device("mock0", None, None, false)], &state).unwrap_err();
        assert!(e.message.contains("already prepared for claim default/a (a)"), "{e:?}");
        let e = check_exclusive(&b, &[device("mock0_vf1", Some("mock0"), None, false)], &state).unwrap_err();
        assert!(
            e.message.starts_with("VF mock0-vf1 cannot be prepared: its PF mock0"),
            "{e:?}"
        );
        // The claim holding it asks again; admin access looks without holding.
        check_exclusive(&claim("a"), &[device("mock0", None, None, false)], &state).unwrap();
        check_exclusive(&b, &[device("mock0", None, None, true)], &state).unwrap();
        // A PF and its VF in one claim.
        let both = [
            device("mock1", None, None, false),
            device("mock1_vf0", Some("mock1"), None, false),
        ];
        let e = check_exclusive(&b, &both, &Claims::default()).unwrap_err();
        assert!(e.message.contains("together"), "{e:?}");
        assert_eq!(e.reason, "conflict");
    }

    #[test]
    fn shares_of_one_device_go_to_several_claims_and_keep_it_held() {
        let state = holding("a", vec![device("mock0", None, Some("s1"), false)]);
        check_exclusive(&claim("b"), &[device("mock0", None, Some("s2"), false)], &state).unwrap();
        let e = check_exclusive(&claim("b"), &[device("mock0", None, Some("s1"), false)], &state).unwrap_err();
        assert_eq!(e.reason, "conflict");
        assert_eq!(shared_by_others(&state, "b"), HashSet::from(["mock0".to_string()]));
        assert!(shared_by_others(&state, "a").is_empty());
    }
}
