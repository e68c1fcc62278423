//! A test Kubernetes API server, faithful to the real server's rules for
//! the objects mock-device uses, for tests and the demo (no kube-apiserver
//! can run on the build machines).
//!
//! Served over HTTP on loopback: `resource.k8s.io/v1` ResourceSlice,
//! ResourceClaim (with `status`), DeviceClass; `v1` Node, Namespace, Event;
//! `coordination.k8s.io/v1` Lease; and discovery. It keeps the real
//! server's rules: one increasing resourceVersion, 409 on a stale update,
//! `generateName`, uid and creationTimestamp, generation, owner references
//! and garbage collection, label and field selectors, list (with paging and
//! exact resourceVersions) and watch (bookmarks, `sendInitialEvents`, 410
//! after compaction), validation with 422 causes, and `metav1.Status`
//! errors. `kubectl get` gets the server-side table columns.
//!
//! Checked against the real kube-apiserver v1.37.2 by
//! `tests/tests/real_apiserver.rs` (the same requests to both: codes,
//! reasons, 422 field paths). Known differences from the real server:
//! - a delete with `propagationPolicy: Orphan` removes the object at once;
//!   the real server adds the `orphan` finalizer, which only the garbage
//!   collector (kube-controller-manager) removes, so without it the object
//!   stays (with a deletionTimestamp) for ever;
//! - no authentication, authorization or admission: every request is
//!   cluster-admin's.
//!
//! Tests steer it from Rust ([`ApiServer`]) or over HTTP (`/_mock/...`):
//! inject failures and latency, close watches, compact the history,
//! restart a kubelet (wipe a node's slices), count requests.

mod api;
pub mod quantity;
pub mod resources;
pub mod select;
pub mod store;
pub mod time;
pub mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State as AxumState};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

pub use api::{ApiError, SERVER_VERSION};

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (default 127.0.0.1, a free port).
    pub listen: SocketAddr,
    /// Period of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// A watch without `timeoutSeconds` ends after this.
    pub watch_timeout: Duration,
    /// Events kept for watches and past-state lists; older ones are gone (410).
    pub history_limit: usize,
    /// Events a watcher may fall behind before it is ended with 410.
    pub watch_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bookmark_interval: Duration::from_secs(5),
            watch_timeout: Duration::from_secs(1800),
            history_limit: 100_000,
            watch_buffer: 8192,
        }
    }
}

/// A failure to inject into the next matching requests.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// How many requests fail.
    pub count: usize,
    /// HTTP code: 500, 503, 429 (with Retry-After), 409, 504...; 0: the
    /// request is never answered (a hung connection: the client must time out).
    pub code: u16,
    /// Retry-After for 429 (default 1).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Only requests of this verb (get, list, watch, create, update, patch,
    /// delete, deletecollection).
    #[serde(default)]
    pub verb: Option<String>,
    /// Only requests of this resource (e.g. "resourceslices").
    #[serde(default)]
    pub resource: Option<String>,
}

impl Fault {
    pub fn server_errors(count: usize) -> Fault {
        Fault {
            count,
            code: 500,
            retry_after_seconds: None,
            verb: None,
            resource: None,
        }
    }

    pub fn too_many_requests(count: usize, retry_after_seconds: u64) -> Fault {
        Fault {
            code: 429,
            retry_after_seconds: Some(retry_after_seconds),
            ..Fault::server_errors(count)
        }
    }

    /// Requests that hang: never answered.
    pub fn hang(count: usize) -> Fault {
        Fault {
            code: 0,
            ..Fault::server_errors(count)
        }
    }

    pub fn only(mut self, verb: Option<&str>, resource: Option<&str>) -> Fault {
        self.verb = verb.map(str::to_string);
        self.resource = resource.map(str::to_string);
        self
    }

    fn error(&self) -> ApiError {
        let mut e = match self.code {
            429 => ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later. (injected fault)",
            ),
            500 => ApiError::new(500, "InternalError", "Internal error occurred: injected fault"),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "The server is currently unable to handle the request (injected fault)",
            ),
            504 => ApiError::new(
                504,
                "Timeout",
                "The server was unable to return a response in the time allotted (injected fault)",
            ),
            409 => ApiError::new(409, "Conflict", "Operation cannot be fulfilled: injected conflict"),
            code => ApiError::new(code, "InternalError", format!("injected fault {code}")),
        };
        if self.code == 429 {
            let secs = self.retry_after_seconds.unwrap_or(1);
            e.retry_after = Some(secs);
        }
        e
    }
}

#[derive(Default)]
struct Faults {
    queue: Vec<Fault>,
    latency: Duration,
}

pub(crate) struct State {
    store: Mutex<store::Store>,
    config: Config,
    close_watches: tokio::sync::watch::Sender<u64>,
    faults: Mutex<Faults>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl State {
    fn take_fault(&self, verb: &str, resource: &str) -> Option<ApiError> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.queue.iter().position(|f| {
            f.count > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
        })?;
        let f = &mut faults.queue[i];
        f.count -= 1;
        let err = f.error();
        faults.queue.retain(|f| f.count > 0);
        Some(err)
    }
}

/// A running server. Dropping it stops it.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on its own runtime thread.
    pub fn start(config: Config) -> std::io::Result<ApiServer> {
        let (close_watches, _) = tokio::sync::watch::channel(0);
        let state = Arc::new(State {
            store: Mutex::new(store::Store::new(config.history_limit, config.watch_buffer)),
            config: config.clone(),
            close_watches,
            faults: Mutex::new(Faults::default()),
            counts: Mutex::new(BTreeMap::new()),
        });
        api::initial_namespaces(&state);

        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let app = Router::new().fallback(entry).with_state(state.clone());
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let mut graceful = stop.clone();
                    let mut stopped = stop;
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|s| *s).await;
                    });
                    // Graceful, but bounded: a client may keep a connection
                    // busy past the stop (a watch it opened again after
                    // close_watches, while the server was being dropped),
                    // and a graceful shutdown waits for it for ever: the
                    // runtime's shutdown drops it 2 s after the stop.
                    tokio::select! {
                        _ = serve => {}
                        _ = async {
                            let _ = stopped.wait_for(|s| *s).await;
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        } => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(ApiServer {
            addr,
            state,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for kubectl and kube-rs (no credentials, plain HTTP).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Makes the next matching requests fail.
    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().queue.push(fault);
    }

    /// Drops the injected faults that have not fired.
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().queue.clear();
    }

    /// Delays every request by `latency` (zero to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.state.faults.lock().unwrap().latency = latency;
    }

    /// Ends every open watch, as an API server restart would.
    pub fn close_watches(&self) {
        self.state.close_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the event history: lists and watches from older
    /// resourceVersions get 410 Gone.
    pub fn compact(&self) {
        self.state.store.lock().unwrap().compact();
    }

    /// What a kubelet does when it starts: deletes every ResourceSlice of
    /// its node. Returns how many it deleted.
    pub fn restart_kubelet(&self, node: &str) -> usize {
        api::wipe_node_slices(&self.state, node)
    }

    /// Requests served so far, by "verb resource" (e.g. "list resourceslices").
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().unwrap().clone()
    }

    /// Requests of one verb and resource so far.
    pub fn requests(&self, verb: &str, resource: &str) -> u64 {
        self.request_counts()
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0)
    }

    /// Write requests (create, update, patch, delete, deletecollection) so far.
    pub fn writes(&self) -> u64 {
        self.request_counts()
            .iter()
            .filter(|(k, _)| {
                ["create ", "update ", "patch ", "delete"]
                    .iter()
                    .any(|v| k.starts_with(v))
            })
            .map(|(_, n)| n)
            .sum()
    }

    pub fn reset_counts(&self) {
        self.state.counts.lock().unwrap().clear();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().unwrap().rv()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.close_watches();
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {server}\n\
         contexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\ncurrent-context: mock\n\
         users:\n- name: mock\n  user: {{}}\n"
    )
}

async fn entry(AxumState(state): AxumState<Arc<State>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = api::parse_query(parts.uri.query());
    let body = match axum::body::to_bytes(body, 3 * 1024 * 1024 + 1).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            )
            .into_response();
        }
    };
    if let Some(control) = path.strip_prefix("/_mock/") {
        return control_request(&state, &parts.method, control, &query, &body);
    }
    let (verb, resource) = api::verb_and_resource(&parts.method, &path, &query);
    *state
        .counts
        .lock()
        .unwrap()
        .entry(format!("{verb} {resource}"))
        .or_default() += 1;
    let latency = state.faults.lock().unwrap().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(err) = state.take_fault(&verb, &resource) {
        if err.code == 0 {
            // Hung: held until the client gives up (or the server stops).
            std::future::pending::<()>().await;
        }
        return err.into_response();
    }
    api::handle(state, parts.method, path, query, parts.headers, body).await
}

/// `/_mock/...`: the test controls, for processes that only have the URL.
fn control_request(state: &Arc<State>, method: &Method, path: &str, query: &api::Query, body: &Bytes) -> Response {
    let ok = |v: serde_json::Value| (StatusCode::OK, axum::Json(v)).into_response();
    let bad = |m: String| ApiError::bad_request(m).into_response();
    match (method.as_str(), path) {
        ("POST", "faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => {
                state.faults.lock().unwrap().queue.push(f);
                ok(json!({}))
            }
            Err(e) => bad(format!(
                "a fault is {{count, code, retryAfterSeconds?, verb?, resource?}}: {e}"
            )),
        },
        ("DELETE", "faults") => {
            state.faults.lock().unwrap().queue.clear();
            ok(json!({}))
        }
        ("POST", "latency") => match serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["ms"].as_u64())
        {
            Some(ms) => {
                state.faults.lock().unwrap().latency = Duration::from_millis(ms);
                ok(json!({}))
            }
            None => bad("latency is {\"ms\": N}".into()),
        },
        ("POST", "close-watches") => {
            state.close_watches.send_modify(|n| *n += 1);
            ok(json!({}))
        }
        ("POST", "compact") => {
            state.store.lock().unwrap().compact();
            ok(json!({}))
        }
        ("POST", "kubelet-restart") => match query.get("node") {
            Some(node) => ok(json!({"deleted": api::wipe_node_slices(state, node)})),
            None => bad("kubelet-restart needs ?node=NAME".into()),
        },
        ("GET", "requests") => ok(json!(*state.counts.lock().unwrap())),
        ("DELETE", "requests") => {
            state.counts.lock().unwrap().clear();
            ok(json!({}))
        }
        _ => ApiError::new(404, "NotFound", format!("no test control {method} /_mock/{path}")).into_response(),
    }
}
