//! Our test API server against the real kube-apiserver v1.37.2: the same
//! requests to both, their answers compared — status code, `metav1.Status`
//! reason, and for 422 the field paths of the causes. The real server is
//! right; a difference is fixed in `tests/src/apiserver/` or written down in
//! its module docs (and listed in `KNOWN` here, with the reason).

use std::collections::BTreeSet;

use axum::http::{Method, Request};
use kube::Client;
use kube::client::Body;
use mock_device_testkit::apiserver::{ApiServer, Config};
use mock_device_testkit::cluster::ControlPlane;
use serde_json::{Value, json};

const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";
const CLAIMS: &str = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims";
const CLASSES: &str = "/apis/resource.k8s.io/v1/deviceclasses";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
const EVENTS: &str = "/api/v1/namespaces/default/events";

/// What a request got: code, reason (empty on success), 422 cause fields.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    code: u16,
    reason: String,
    fields: BTreeSet<String>,
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> (Answer, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.map(|b| b.to_string().into_bytes()).unwrap_or_default()))
        .unwrap();
    let res = c.send(req).await.unwrap();
    let code = res.status().as_u16();
    let bytes = res.into_body().collect_bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (reason, fields) = if v["kind"] == "Status" && v["status"] == "Failure" {
        let fields = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["field"].as_str().map(str::to_string))
            .collect();
        (v["reason"].as_str().unwrap_or_default().to_string(), fields)
    } else {
        (String::new(), BTreeSet::new())
    };
    (Answer { code, reason, fields }, v)
}

fn slice(name: &str, devices: Value) -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
           "spec": {"driver": "mock-accel.example.com", "nodeName": "n1",
                    "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1}, "devices": devices}})
}

/// The sequence of requests, each named; the same on both servers.
async fn script(c: &Client) -> Vec<(&'static str, Answer)> {
    use Method as M;
    let mut out = Vec::new();
    let mut r = async |name: &'static str, m: Method, path: &str, body: Option<Value>| {
        let (a, v) = call(c, m, path, body).await;
        out.push((name, a));
        v
    };
    r("get a missing slice", M::GET, &format!("{SLICES}/nope"), None).await;
    let s1 = r(
        "create a slice",
        M::POST,
        SLICES,
        Some(slice("s1", json!([{"name": "mock0"}]))),
    )
    .await;
    r(
        "create it again",
        M::POST,
        SLICES,
        Some(slice("s1", json!([{"name": "mock0"}]))),
    )
    .await;
    let mut stale = s1.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    r(
        "update with a stale resourceVersion",
        M::PUT,
        &format!("{SLICES}/s1"),
        Some(stale),
    )
    .await;
    let mut fresh = s1.clone();
    fresh["spec"]["devices"] = json!([{"name": "mock0"}, {"name": "mock1"}]);
    r(
        "update with the current resourceVersion",
        M::PUT,
        &format!("{SLICES}/s1"),
        Some(fresh),
    )
    .await;
    r(
        "delete with a wrong uid precondition",
        M::DELETE,
        &format!("{SLICES}/s1"),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-its-uid"}})),
    )
    .await;
    let mut no_driver = slice("s2", json!([]));
    no_driver["spec"].as_object_mut().unwrap().remove("driver");
    r("a slice without a driver", M::POST, SLICES, Some(no_driver)).await;
    r(
        "a bad device name",
        M::POST,
        SLICES,
        Some(slice("s3", json!([{"name": "Mock_0"}]))),
    )
    .await;
    r(
        "duplicate device names",
        M::POST,
        SLICES,
        Some(slice("s4", json!([{"name": "mock0"}, {"name": "mock0"}]))),
    )
    .await;
    let too_many: Vec<Value> = (0..129).map(|i| json!({"name": format!("d{i}")})).collect();
    r("129 devices", M::POST, SLICES, Some(slice("s5", json!(too_many)))).await;
    let mut two_places = slice("s6", json!([]));
    two_places["spec"]["allNodes"] = json!(true);
    r("nodeName and allNodes", M::POST, SLICES, Some(two_places)).await;
    let mut bad_gen = slice("s7", json!([]));
    bad_gen["spec"]["pool"]["generation"] = json!(-1);
    r("a negative pool generation", M::POST, SLICES, Some(bad_gen)).await;
    r(
        "a malformed label selector",
        M::GET,
        &format!("{SLICES}?labelSelector=driver+in+("),
        None,
    )
    .await;
    r(
        "an unsupported field selector",
        M::GET,
        &format!("{SLICES}?fieldSelector=spec.foo%3Dx"),
        None,
    )
    .await;
    r(
        "a supported field selector",
        M::GET,
        &format!("{SLICES}?fieldSelector=spec.driver%3Dx"),
        None,
    )
    .await;

    r(
        "a claim request without a class",
        M::POST,
        CLAIMS,
        Some(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c1"},
                    "spec": {"devices": {"requests": [{"name": "r", "exactly": {}}]}}}),
        ),
    )
    .await;
    r(
        "duplicate request names",
        M::POST,
        CLAIMS,
        Some(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c3"},
                    "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "x"}},
                                                       {"name": "r", "exactly": {"deviceClassName": "x"}}]}}}),
        ),
    )
    .await;
    r(
        "a claim",
        M::POST,
        CLAIMS,
        Some(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c2"},
                    "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "x"}}]}}}),
        ),
    )
    .await;
    r(
        "a DeviceClass whose CEL does not compile",
        M::POST,
        CLASSES,
        Some(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "bad"},
                    "spec": {"selectors": [{"cel": {"expression": "device.driver =="}}]}}),
        ),
    )
    .await;
    r(
        "a DeviceClass",
        M::POST,
        CLASSES,
        Some(
            json!({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "good"},
                    "spec": {"selectors": [{"cel": {"expression": "device.driver == \"mock-accel.example.com\""}}]}}),
        ),
    )
    .await;
    r(
        "a Lease",
        M::POST,
        LEASES,
        Some(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l1"},
                    "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2026-11-30T10:00:00.000000Z"}})),
    )
    .await;
    r(
        "a Lease with a zero duration",
        M::POST,
        LEASES,
        Some(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l2"},
                    "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 0}}),
        ),
    )
    .await;
    r(
        "an Event about a slice",
        M::POST,
        EVENTS,
        Some(
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "s1.1", "namespace": "default"},
                    "involvedObject": {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "name": "s1"},
                    "reason": "NodeGone", "message": "m", "type": "Warning",
                    "source": {"component": "mock-accel-controller"},
                    "firstTimestamp": "2026-11-30T10:00:00Z", "lastTimestamp": "2026-11-30T10:00:00Z", "count": 1,
                    "reportingComponent": "mock-accel-controller", "reportingInstance": "ctl-1"}),
        ),
    )
    .await;
    r(
        "an Event of a bad type",
        M::POST,
        EVENTS,
        Some(
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "s1.2", "namespace": "default"},
                    "involvedObject": {"kind": "ResourceSlice", "name": "s1"}, "reason": "X", "type": "Bad"}),
        ),
    )
    .await;
    r("delete the slice", M::DELETE, &format!("{SLICES}/s1"), None).await;
    r("get the deleted slice", M::GET, &format!("{SLICES}/s1"), None).await;
    out
}

/// Differences we keep, and why (each also in the test server's docs).
const KNOWN: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread")]
async fn the_test_api_server_answers_as_the_real_one() {
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the real control plane: {e}"));
    let kc = kube::config::Kubeconfig::read_from(&cp.admin_kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let real = Client::try_from(cfg).unwrap();
    let server = ApiServer::start(Config::default()).unwrap();
    let mock = Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();

    let theirs = script(&real).await;
    let ours = script(&mock).await;
    let mut report = Vec::new();
    for ((name, r), (_, m)) in theirs.iter().zip(&ours) {
        let known = KNOWN.iter().any(|(k, _)| k == name);
        let same = r == m;
        println!(
            "{:<44} real {} {:<16} ours {} {:<16}{}",
            name,
            r.code,
            r.reason,
            m.code,
            m.reason,
            if same {
                ""
            } else if known {
                "  (known)"
            } else {
                "  DIFFERENT"
            }
        );
        if !same && !known {
            report.push(format!("{name}:\n  real: {r:?}\n  ours: {m:?}"));
        }
    }
    assert!(
        report.is_empty(),
        "the test API server differs from the real one:\n{}",
        report.join("\n")
    );
}
