//! The HTTP side: paths, verbs and the real server's rules for each.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::resources::{RESOURCES, ResourceType, VERBS, find, groups};
use super::select::{FieldSelector, LabelSelector};
use super::store::{Event, EventType, Key, TooOld};
use super::validate::{self, Cause};
use super::{State, time};

pub const SERVER_VERSION: &str = "v1.34.0";
const MAX_BODY: usize = 3 * 1024 * 1024;

// ---- errors: metav1.Status ----

#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified()))
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    fn conflict(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", rt.qualified()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> ApiError {
        let parts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let summary = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {summary}", rt.qualified_kind()),
        )
        .with_details(json!({
            "name": name, "group": rt.group, "kind": rt.kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }))
    }

    fn gone(message: String) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status(),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

type ApiResult = Result<Response, ApiError>;

// ---- paths ----

/// What a request path names.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: usize,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

enum Path {
    Version,
    OpenApiRoot,
    OpenApiGroupVersion(String, String),
    ApiVersions,
    ApiGroups,
    ApiGroup(String),
    ResourceList(String, String),
    Resource(Target),
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
}

fn parse_path(path: &str) -> Result<Path, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Path::Version),
        ["openapi", "v3"] => return Ok(Path::OpenApiRoot),
        ["openapi", "v3", "api", v] if *v == "v1" => return Ok(Path::OpenApiGroupVersion(String::new(), "v1".into())),
        ["openapi", "v3", "apis", g, v] if groups().contains(&(*g, *v)) => {
            return Ok(Path::OpenApiGroupVersion(g.to_string(), v.to_string()));
        }
        ["api"] => return Ok(Path::ApiVersions),
        ["apis"] => return Ok(Path::ApiGroups),
        ["apis", g] => return Ok(Path::ApiGroup(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let served = (group.is_empty() && version == "v1") || groups().contains(&(group, version));
    if !served {
        return Err(not_found_path());
    }
    let lookup = |plural: &str| find(group, version, plural).ok_or_else(not_found_path);
    let target = |resource, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Path::Resource(Target {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        })
    };
    Ok(match rest {
        [] => Path::ResourceList(group.into(), version.into()),
        ["namespaces", ns, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            target(lookup("namespaces")?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, plural, tail @ ..] => {
            let r = lookup(plural)?;
            if !RESOURCES[r].namespaced {
                return Err(not_found_path());
            }
            match tail {
                [] => target(r, Some(ns), None, None),
                [name] => target(r, Some(ns), Some(name), None),
                [name, sub] => target(r, Some(ns), Some(name), Some(sub)),
                _ => return Err(not_found_path()),
            }
        }
        [plural] => target(lookup(plural)?, None, None, None),
        [plural, name, tail @ ..] if tail.len() <= 1 => {
            let r = lookup(plural)?;
            if RESOURCES[r].namespaced {
                // A namespaced object needs its namespace in the path.
                return Err(not_found_path());
            }
            target(r, None, Some(name), tail.first().copied())
        }
        _ => return Err(not_found_path()),
    })
}

// ---- entry point ----

pub type Query = BTreeMap<String, String>;

pub fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The audit verb and resource of a request, for the request counters.
pub fn verb_and_resource(method: &Method, path: &str, query: &Query) -> (String, String) {
    match parse_path(path) {
        Ok(Path::Resource(t)) => {
            let rt = &RESOURCES[t.resource];
            let resource = match &t.subresource {
                Some(s) => format!("{}/{s}", rt.plural),
                None => rt.plural.to_string(),
            };
            let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let verb = match (method.as_str(), t.name.is_some()) {
                ("GET", _) if watch => "watch",
                ("GET", true) => "get",
                ("GET", false) => "list",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", true) => "delete",
                ("DELETE", false) => "deletecollection",
                (m, _) => return (m.to_lowercase(), resource),
            };
            (verb.to_string(), resource)
        }
        _ => ("get".into(), "discovery".into()),
    }
}

pub async fn handle(
    state: Arc<State>,
    method: Method,
    path: String,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match parse_path(&path) {
        Err(e) => Err(e),
        Ok(Path::Version) => Ok(json_response(StatusCode::OK, &version())),
        Ok(Path::OpenApiRoot) => Ok(json_response(StatusCode::OK, &openapi_root())),
        Ok(Path::OpenApiGroupVersion(g, v)) => Ok(json_response(StatusCode::OK, &openapi_group_version(&g, &v))),
        Ok(Path::ApiVersions) => Ok(json_response(StatusCode::OK, &api_versions(&headers))),
        Ok(Path::ApiGroups) => Ok(json_response(StatusCode::OK, &api_groups())),
        Ok(Path::ApiGroup(g)) => api_group(&g).map(|v| json_response(StatusCode::OK, &v)),
        Ok(Path::ResourceList(g, v)) => Ok(json_response(StatusCode::OK, &resource_list(&g, &v))),
        Ok(Path::Resource(t)) => resource_request(&state, &method, t, &query, &headers, &body).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn resource_request(
    state: &Arc<State>,
    method: &Method,
    t: Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        ));
    }
    if query.contains_key("dryRun") {
        return Err(ApiError::bad_request("dryRun is not supported by the test API server"));
    }
    if let Some(v) = query
        .get("fieldValidation")
        .filter(|v| !matches!(v.as_str(), "Ignore" | "Warn" | "Strict"))
    {
        return Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn or Strict, not {v:?}"
        )));
    }
    let rt = &RESOURCES[t.resource];
    if let Some(sub) = &t.subresource {
        let ok = match sub.as_str() {
            "status" => rt.status_subresource,
            "finalize" => rt.kind == "Namespace",
            _ => false,
        };
        if !ok {
            return Err(not_found_path());
        }
        if !matches!(*method, Method::GET | Method::PUT | Method::PATCH) {
            return Err(method_not_allowed(method));
        }
    }
    let table = wants_table(headers);
    match (method.clone(), t.name.is_some()) {
        (Method::GET, false) if is_watch(query) => watch(state, &t, query, table),
        (Method::GET, false) => list(state, &t, query, table),
        (Method::GET, true) => get(state, &t, table),
        (Method::POST, false) => create(state, &t, body),
        (Method::PUT, true) => update(state, &t, body),
        (Method::PATCH, true) => patch(state, &t, headers, body),
        (Method::DELETE, true) => delete(state, &t, body),
        (Method::DELETE, false) => delete_collection(state, &t, query, body),
        (m, _) => Err(method_not_allowed(&m)),
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

fn is_watch(q: &Query) -> bool {
    q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")))
}

// ---- discovery ----

fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": SERVER_VERSION, "gitCommit": "mock-device-test-apiserver",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "n/a",
        "compiler": "rustc", "platform": "linux/amd64",
    })
}

fn api_versions(headers: &HeaderMap) -> Value {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1",
           "groups": groups().iter().map(|(g, v)| group_json(g, v)).collect::<Vec<_>>()})
}

fn api_group(group: &str) -> Result<Value, ApiError> {
    let (g, v) = groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or_else(not_found_path)?;
    let mut out = group_json(g, v);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Ok(out)
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut entry = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                               "kind": r.kind, "verbs": VERBS});
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The OpenAPI v3 discovery root: one document per group-version.
fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=mock"}),
    );
    for (g, v) in groups() {
        paths.insert(
            format!("apis/{g}/{v}"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash=mock")}),
        );
    }
    json!({"paths": paths})
}

/// A group-version's OpenAPI v3 document: the paths and operations served,
/// with the GVK extensions kubectl reads (it looks for `fieldValidation` on
/// PATCH to decide that the server validates fields). No schemas.
fn openapi_group_version(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let prefix = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let params = |names: &[&str]| -> Value {
            names
                .iter()
                .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string"}}))
                .collect()
        };
        let op = |action: &str, names: &[&str]| {
            json!({"operationId": format!("{action}{}", r.kind), "x-kubernetes-action": action,
                   "x-kubernetes-group-version-kind": gvk, "parameters": params(names),
                   "responses": {"200": {"description": "OK"}}})
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        paths.insert(prefix.clone(), json!({
            "get": op("list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "resourceVersionMatch", "watch", "allowWatchBookmarks", "sendInitialEvents", "timeoutSeconds"]),
            "post": op("post", &write), "delete": op("deletecollection", &["labelSelector", "fieldSelector"]),
        }));
        paths.insert(format!("{prefix}/{{name}}"), json!({
            "get": op("get", &[]), "put": op("put", &write), "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
            "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        }));
        if r.status_subresource {
            paths.insert(format!("{prefix}/{{name}}/status"), json!({
                "get": op("get", &[]), "put": op("put", &write), "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
            }));
        }
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (mock-device test API server)", "version": SERVER_VERSION}, "paths": paths})
}

// ---- reads ----

fn key_of(t: &Target, name: &str) -> Key {
    (t.resource, t.namespace.clone().unwrap_or_default(), name.to_string())
}

fn get(state: &Arc<State>, t: &Target, table: bool) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let name = t.name.as_deref().unwrap_or("");
    let store = state.store.lock().unwrap();
    let obj = store
        .get(&key_of(t, name))
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let rv = store.rv();
    drop(store);
    Ok(if table {
        json_response(StatusCode::OK, &to_table(rt, &[obj], rv))
    } else {
        json_response(StatusCode::OK, &obj)
    })
}

struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    fn parse(rt: &ResourceType, q: &Query) -> Result<Selectors, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), rt)
                .map_err(ApiError::bad_request)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj["metadata"]["labels"].as_object()) && self.fields.matches(obj)
    }
}

fn parse_rv(q: &Query) -> Result<Option<u64>, ApiError> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {s:?}: must be a non-negative integer"
            ))
        }),
    }
}

fn too_large(requested: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"))
        .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e.retry_after = Some(1);
    e
}

fn expired(requested: u64, oldest: u64) -> ApiError {
    ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
}

fn list_options_invalid(field: &str, message: &str) -> ApiError {
    ApiError::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: {message}")).with_details(
        json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": [{"reason": "FieldValueForbidden", "message": message, "field": field}]}),
    )
}

/// A continue token: the snapshot's resourceVersion and the last key served.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"rv": rv, "ns": ns, "name": name}).to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v["rv"].as_u64()?,
        v["ns"].as_str()?.to_string(),
        v["name"].as_str()?.to_string(),
    ))
}

fn list(state: &Arc<State>, t: &Target, q: &Query, table: bool) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let sel = Selectors::parse(rt, q)?;
    let rv = parse_rv(q)?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let rv_match = q.get("resourceVersionMatch").map(String::as_str).unwrap_or("");
    let store = state.store.lock().unwrap();
    let current = store.rv();

    let (snapshot_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, ns, name) =
                decode_continue(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            (rv, Some((ns, name)))
        }
        None => {
            let at = match (rv_match, rv) {
                ("", None) | ("", Some(0)) | ("NotOlderThan", _) => {
                    if let Some(r) = rv.filter(|r| *r > current) {
                        return Err(too_large(r, current));
                    }
                    current
                }
                ("", Some(r)) => {
                    if r > current {
                        return Err(too_large(r, current));
                    }
                    current
                }
                ("Exact", Some(r)) if r > 0 => {
                    if r > current {
                        return Err(too_large(r, current));
                    }
                    r
                }
                ("Exact", _) => {
                    return Err(list_options_invalid(
                        "resourceVersionMatch",
                        "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                (other, _) => {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Unsupported value: {other:?}"
                    )));
                }
            };
            (at, None)
        }
    };
    let items = store
        .list_at(t.resource, t.namespace.as_deref(), snapshot_rv)
        .map_err(|TooOld::Expired { requested, oldest }| {
            if after.is_some() {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".to_string())
            } else {
                expired(requested, oldest)
            }
        })?;
    drop(store);

    let mut matching: Vec<Arc<Value>> = items
        .into_iter()
        .filter(|o| {
            after.as_ref().is_none_or(|(ns, name)| {
                let m = &o["metadata"];
                (m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or("")) > (ns.as_str(), name.as_str())
            })
        })
        .filter(|o| sel.matches(o))
        .collect();
    let mut meta = json!({"resourceVersion": snapshot_rv.to_string()});
    if limit > 0 && matching.len() > limit {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        let last = &matching[limit - 1]["metadata"];
        meta["continue"] = json!(encode_continue(
            snapshot_rv,
            last["namespace"].as_str().unwrap_or(""),
            last["name"].as_str().unwrap_or("")
        ));
        meta["remainingItemCount"] = json!(remaining);
    }
    if table {
        let mut tbl = to_table(rt, &matching, snapshot_rv);
        tbl["metadata"] = meta;
        return Ok(json_response(StatusCode::OK, &tbl));
    }
    let items: Vec<Value> = matching
        .iter()
        .map(|o| {
            let mut o = (**o).clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    ))
}

// ---- watch ----

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
}

/// What a watcher sees of an event, given its namespace and selectors: a
/// change into or out of the selection is an ADDED or a DELETED.
fn watch_view(t: &Target, sel: &Selectors, ev: &Event) -> Option<(EventType, Arc<Value>)> {
    if ev.key.0 != t.resource || t.namespace.as_deref().is_some_and(|ns| ns != ev.key.1) {
        return None;
    }
    let now = ev.kind != EventType::Deleted && sel.matches(&ev.object);
    let before = ev.prev.as_ref().is_some_and(|p| sel.matches(p));
    match (before, now) {
        (false, true) => Some((EventType::Added, ev.object.clone())),
        (true, true) => Some((EventType::Modified, ev.object.clone())),
        (true, false) => Some((EventType::Deleted, ev.object.clone())),
        (false, false) => None,
    }
}

fn watch(state: &Arc<State>, t: &Target, q: &Query, table: bool) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let sel = Selectors::parse(rt, q)?;
    let rv = parse_rv(q)?;
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
    let rv_match = q.get("resourceVersionMatch").map(String::as_str).unwrap_or("");
    if send_initial.is_some() && rv_match != "NotOlderThan" {
        return Err(list_options_invalid(
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch equal to NotOlderThan",
        ));
    }
    if send_initial == Some(true) && !bookmarks {
        return Err(list_options_invalid(
            "allowWatchBookmarks",
            "Forbidden: allowWatchBookmarks must be true when sendInitialEvents is true",
        ));
    }
    if !matches!(rv_match, "" | "NotOlderThan") {
        return Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {rv_match:?} for watch"
        )));
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(state.config.watch_timeout);

    // Snapshot, backlog and subscription under one lock: nothing is missed
    // and nothing is sent twice.
    let store = state.store.lock().unwrap();
    let current = store.rv();
    let mut first: Vec<Bytes> = Vec::new();
    if let Some(r) = rv.filter(|r| *r > current) {
        return Err(too_large(r, current));
    }
    // Unset or "0" without sendInitialEvents: the current state as ADDED
    // events first ("get state and start at most recent"), as does
    // sendInitialEvents=true, which ends it with a bookmark.
    let initial_state = send_initial == Some(true) || (send_initial.is_none() && matches!(rv, None | Some(0)));
    if initial_state {
        for obj in store
            .list(t.resource, t.namespace.as_deref())
            .iter()
            .filter(|o| sel.matches(o))
        {
            first.push(watch_line("ADDED", &render(rt, obj, table, current)));
        }
        if send_initial == Some(true) {
            first.push(watch_line("BOOKMARK", &bookmark(rt, current, true)));
        }
    } else if let Some(r) = rv.filter(|r| *r > 0) {
        match store.events_since(r) {
            Ok(events) => {
                for ev in events {
                    if let Some((kind, obj)) = watch_view(t, &sel, &ev) {
                        first.push(watch_line(kind.as_str(), &render(rt, &obj, table, ev.rv)));
                    }
                }
            }
            Err(TooOld::Expired { requested, oldest }) => {
                // The real server answers 200 and an ERROR event.
                let err = expired(requested, oldest);
                return Ok(stream_response(vec![watch_line("ERROR", &err.status())], None));
            }
        }
    }
    let start = current;
    let rx = store.subscribe();
    drop(store);

    let task = WatchTask {
        state: state.clone(),
        target: t.clone(),
        sel,
        table,
        bookmarks,
        timeout,
        last_rv: start,
    };
    Ok(stream_response(first, Some((task, rx))))
}

struct WatchTask {
    state: Arc<State>,
    target: Target,
    sel: Selectors,
    table: bool,
    bookmarks: bool,
    timeout: Duration,
    last_rv: u64,
}

impl WatchTask {
    async fn run(mut self, mut rx: broadcast::Receiver<Arc<Event>>, out: mpsc::Sender<Result<Bytes, Infallible>>) {
        let rt = &RESOURCES[self.target.resource];
        let mut closed = self.state.close_watches.subscribe();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tick = tokio::time::interval(self.state.config.bookmark_interval);
        tick.tick().await;
        loop {
            let line = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = closed.changed() => return,
                _ = out.closed() => return,
                _ = tick.tick(), if self.bookmarks => {
                    // Everything up to the store's resourceVersion is queued
                    // for us while we hold the lock: send it, then the bookmark.
                    let mut lines = Vec::new();
                    let state = self.state.clone();
                    let current = {
                        let store = state.store.lock().unwrap();
                        loop {
                            match rx.try_recv() {
                                Ok(ev) => lines.extend(self.line_for(&ev)),
                                Err(broadcast::error::TryRecvError::Empty) => break,
                                Err(_) => { lines.push(self.lagged()); break; }
                            }
                        }
                        store.rv()
                    };
                    self.last_rv = self.last_rv.max(current);
                    lines.push(watch_line("BOOKMARK", &bookmark(rt, self.last_rv, false)));
                    for l in lines {
                        if out.send(Ok(l)).await.is_err() { return; }
                    }
                    continue;
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => match self.line_for(&ev) { Some(l) => l, None => continue },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = out.send(Ok(self.lagged())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if out.send(Ok(line)).await.is_err() {
                return;
            }
        }
    }

    fn line_for(&mut self, ev: &Event) -> Option<Bytes> {
        self.last_rv = self.last_rv.max(ev.rv);
        let rt = &RESOURCES[self.target.resource];
        watch_view(&self.target, &self.sel, ev)
            .map(|(kind, obj)| watch_line(kind.as_str(), &render(rt, &obj, self.table, ev.rv)))
    }

    /// A watcher too slow for the event buffer is ended as the real server
    /// ends it: with 410 Expired, so the client relists.
    fn lagged(&self) -> Bytes {
        watch_line("ERROR", &expired(self.last_rv, self.last_rv).status())
    }
}

fn stream_response(first: Vec<Bytes>, task: Option<(WatchTask, broadcast::Receiver<Arc<Event>>)>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(async move {
        for line in first {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if let Some((task, events)) = task {
            task.run(events, tx).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap()
}

fn render(rt: &ResourceType, obj: &Arc<Value>, table: bool, rv: u64) -> Value {
    if table {
        to_table(rt, std::slice::from_ref(obj), rv)
    } else {
        (**obj).clone()
    }
}

// ---- kubectl's server-side printing ----

fn to_table(rt: &ResourceType, objs: &[Arc<Value>], rv: u64) -> Value {
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"}),
    ];
    cols.extend(rt.columns.iter().map(
        |c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": 0}),
    ));
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(rt.columns.iter().map(|c| (c.cell)(o)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": cols, "rows": rows})
}

// ---- writes ----

/// Drops null members, as the real server's decode and encode (omitempty)
/// do: `{"x": null}` is stored and returned as `{}`.
fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json: {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    Ok(v)
}

/// Checks apiVersion/kind (filling them in if absent) and the namespace.
fn check_type(rt: &ResourceType, t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = rt.api_version();
    match obj["apiVersion"].as_str() {
        None => obj["apiVersion"] = json!(want_av),
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"].as_object_mut().unwrap();
    if rt.namespaced {
        let url_ns = t.namespace.clone().unwrap_or_default();
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// Stores quantities in canonical form and stamps taints' times, as the
/// real server does.
fn normalize(rt: &ResourceType, obj: &mut Value) {
    fn fix_all(counters: Option<&mut Value>, key: &str) {
        for v in counters
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if let Some(q) = v.get_mut(key)
                && let Some(c) = q.as_str().and_then(super::quantity::canonical)
            {
                *q = Value::String(c);
            }
        }
    }
    if rt.kind != "ResourceSlice" {
        return;
    }
    let Some(spec) = obj.get_mut("spec") else { return };
    for dev in spec
        .get_mut("devices")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        fix_all(dev.get_mut("capacity"), "value");
        // A taint without a time gets the server's (the real server's
        // defaulting, at every create and update).
        for taint in dev
            .get_mut("taints")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            if taint.get("timeAdded").is_none_or(Value::is_null) {
                let second = jiff::TimestampRound::new()
                    .smallest(jiff::Unit::Second)
                    .mode(jiff::RoundMode::Trunc);
                let now = jiff::Timestamp::now()
                    .round(second)
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                taint.insert(
                    "timeAdded".into(),
                    json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
            }
        }
        for cc in dev
            .get_mut("consumesCounters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            fix_all(cc.get_mut("counters"), "value");
        }
    }
    for set in spec
        .get_mut("sharedCounters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        fix_all(set.get_mut("counters"), "value");
    }
}

fn validate_or_422(rt: &ResourceType, obj: &Value, old: Option<&Value>, status_only: bool) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let mut errs = if status_only {
        validate::Errors::default()
    } else {
        validate::validate(rt.kind, rt.namespaced, obj, old)
    };
    if rt.kind == "ResourceClaim" && status_only {
        validate::validate_resource_claim_status(obj, old.unwrap_or(&Value::Null), &mut errs);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, errs.0))
    }
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| GENERATE_CHARS[*b as usize % GENERATE_CHARS.len()] as char)
        .collect()
}

fn create(state: &Arc<State>, t: &Target, body: &Bytes) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let mut obj = parse_body(body)?;
    prune_nulls(&mut obj);
    check_type(rt, t, &mut obj)?;
    let meta = &mut obj["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty)
        && let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty())
    {
        meta["name"] = json!(format!("{prefix}{}", generate_suffix()));
    }
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
    ] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(k);
        }
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(time::now());
    if rt.generation {
        meta["generation"] = json!(1);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("generation");
    }
    match rt.kind {
        "ResourceClaim" => {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        _ => {}
    }
    validate_or_422(rt, &obj, None, false)?;
    normalize(rt, &mut obj);
    prune_nulls(&mut obj);

    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut store = state.store.lock().unwrap();
    if let Some(ns) = &t.namespace {
        let ns_idx = find("", "v1", "namespaces").unwrap();
        match store.get(&(ns_idx, String::new(), ns.clone())) {
            None => {
                return Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
                    .with_details(json!({"name": ns, "kind": "namespaces"})));
            }
            Some(n) if n["status"]["phase"] == "Terminating" => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    ),
                ));
            }
            _ => {}
        }
    }
    let key = key_of(t, &name);
    if store.get(&key).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    let stored = store.put(key, obj);
    Ok(json_response(StatusCode::CREATED, &stored))
}

/// Applies an update to `old`: the real server's preconditions, immutable
/// metadata, status subresource rules, generation, no-op detection.
fn apply_update(state: &Arc<State>, t: &Target, mut obj: Value, old: Arc<Value>) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let name = t.name.as_deref().unwrap_or("");
    prune_nulls(&mut obj);
    check_type(rt, t, &mut obj)?;
    match obj["metadata"]["name"].as_str() {
        Some(n) if n == name => {}
        None | Some("") => obj["metadata"]["name"] = json!(name),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    let old_meta = &old["metadata"];
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str().filter(|r| !r.is_empty())
        && rv != old_meta["resourceVersion"].as_str().unwrap_or("")
    {
        return Err(ApiError::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = obj["metadata"]["uid"].as_str().filter(|u| !u.is_empty())
        && uid != old_meta["uid"].as_str().unwrap_or("")
    {
        return Err(ApiError::conflict(
            rt,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old_meta["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    let status_only = t.subresource.is_some();
    let mut new = if status_only {
        // Only the status (and, for a namespace's finalize, its spec) changes.
        let mut n = (*old).clone();
        let field = if t.subresource.as_deref() == Some("finalize") {
            "spec"
        } else {
            "status"
        };
        n[field] = obj[field].clone();
        n
    } else {
        if rt.status_subresource {
            match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        obj
    };
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match old_meta.get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    if rt.generation && new.get("spec") != old.get("spec") {
        new["metadata"]["generation"] = json!(old_meta["generation"].as_i64().unwrap_or(1) + 1);
    }
    new["metadata"]["resourceVersion"] = old_meta["resourceVersion"].clone();
    validate_or_422(rt, &new, Some(&old), status_only)?;
    normalize(rt, &mut new);
    prune_nulls(&mut new);

    let mut store = state.store.lock().unwrap();
    let key = key_of(t, name);
    let current = store.get(&key).ok_or_else(|| ApiError::not_found(rt, name))?;
    if current["metadata"]["resourceVersion"] != old_meta["resourceVersion"] {
        return Err(ApiError::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if new == *current {
        // A no-op write changes nothing: same resourceVersion, no event.
        return Ok(json_response(StatusCode::OK, &current));
    }
    let finalized = new["metadata"]["deletionTimestamp"].is_string()
        && new["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
    if finalized {
        store.put(key.clone(), new);
        let last = store.remove(&key).expect("just stored");
        collect_garbage(&mut store, &last, false);
        return Ok(json_response(StatusCode::OK, &last));
    }
    let stored = store.put(key, new);
    Ok(json_response(StatusCode::OK, &stored))
}

fn current(state: &Arc<State>, t: &Target) -> Result<Arc<Value>, ApiError> {
    let rt = &RESOURCES[t.resource];
    let name = t.name.as_deref().unwrap_or("");
    state
        .store
        .lock()
        .unwrap()
        .get(&key_of(t, name))
        .ok_or_else(|| ApiError::not_found(rt, name))
}

fn update(state: &Arc<State>, t: &Target, body: &Bytes) -> ApiResult {
    let obj = parse_body(body)?;
    let old = current(state, t)?;
    apply_update(state, t, obj, old)
}

/// Whether a strategic merge patch means the same as a JSON merge patch:
/// no `$` directives, and no list whose strategic merge keeps elements.
fn smp_is_merge_patch(rt: &ResourceType, patch: &Value) -> bool {
    fn has_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| k.starts_with('$') || has_directive(v)),
            Value::Array(a) => a.iter().any(has_directive),
            _ => false,
        }
    }
    fn has_list(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.values().any(has_list),
            Value::Array(_) => true,
            _ => false,
        }
    }
    let meta = &patch["metadata"];
    let merged_meta_lists = ["finalizers", "ownerReferences", "managedFields"]
        .iter()
        .any(|k| meta.get(k).is_some());
    // resource.k8s.io and coordination.k8s.io lists are all atomic.
    let atomic_lists = matches!(rt.group, "resource.k8s.io" | "coordination.k8s.io");
    let mut rest = patch.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("metadata");
    }
    !has_directive(patch) && !merged_meta_lists && (atomic_lists || !has_list(&rest))
}

fn patch(state: &Arc<State>, t: &Target, headers: &HeaderMap, body: &Bytes) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let old = current(state, t)?;
    let mut target = (*old).clone();
    match ctype.as_str() {
        "application/merge-patch+json" => json_patch::merge(&mut target, &parse_body(body)?),
        "application/strategic-merge-patch+json" => {
            let p = parse_body(body)?;
            if !smp_is_merge_patch(rt, &p) {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the test API server applies a strategic merge patch only where it means the same as a JSON merge patch (no $ directives, no merged lists): send application/merge-patch+json",
                ));
            }
            json_patch::merge(&mut target, &p)
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body of the request was in an unknown format: {e}")))?;
            json_patch::patch(&mut target, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "server-side apply is not supported by the test API server: use update or a JSON merge patch",
            ));
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                ),
            ));
        }
    }
    apply_update(state, t, target, old)
}

/// Deletes what `deleted` owned (background propagation), or, when
/// orphaning, removes the owner reference from its dependents.
fn collect_garbage(store: &mut super::store::Store, deleted: &Value, orphan: bool) {
    let Some(uid) = deleted["metadata"]["uid"].as_str().map(str::to_string) else {
        return;
    };
    let dependents: Vec<(Key, Arc<Value>)> = store
        .all()
        .filter(|(_, o)| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, obj) in dependents {
        if orphan {
            let mut o = (*obj).clone();
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid.as_str());
            }
            store.put(key, o);
        } else {
            delete_object(store, &key, &obj, false);
        }
    }
}

/// Deletes one object with the real server's rules: finalizers turn it into
/// a graceful delete; a namespace takes its contents with it.
fn delete_object(store: &mut super::store::Store, key: &Key, obj: &Value, orphan: bool) -> Arc<Value> {
    if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        if obj["metadata"]["deletionTimestamp"].is_string() {
            return store.get(key).expect("exists");
        }
        let mut o = obj.clone();
        o["metadata"]["deletionTimestamp"] = json!(time::now());
        o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        return store.put(key.clone(), o);
    }
    if RESOURCES[key.0].kind == "Namespace" {
        let contents: Vec<(Key, Arc<Value>)> = store
            .all()
            .filter(|((r, ns, _), _)| RESOURCES[*r].namespaced && *ns == key.2)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in contents {
            delete_object(store, &k, &v, false);
        }
    }
    let last = store.remove(key).expect("exists");
    collect_garbage(store, &last, orphan);
    last
}

struct DeleteOptions {
    uid: Option<String>,
    rv: Option<String>,
    orphan: bool,
}

fn delete_options(body: &Bytes) -> Result<DeleteOptions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions {
            uid: None,
            rv: None,
            orphan: false,
        });
    }
    let v = parse_body(body)?;
    if v.get("dryRun")
        .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_request("dryRun is not supported by the test API server"));
    }
    let policy = v["propagationPolicy"].as_str().unwrap_or("Background");
    if !matches!(policy, "Background" | "Foreground" | "Orphan") {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {policy:?}"
        )));
    }
    Ok(DeleteOptions {
        uid: v["preconditions"]["uid"].as_str().map(str::to_string),
        rv: v["preconditions"]["resourceVersion"].as_str().map(str::to_string),
        orphan: policy == "Orphan" || v["orphanDependents"] == true,
    })
}

fn delete(state: &Arc<State>, t: &Target, body: &Bytes) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let name = t.name.as_deref().unwrap_or("");
    let opts = delete_options(body)?;
    let mut store = state.store.lock().unwrap();
    let key = key_of(t, name);
    let obj = store.get(&key).ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(uid) = opts.uid.filter(|u| obj["metadata"]["uid"] != u.as_str()) {
        return Err(ApiError::conflict(
            rt,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                obj["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(rv) = opts.rv.filter(|r| obj["metadata"]["resourceVersion"] != r.as_str()) {
        return Err(ApiError::conflict(
            rt,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                obj["metadata"]["resourceVersion"].as_str().unwrap_or("")
            ),
        ));
    }
    let last = delete_object(&mut store, &key, &obj, opts.orphan);
    Ok(json_response(StatusCode::OK, &last))
}

fn delete_collection(state: &Arc<State>, t: &Target, q: &Query, body: &Bytes) -> ApiResult {
    let rt = &RESOURCES[t.resource];
    let sel = Selectors::parse(rt, q)?;
    let opts = delete_options(body)?;
    let mut store = state.store.lock().unwrap();
    let victims: Vec<Arc<Value>> = store
        .list(t.resource, t.namespace.as_deref())
        .into_iter()
        .filter(|o| sel.matches(o))
        .collect();
    let mut items = Vec::new();
    for obj in victims {
        let m = &obj["metadata"];
        let key = (
            t.resource,
            m["namespace"].as_str().unwrap_or("").to_string(),
            m["name"].as_str().unwrap_or("").to_string(),
        );
        if store.get(&key).is_some() {
            let mut last = (*delete_object(&mut store, &key, &obj, opts.orphan)).clone();
            if let Some(o) = last.as_object_mut() {
                o.remove("apiVersion");
                o.remove("kind");
            }
            items.push(last);
        }
    }
    let rv = store.rv();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

/// What the kubelet does at start-up: delete every ResourceSlice of its
/// node. Returns how many went.
pub fn wipe_node_slices(state: &Arc<State>, node: &str) -> usize {
    let slices = find("resource.k8s.io", "v1", "resourceslices").unwrap();
    let mut store = state.store.lock().unwrap();
    let victims: Vec<Arc<Value>> = store
        .list(slices, None)
        .into_iter()
        .filter(|s| s["spec"]["nodeName"] == node)
        .collect();
    for s in &victims {
        let key = (
            slices,
            String::new(),
            s["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        delete_object(&mut store, &key, s, false);
    }
    victims.len()
}

/// The namespaces every cluster starts with.
pub fn initial_namespaces(state: &Arc<State>) {
    let ns = find("", "v1", "namespaces").unwrap();
    let mut store = state.store.lock().unwrap();
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": time::now(),
                         "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        store.put((ns, String::new(), name.into()), obj);
    }
}
