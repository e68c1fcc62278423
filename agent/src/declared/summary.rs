//! The controller's part of DeviceScenarios: `status.summary`, all the
//! nodes' entries at a glance (what `kubectl get devicescenarios` shows:
//! a printer column cannot count a list). Written by the leader only,
//! server-side applied as its own field: the agents' entries are theirs.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use metrics::counter;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::api_resource;
use super::spec::{KIND, VERSION};
use crate::metrics as m;

const FIELD_MANAGER: &str = "mock-accel-controller";
/// Nodes named in `waiting` before "(+N more)".
const WAITING_SHOWN: usize = 5;

/// The summary of a scenario object's `status.nodes`.
pub fn summary(object: &Value) -> Value {
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    let nodes = object["status"]["nodes"].as_array().cloned().unwrap_or_default();
    let current = |e: &Value| e["applied"] == true && e["observedGeneration"].as_i64() == Some(generation);
    let applied = nodes.iter().filter(|e| current(e)).count();
    let waiting: Vec<String> = nodes
        .iter()
        .filter(|e| !current(e))
        .map(|e| {
            let reason = e["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Applied"))
                .and_then(|c| c["reason"].as_str())
                .filter(|_| e["observedGeneration"].as_i64() == Some(generation))
                .unwrap_or("NotObserved");
            format!("{}: {reason}", e["node"].as_str().unwrap_or("?"))
        })
        .collect();
    let mut text = waiting
        .iter()
        .take(WAITING_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if waiting.len() > WAITING_SHOWN {
        text.push_str(&format!(" (+{} more)", waiting.len() - WAITING_SHOWN));
    }
    json!({"nodes": nodes.len(), "applied": applied, "waiting": text})
}

/// Keeps every scenario's summary up to date while `term` lasts (the
/// controller's lead). A cluster without the CRD: said once, then quiet.
pub async fn run(requests: Client, watches: Client, driver: String, term: CancellationToken) {
    let ar = api_resource(&driver);
    let (store, stream) = super::scenario_watch(watches, &driver);
    let changed = Arc::new(Notify::new());
    let api: Api<DynamicObject> = Api::all_with(requests, &ar);
    let wake = changed.clone();
    let watching = super::drive(stream, move |_| wake.notify_one(), "DeviceScenarios", driver.clone());
    let summarising = async {
        loop {
            changed.notified().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            for obj in store.state() {
                let json = serde_json::to_value(obj.as_ref()).unwrap_or_default();
                let want = summary(&json);
                if json["status"]["summary"] == want {
                    continue;
                }
                let body = json!({
                    "apiVersion": format!("{driver}/{VERSION}"), "kind": KIND,
                    "metadata": {"name": obj.name_any()},
                    "status": {"summary": want},
                });
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                debug!(scenario = %obj.name_any(), summary = %want, "writing a scenario's summary");
                if let Err(e) = api.patch_status(&obj.name_any(), &pp, &Patch::Apply(&body)).await {
                    counter!(m::CONTROLLER_API_ERRORS, "op" => "scenario_summary", "kind" => "other").increment(1);
                    warn!(scenario = %obj.name_any(), error = %e, "cannot write a scenario's summary");
                }
            }
        }
    };
    tokio::select! {
        _ = term.cancelled() => {}
        _ = watching => {}
        _ = summarising => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_nodes_at_the_current_generation() {
        let entry = |node: &str, generation: i64, applied: bool, reason: &str| {
            json!({"node": node, "observedGeneration": generation, "applied": applied,
                   "conditions": [{"type": "Applied", "reason": reason}]})
        };
        let mut nodes = vec![
            entry("a", 2, true, "Applied"),
            entry("b", 1, true, "Applied"),
            entry("c", 2, false, "DeviceInUse"),
        ];
        nodes.extend((0..6).map(|i| entry(&format!("n{i}"), 2, false, "Conflict")));
        let s = summary(&json!({"metadata": {"generation": 2}, "status": {"nodes": nodes}}));
        assert_eq!(s["nodes"], 9);
        assert_eq!(s["applied"], 1);
        assert_eq!(
            s["waiting"],
            "b: NotObserved, c: DeviceInUse, n0: Conflict, n1: Conflict, n2: Conflict (+3 more)"
        );
        assert_eq!(summary(&json!({"metadata": {"generation": 1}}))["nodes"], 0);
    }
}
