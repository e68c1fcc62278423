//! Device health for the kubelet's `DRAResourceHealth` stream: every
//! device this node has or has prepared, healthy, unhealthy or unknown,
//! recomputed whenever a scan (driven by uevents and eBPF) or a prepare
//! changes something.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::gauge;
use mock_accel_proto::health::v1alpha1::{DeviceHealth, DeviceIdentifier, HealthStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Claims;
use crate::inventory::{Health, Inventory};
use crate::metrics as m;
use crate::slices::device_name;

/// How long the kubelet may trust a report without news: the stream
/// sends only on change, so this is generous.
pub const TIMEOUT_SECONDS: i64 = 300;

/// The state of one device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub health: HealthStatus,
    pub message: String,
}

/// Each device's state from the scan and the prepared claims:
/// - in sysfs: `failed` is unhealthy; `ok` and `degraded` are healthy (a
///   degraded device still serves; the message says so);
/// - in sysfs but unreadable: unknown;
/// - prepared but gone from sysfs (removed, module unloaded): unhealthy.
pub fn states(inv: &Inventory, prepared: &Claims) -> BTreeMap<String, State> {
    let mut out = BTreeMap::new();
    for f in inv.functions.values() {
        let (health, message) = match f.health {
            Health::Ok => (HealthStatus::Healthy, "ok".to_string()),
            Health::Degraded => (
                HealthStatus::Healthy,
                "degraded (health=degraded): still serving".into(),
            ),
            Health::Failed => (HealthStatus::Unhealthy, "failed (health=failed)".into()),
        };
        out.insert(device_name(&f.name), State { health, message });
    }
    for s in &inv.skipped {
        out.insert(
            device_name(&s.name),
            State {
                health: HealthStatus::Unknown,
                message: format!("unreadable: {}", s.detail),
            },
        );
    }
    for d in prepared.0.values().flat_map(|c| &c.devices) {
        out.entry(d.device.clone()).or_insert_with(|| State {
            health: HealthStatus::Unhealthy,
            message: "removed: the function is gone from the node".into(),
        });
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Keeps `out` holding the complete device list, with each device's time
/// of last change, until cancelled.
pub async fn run(
    node: String,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    mut prepared: watch::Receiver<Arc<Claims>>,
    out: watch::Sender<Arc<Vec<DeviceHealth>>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut last: BTreeMap<String, (State, i64)> = BTreeMap::new();
    loop {
        let now_states = states(&inventory.borrow_and_update(), &prepared.borrow_and_update());
        let t = now();
        let next: BTreeMap<String, (State, i64)> = now_states
            .into_iter()
            .map(|(name, st)| {
                let since = match last.get(&name) {
                    Some((old, since)) if *old == st => *since,
                    _ => t,
                };
                (name, (st, since))
            })
            .collect();
        if next != last || out.borrow().is_empty() && !next.is_empty() {
            for h in [HealthStatus::Healthy, HealthStatus::Unhealthy, HealthStatus::Unknown] {
                let n = next.values().filter(|(s, _)| s.health == h).count();
                gauge!(m::DEVICE_HEALTH, "health" => h.as_str_name().to_ascii_lowercase()).set(n as f64);
            }
            let list = next
                .iter()
                .map(|(name, (st, since))| DeviceHealth {
                    device: Some(DeviceIdentifier {
                        pool_name: node.clone(),
                        device_name: name.clone(),
                    }),
                    health: st.health as i32,
                    last_updated_time: *since,
                    health_check_timeout_seconds: TIMEOUT_SECONDS,
                    message: st.message.clone(),
                })
                .collect();
            out.send_replace(Arc::new(list));
            last = next;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = inventory.changed() => if r.is_err() { cancel.cancelled().await; return Ok(()) },
            r = prepared.changed() => if r.is_err() { cancel.cancelled().await; return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sysfs::{scan, write_fake_tree};
    use crate::plugin::checkpoint::{ClaimState, PreparedClaim, PreparedDevice};

    #[test]
    fn states_follow_sysfs_and_claims() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&root, 3, 0).unwrap();
        let dev = |n: &str| std::fs::canonicalize(root.join(n)).unwrap();
        std::fs::write(dev("mock1").join("health"), "failed\n").unwrap();
        std::fs::write(dev("mock2").join("health"), "degraded\n").unwrap();
        std::fs::remove_file(dev("mock0").join("uuid")).unwrap();
        let inv = scan(&root).unwrap();
        let mut claims = Claims::default();
        claims.0.insert(
            "u".into(),
            PreparedClaim {
                namespace: "ns".into(),
                name: "c".into(),
                state: ClaimState::PrepareCompleted,
                boot_id: "b".into(),
                cdi_spec: "/x".into(),
                devices: vec![PreparedDevice {
                    requests: vec!["r".into()],
                    pool: "n".into(),
                    device: "mock7".into(),
                    function: "mock7".into(),
                    physfn: None,
                    admin_access: false,
                    share_id: None,
                    consumed_memory: None,
                    cdi_device_id: "k8s.d/accel=u-mock7".into(),
                }],
                pod_claim_name: None,
            },
        );
        let s = states(&inv, &claims);
        let h = |n: &str| s[n].health;
        assert_eq!(h("mock0"), HealthStatus::Unknown);
        assert_eq!(h("mock1"), HealthStatus::Unhealthy);
        assert_eq!(h("mock2"), HealthStatus::Healthy);
        assert!(s["mock2"].message.contains("degraded"));
        assert_eq!(h("mock7"), HealthStatus::Unhealthy);
        assert!(s["mock7"].message.contains("removed"));
    }
}
