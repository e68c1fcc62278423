//! Runs inside the guest for the scenarios:
//!
//! - `guest-tool uevents [--subsystem S]... [--module M]... [--ready FILE]`
//!   prints every kernel uevent (netlink group 1) of those subsystems and
//!   modules, one per line: `ACTION DEVPATH KEY=VALUE...` (keys sorted;
//!   the agent's crates: netlink-sys, kobject-uevent). It creates FILE
//!   once it listens; on SIGTERM it prints what is queued, then exits.
//! - `guest-tool write FILE VALUE` does one write(2) of VALUE to FILE and
//!   prints `ok` or the errno name (EINVAL, ERANGE, ...), as sysfs returns it.
//! - `guest-tool http METHOD URL [BODY]` prints the status and body of one
//!   plain-HTTP request (the test API server, the agent's admin port) made
//!   with hyper's client, the one kube builds on.
//! - `guest-tool wait-devices --api URL --node N --count C [--write F V]`
//!   does the write (if any), then watches the API until this node's pool is
//!   consistent and holds C devices, and prints the milliseconds it took.
//! - `guest-tool api-writes --count N` makes N writes (a ConfigMap replaced;
//!   with `--slice-like NAME...`, a copy of each of those ResourceSlices, a
//!   device or counter set more every other round) with the agent's kind of client (kube-rs,
//!   `KUBECONFIG`) and prints the p50 and p99 milliseconds each took: the
//!   bare cost of one API write.
//! - `guest-tool kubelet register|prepare|unprepare|health` plays the
//!   kubelet towards the agent's plugin sockets (see `kubelet` below).
//! - `guest-tool dashboards --node N` runs every query of the Grafana
//!   dashboards against Prometheus, as Grafana would with node N selected,
//!   and prints each with its series count or why it has no data;
//!   `guest-tool promql QUERY` prints an instant query's series, one per
//!   line: `{label="value",...} VALUE`.
//! - `guest-tool requests FILE [--verbs V,V] [--resource R]` sums the
//!   test API server's request counts (`/_mock/requests`) that match.
//! - `guest-tool node-secrets` makes the node's certificates, kubeconfigs
//!   and machine ID and writes them in place (node.sh's `node_up`).

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Parser)]
#[command(about = "In-guest helper for the mock-device scenarios")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print kernel uevents, one per line.
    Uevents {
        /// Keep events of this SUBSYSTEM (repeatable; none keeps all).
        #[arg(long)]
        subsystem: Vec<String>,
        /// Keep load/unload events of this module (repeatable).
        #[arg(long)]
        module: Vec<String>,
        /// Create this file once the socket listens.
        #[arg(long)]
        ready: Option<String>,
    },
    /// One plain-HTTP request; prints "STATUS\nBODY", exits 0 on 2xx.
    Http {
        method: String,
        url: String,
        body: Option<String>,
    },
    /// Optionally write FILE VALUE, then wait until NODE's pool holds COUNT
    /// devices; print the milliseconds taken.
    WaitDevices {
        #[arg(long, default_value = "http://127.0.0.1:6443")]
        api: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        count: usize,
        #[arg(long, num_args = 2, value_names = ["FILE", "VALUE"], allow_hyphen_values = true)]
        write: Option<Vec<String>>,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print NODE's ResourceSlices as a table (what the cluster sees).
    Slices {
        #[arg(long, default_value = "http://127.0.0.1:6443")]
        api: String,
        #[arg(long)]
        node: String,
    },
    /// Play the kubelet: register the plugin found in the registry
    /// directory, then one call.
    Kubelet {
        #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
        registry: std::path::PathBuf,
        /// DRA API version: v1 or v1beta1.
        #[arg(long, default_value = "v1")]
        api: String,
        #[command(subcommand)]
        call: KubeletCall,
    },
    /// N ConfigMap writes with kube-rs (KUBECONFIG): print "P50_MS P99_MS".
    ApiWrites {
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Replace a copy of each of these ResourceSlices instead, in this
        /// order (a pool and node `mock-bench-writes`), one device
        /// or counter set more every other round: the agent's own writes;
        /// a round is one sample.
        #[arg(long, num_args = 1..)]
        slice_like: Vec<String>,
    },
    /// Every dashboard query against Prometheus; exit 1 unless each
    /// returns data and the `node` variable offers exactly NODE.
    Dashboards {
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        prometheus: String,
        #[arg(long, default_value = "/guest/dashboards")]
        dir: std::path::PathBuf,
        #[arg(long)]
        node: String,
        /// What Grafana's `$__rate_interval` becomes.
        #[arg(long, default_value = "1m")]
        rate_interval: String,
    },
    /// One instant query; print its series, `{labels} VALUE` per line.
    Promql {
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        prometheus: String,
        query: String,
    },
    /// Create a ResourceClaim in NAMESPACE with one request per DEVICE
    /// (class CLASS) and allocate it to NODE's pool, as the scheduler
    /// would; print "NAMESPACE/NAME/UID" (what `kubelet prepare` takes).
    Claim {
        #[arg(long, default_value = "http://127.0.0.1:6443")]
        api: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "mock-accel-pf")]
        class: String,
        #[arg(long, default_value = "mock-accel.example.com")]
        driver: String,
        name: String,
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Make the node's keys, certificates, kubeconfigs and machine ID
    /// (`mock_device_testkit::node::secrets`) and write them where the
    /// node's components read them.
    NodeSecrets,
    /// Sum the counts in the test API server's `/_mock/requests` answer
    /// (JSON: "VERB RESOURCE" -> count) saved in FILE (- for stdin) that
    /// match the verbs and the resource; print the sum.
    Requests {
        file: String,
        /// Verbs to count, comma-separated (all when absent).
        #[arg(long, value_delimiter = ',')]
        verbs: Vec<String>,
        /// Count only this resource (e.g. resourceslices).
        #[arg(long)]
        resource: Option<String>,
    },
    /// Write VALUE to FILE in one write(2); print "ok" or the errno name.
    Write {
        file: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

#[derive(Subcommand)]
enum KubeletCall {
    /// Register; print "registered NAME ENDPOINT VERSIONS".
    Register,
    /// NodePrepareResources for NS/NAME/UID claims; print per claim
    /// "UID ok DEVICE=CDI_ID..." or "UID error: MESSAGE". Exit 1 on any error.
    Prepare { claims: Vec<String> },
    /// NodeUnprepareResources; print "UID ok" or "UID error: MESSAGE".
    Unprepare { claims: Vec<String> },
    /// Print the first COUNT health messages: "DEVICE HEALTH MESSAGE" lines,
    /// each message ended by "--". Creates READY once the stream is open.
    Health {
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        ready: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Uevents {
            subsystem,
            module,
            ready,
        } => uevents(&subsystem, &module, ready.as_deref()).await,
        Cmd::Http { method, url, body } => {
            let (code, text) = http(&method, &url, body.as_deref().unwrap_or("")).await?;
            // A reader that stops early (| head) is not an error.
            let _ = writeln!(std::io::stdout(), "{code}\n{text}");
            std::process::exit(if (200..300).contains(&code) { 0 } else { 1 });
        }
        Cmd::Slices { api, node } => print_slices(&api, &node).await,
        Cmd::WaitDevices {
            api,
            node,
            count,
            write,
            timeout,
        } => {
            let ms = wait_devices(&api, &node, count, write.as_deref(), Duration::from_secs(timeout)).await?;
            println!("{ms:.1}");
            Ok(())
        }
        Cmd::Kubelet { registry, api, call } => {
            let ok = kubelet(&registry, &api, call).await?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Cmd::ApiWrites { count, slice_like } => {
            let (p50, p99) = if slice_like.is_empty() {
                api_writes(count).await?
            } else {
                slice_writes(count, &slice_like).await?
            };
            println!("{p50:.2} {p99:.2}");
            Ok(())
        }
        Cmd::Dashboards {
            prometheus,
            dir,
            node,
            rate_interval,
        } => {
            let ok = dashboards(&prometheus, &dir, &node, &rate_interval).await?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        Cmd::NodeSecrets => {
            for (path, text) in mock_device_testkit::node::secrets() {
                let path = std::path::Path::new(&path);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Cmd::Promql { prometheus, query } => {
            let v = prometheus_get(&prometheus, "/api/v1/query", &[("query", &query)]).await?;
            anyhow::ensure!(v["status"] == "success", "{query}: {v}");
            for r in v["data"]["result"].as_array().into_iter().flatten() {
                let labels: Vec<String> = r["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!("{{{}}} {}", labels.join(","), r["value"][1].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Cmd::Claim {
            api,
            node,
            namespace,
            class,
            driver,
            name,
            devices,
        } => {
            let uid = create_allocated_claim(&api, &node, &namespace, &class, &driver, &name, &devices).await?;
            println!("{namespace}/{name}/{uid}");
            Ok(())
        }
        Cmd::Requests { file, verbs, resource } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let counts: std::collections::BTreeMap<String, u64> =
                serde_json::from_str(text.trim()).with_context(|| format!("{file}: not a request count: {text}"))?;
            println!("{}", count_requests(&counts, &verbs, resource.as_deref()));
            Ok(())
        }
        Cmd::Write { file, value } => {
            let result = write_once(&file, value.as_bytes());
            println!("{}", result.as_ref().err().map_or("ok", String::as_str));
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}

/// The bare cost of one API write as a kube-rs client sees it: `count`
/// replaces of one ConfigMap (after one warm-up write), each timed.
async fn api_writes(count: usize) -> anyhow::Result<(f64, f64)> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    anyhow::ensure!(count > 0, "--count must be at least 1");
    let client = kube::Client::try_default().await.context("KUBECONFIG")?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mock-bench-writes"}, "data": {"n": "0"}
    }))?;
    cm = match api.create(&pp, &cm).await {
        Ok(c) => c,
        Err(_) => api.get("mock-bench-writes").await?,
    };
    let mut took = Vec::with_capacity(count);
    for i in 0..=count {
        cm.data = Some([("n".to_string(), i.to_string())].into());
        let t = Instant::now();
        cm = api.replace("mock-bench-writes", &pp, &cm).await?;
        if i > 0 {
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(p50_p99(took))
}

/// `count` rounds of replaces of a copy of each ResourceSlice of `like`
/// (its spec, in a pool of its own on a node of its own), in that order, each alternately with
/// one entry more (a copy of its last device or counter set, renamed) and
/// without: the writes the agent makes for a hot-plug (with shared
/// counters, the counter sets' slice, then the devices'). The time of a
/// round is one sample.
async fn slice_writes(count: usize, like: &[String]) -> anyhow::Result<(f64, f64)> {
    use k8s_openapi::api::resource::v1::{CounterSet, Device, ResourceSlice, ResourceSliceSpec};
    use kube::api::{Api, DeleteParams, PostParams};
    anyhow::ensure!(count > 0, "--count must be at least 1");
    let client = kube::Client::try_default().await.context("KUBECONFIG")?;
    let api: Api<ResourceSlice> = Api::all(client);
    let pp = PostParams::default();
    // (name, spec without, spec with one entry more)
    let mut copies: Vec<(String, ResourceSliceSpec, ResourceSliceSpec)> = Vec::new();
    for (i, source) in like.iter().enumerate() {
        let name = format!("mock-bench-writes-{i}");
        let mut spec = api
            .get(source)
            .await
            .with_context(|| format!("ResourceSlice {source}"))?
            .spec;
        spec.pool.name = "mock-bench-writes".into();
        // On no real node: the agent owns every slice of its driver on its
        // node, and would delete these copies as stale (which it did to
        // this benchmark's first version, inflating both its figures).
        if spec.node_name.is_some() {
            spec.node_name = Some("mock-bench-writes".into());
        }
        spec.pool.generation = 1;
        spec.pool.resource_slice_count = like.len() as i64;
        let mut more = spec.clone();
        if let Some(last) = spec.devices.as_ref().and_then(|d| d.last()) {
            let extra = Device {
                name: "bench-extra".into(),
                ..last.clone()
            };
            more.devices.get_or_insert_with(Vec::new).push(extra);
        } else if let Some(last) = spec.shared_counters.as_ref().and_then(|c| c.last()) {
            let extra = CounterSet {
                name: "bench-extra".into(),
                ..last.clone()
            };
            more.shared_counters.get_or_insert_with(Vec::new).push(extra);
        } else {
            bail!("ResourceSlice {source} has neither devices nor counter sets to copy");
        }
        let _ = api.delete(&name, &DeleteParams::default()).await;
        copies.push((name, spec, more));
    }
    let mut stored = Vec::new();
    for (name, spec, _) in &copies {
        let slice = ResourceSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: spec.clone(),
        };
        stored.push(api.create(&pp, &slice).await.context("creating the copy")?);
    }
    let mut took = Vec::with_capacity(count);
    for i in 0..=count {
        let t = Instant::now();
        for ((name, without, with), slice) in copies.iter().zip(stored.iter_mut()) {
            slice.spec = if i % 2 == 0 { with.clone() } else { without.clone() };
            *slice = api.replace(name, &pp, slice).await?;
        }
        if i > 0 {
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for (name, _, _) in &copies {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(p50_p99(took))
}

/// The p50 and p99 (nearest rank) of samples (at least one).
fn p50_p99(mut took: Vec<f64>) -> (f64, f64) {
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    (at(0.50), at(0.99))
}

/// The sum of the counts whose key "VERB RESOURCE" has one of VERBS (any
/// if empty) and RESOURCE (any if none).
fn count_requests(counts: &std::collections::BTreeMap<String, u64>, verbs: &[String], resource: Option<&str>) -> u64 {
    counts
        .iter()
        .filter(|(key, _)| {
            let (verb, res) = key.split_once(' ').unwrap_or((key.as_str(), ""));
            (verbs.is_empty() || verbs.iter().any(|v| v == verb)) && resource.is_none_or(|r| r == res)
        })
        .map(|(_, n)| n)
        .sum()
}

/// One write(2) (`File::write` is one call, not a loop) of VALUE to FILE.
fn write_once(file: &str, value: &[u8]) -> Result<(), String> {
    let name = |e: std::io::Error| errno_name(e.raw_os_error().unwrap_or(0));
    let mut f = std::fs::OpenOptions::new().write(true).open(file).map_err(name)?;
    f.write(value).map(drop).map_err(name)
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOLINK => "ENOLINK",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// The kernel's uevents (netlink group 1), with the socket and parser
/// crates the agent uses, one line each until SIGTERM or SIGINT; then what
/// the kernel had queued, so a stop loses nothing already sent.
async fn uevents(subsystems: &[String], modules: &[String], ready: Option<&str>) -> anyhow::Result<()> {
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_KOBJECT_UEVENT};
    use std::os::fd::AsRawFd;
    use tokio::signal::unix::{SignalKind, signal};

    let mut socket = TokioSocket::new(NETLINK_KOBJECT_UEVENT).context("netlink socket")?;
    // 8 MiB, above rmem_max (netlink-sys offers only SO_RCVBUF, which the
    // kernel caps): the scenarios run as root and must see every event.
    let size: libc::c_int = 8 << 20;
    // SAFETY: a valid descriptor and an int option of the right size.
    let set = unsafe {
        libc::setsockopt(
            socket.socket_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if set < 0 {
        bail!("SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, 1))
        .context("netlink bind")?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Some(path) = ready {
        std::fs::write(path, b"").with_context(|| format!("creating {path}"))?;
    }

    let mut out = std::io::stdout().lock();
    // Prints one receive's event; false once the queue is empty.
    let mut print = |received: std::io::Result<(Vec<u8>, SocketAddr)>| -> anyhow::Result<bool> {
        match received {
            Ok((packet, _)) => {
                if let Some(line) = format_event(&packet, subsystems, modules) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => writeln!(out, "ENOBUFS events were lost")?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => bail!("netlink recv: {e}"),
        }
        Ok(true)
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = socket.recv_from_full() => { print(r)?; }
        }
    }
    // The socket is non-blocking: this ends once the queue is empty.
    while print(socket.socket_ref().recv_from_full())? {}
    Ok(())
}

/// `ACTION DEVPATH KEY=VALUE...` (keys sorted) if the event passes the
/// filters; `None` for another subsystem or a packet that is no uevent.
fn format_event(packet: &[u8], subsystems: &[String], modules: &[String]) -> Option<String> {
    let ev = kobject_uevent::UEvent::from_netlink_packet(packet).ok()?;
    let devpath = ev.devpath.to_string_lossy();
    let keep = if ev.subsystem == "module" {
        modules.iter().any(|m| devpath == format!("/module/{m}"))
    } else {
        subsystems.is_empty() || subsystems.contains(&ev.subsystem)
    };
    keep.then(|| {
        let mut props: Vec<String> = ev
            .env
            .iter()
            .filter(|(k, _)| *k != "ACTION" && *k != "DEVPATH")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        props.sort();
        let action = ev.env.get("ACTION").map_or("?", String::as_str);
        format!("{action} {devpath} {}", props.join(" "))
    })
}

/// The plain-HTTP client of every request here (the test API server, the
/// agent's admin port, Prometheus): hyper's, which kube builds on.
fn client() -> &'static Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
}

/// Sends one request; the response's body is still to be read.
async fn send(method: &str, url: &str, content_type: &str, body: &str) -> anyhow::Result<Response<Incoming>> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .with_context(|| format!("{method} {url}"))?;
    client()
        .request(request)
        .await
        .with_context(|| format!("{method} {url}"))
}

/// One request with a JSON body (or none); its status and whole body.
async fn http(method: &str, url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_typed(method, url, "application/json", body).await
}

async fn http_typed(method: &str, url: &str, content_type: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let response = send(method, url, content_type, body).await?;
    let code = response.status().as_u16();
    let text = response.into_body().collect().await?.to_bytes();
    Ok((code, String::from_utf8_lossy(&text).into_owned()))
}

/// One instant query or API GET against Prometheus, as JSON.
async fn prometheus_get(prometheus: &str, path: &str, params: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let (code, text) = http("GET", &format!("{prometheus}{path}?{query}"), "").await?;
    serde_json::from_str(&text).with_context(|| format!("{code} {text}"))
}

/// Runs every dashboard query as Grafana would with NODE selected; prints a
/// line per query; true if each returned data.
async fn dashboards(prometheus: &str, dir: &std::path::Path, node: &str, rate_interval: &str) -> anyhow::Result<bool> {
    use mock_device_testkit::dashboards;
    let mut ok = true;
    // The node variable: `label_values(mock_accel_agent_info, node)`.
    let values = prometheus_get(
        prometheus,
        "/api/v1/label/node/values",
        &[("match[]", "mock_accel_agent_info")],
    )
    .await?;
    if values["data"] != serde_json::json!([node]) {
        println!("FAILED the node variable offers {} (want [{node:?}])", values["data"]);
        ok = false;
    }
    let queries = dashboards::queries(dir).map_err(anyhow::Error::msg)?;
    let mut with_data = 0;
    for q in &queries {
        let promql = q.promql(rate_interval, node);
        match dashboards::judge(&prometheus_get(prometheus, "/api/v1/query", &[("query", &promql)]).await?) {
            Ok(n) => {
                with_data += 1;
                println!("ok {n} series: {} / {}: {promql}", q.file, q.title);
            }
            Err(why) => {
                ok = false;
                println!("FAILED {} / {}: {why}: {promql}", q.file, q.title);
            }
        }
    }
    println!("{with_data} of {} dashboard queries returned data", queries.len());
    Ok(ok)
}

/// The ResourceSliceList of NODE's slices.
async fn node_slices(api: &str, node: &str) -> anyhow::Result<serde_json::Value> {
    let (code, text) = http(
        "GET",
        &format!("{api}/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3D{node}"),
        "",
    )
    .await?;
    anyhow::ensure!(code == 200, "listing slices: {code} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Devices in NODE's pool if it is consistent (every slice of the newest
/// generation, as many as the pool says), with the list's resourceVersion.
async fn pool_devices(api: &str, node: &str) -> anyhow::Result<(Option<usize>, String)> {
    let list = node_slices(api, node).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let generation = items
        .iter()
        .filter_map(|s| s["spec"]["pool"]["generation"].as_i64())
        .max();
    let consistent = items.iter().all(|s| {
        s["spec"]["pool"]["generation"].as_i64() == generation
            && s["spec"]["pool"]["resourceSliceCount"].as_u64() == Some(items.len() as u64)
    });
    let devices = items
        .iter()
        .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
        .sum();
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    Ok((consistent.then_some(devices), rv))
}

async fn wait_devices(
    api: &str,
    node: &str,
    count: usize,
    write: Option<&[String]>,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    if let Some([file, value]) = write
        && let Err(e) = write_once(file, value.as_bytes())
    {
        anyhow::bail!("writing {value:?} to {file}: {e}");
    }
    loop {
        let (devices, rv) = pool_devices(api, node).await?;
        if devices == Some(count) {
            return Ok(start.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {node}'s pool holds {devices:?} devices, not {count}"
        );
        // Wait for the next change to our node's slices, then look again.
        let left = timeout.saturating_sub(start.elapsed()).as_secs().max(1);
        let watch = send(
            "GET",
            &format!(
                "{api}/apis/resource.k8s.io/v1/resourceslices?watch=1&resourceVersion={rv}&timeoutSeconds={left}&fieldSelector=spec.nodeName%3D{node}"
            ),
            "application/json",
            "",
        )
        .await?;
        anyhow::ensure!(watch.status() == 200, "watch: HTTP {}", watch.status());
        // The first event (or the watch's end at its timeout).
        let _ = watch.into_body().frame().await.transpose()?;
    }
}

async fn print_slices(api: &str, node: &str) -> anyhow::Result<()> {
    let list = node_slices(api, node).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if items.is_empty() {
        writeln!(out, "  (no ResourceSlices for node {node})")?;
    }
    for s in items {
        let pool = &s["spec"]["pool"];
        writeln!(
            out,
            "  ResourceSlice {}  pool {} generation {} ({} slice(s)), driver {}",
            s["metadata"]["name"].as_str().unwrap_or(""),
            pool["name"].as_str().unwrap_or(""),
            pool["generation"],
            pool["resourceSliceCount"],
            s["spec"]["driver"].as_str().unwrap_or("")
        )?;
        // A slice of counter sets (PF/VF exclusion) holds no devices.
        if let Some(sets) = s["spec"]["sharedCounters"].as_array() {
            let sets: Vec<String> = sets
                .iter()
                .map(|c| {
                    format!(
                        "{} (memory {})",
                        c["name"].as_str().unwrap_or(""),
                        c["counters"]["memory"]["value"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            writeln!(out, "    counter sets: {}", sets.join(", "))?;
            continue;
        }
        writeln!(
            out,
            "    {:<11} {:<4} {:<13} {:<4} {:<7} {:<6} {:<10} UUID",
            "DEVICE", "TYPE", "PCI", "NUMA", "MEMORY", "PHYSFN", "PCIE-ROOT"
        )?;
        for d in s["spec"]["devices"].as_array().into_iter().flatten() {
            let a = &d["attributes"];
            let text = |k: &str| a[k]["string"].as_str().unwrap_or("-").to_string();
            writeln!(
                out,
                "    {:<11} {:<4} {:<13} {:<4} {:<7} {:<6} {:<10} {}",
                d["name"].as_str().unwrap_or(""),
                text("deviceType"),
                text("pciAddress"),
                a["numaNode"]["int"].to_string(),
                d["capacity"]["memory"]["value"].as_str().unwrap_or("-"),
                text("physfn"),
                text("resource.kubernetes.io/pcieRoot"),
                text("uuid")
            )?;
        }
    }
    Ok(())
}

/// One kubelet call; `Ok(false)` when a claim failed.
async fn kubelet(registry: &std::path::Path, api: &str, call: KubeletCall) -> anyhow::Result<bool> {
    use mock_device_testkit::kubelet::{self as k, Api, Claim, Kubelet};
    let api = match api {
        "v1" => Api::V1,
        "v1beta1" => Api::V1beta1,
        other => bail!("--api {other}: use v1 or v1beta1"),
    };
    let sockets = k::registration_sockets(registry).with_context(|| format!("reading {}", registry.display()))?;
    let socket = sockets
        .first()
        .with_context(|| format!("no registration socket in {}", registry.display()))?;
    let kubelet = Kubelet::register(socket).await?;
    let claims = |list: &[String]| -> anyhow::Result<Vec<Claim>> {
        list.iter()
            .map(|c| match c.split('/').collect::<Vec<_>>()[..] {
                [ns, name, uid] => Ok(Claim::new(ns, name, uid)),
                _ => bail!("{c:?}: want NAMESPACE/NAME/UID"),
            })
            .collect()
    };
    match call {
        KubeletCall::Register => {
            let i = &kubelet.info;
            println!(
                "registered {} {} {}",
                i.name,
                i.endpoint,
                i.supported_versions.join(",")
            );
            Ok(true)
        }
        KubeletCall::Prepare { claims: list } => {
            let out = kubelet.prepare(api, &claims(&list)?).await?;
            let mut ok = true;
            for (uid, r) in out {
                match r {
                    Ok(devices) => {
                        let d: Vec<String> = devices
                            .iter()
                            .map(|d| format!("{}={}", d.device, d.cdi_ids.join(",")))
                            .collect();
                        println!("{uid} ok {}", d.join(" "));
                    }
                    Err(e) => {
                        ok = false;
                        println!("{uid} error: {e}");
                    }
                }
            }
            Ok(ok)
        }
        KubeletCall::Unprepare { claims: list } => {
            let out = kubelet.unprepare(api, &claims(&list)?).await?;
            let mut ok = true;
            for (uid, r) in out {
                match r {
                    Ok(()) => println!("{uid} ok"),
                    Err(e) => {
                        ok = false;
                        println!("{uid} error: {e}");
                    }
                }
            }
            Ok(ok)
        }
        KubeletCall::Health { count, ready } => {
            use mock_accel_proto::health::v1::HealthStatus;
            let mut stream = kubelet.watch_health().await?;
            if let Some(r) = ready {
                std::fs::write(r, "")?;
            }
            for _ in 0..count {
                let Some(msg) = stream.message().await? else {
                    bail!("the health stream ended");
                };
                let mut out = std::io::stdout().lock();
                for d in msg.devices {
                    let name = d.device.map(|i| i.device_name).unwrap_or_default();
                    let health = HealthStatus::try_from(d.health).map_or("INVALID", |h| h.as_str_name());
                    writeln!(out, "{name} {health} {}", d.message)?;
                }
                writeln!(out, "--")?;
                out.flush()?;
            }
            Ok(true)
        }
    }
}

/// The claim created, then allocated by a merge patch of its status (what
/// the scheduler writes); returns its UID.
async fn create_allocated_claim(
    api: &str,
    node: &str,
    namespace: &str,
    class: &str,
    driver: &str,
    name: &str,
    devices: &[String],
) -> anyhow::Result<String> {
    let requests: Vec<_> = (0..devices.len())
        .map(|i| serde_json::json!({"name": format!("r{i}"), "exactly": {"deviceClassName": class}}))
        .collect();
    let results: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({"request": format!("r{i}"), "driver": driver, "pool": node, "device": d}))
        .collect();
    let claim = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": requests}},
    });
    let base = format!("{api}/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims");
    let (code, text) = http("POST", &base, &claim.to_string()).await?;
    anyhow::ensure!(code == 201, "creating claim {namespace}/{name}: {code} {text}");
    let created: serde_json::Value = serde_json::from_str(&text)?;
    let uid = created["metadata"]["uid"]
        .as_str()
        .context("the created claim has no UID")?
        .to_string();
    let patch = serde_json::json!({"status": {"allocation": {"devices": {"results": results}}}});
    let (code, text) = http_typed(
        "PATCH",
        &format!("{base}/{name}/status"),
        "application/merge-patch+json",
        &patch.to_string(),
    )
    .await?;
    anyhow::ensure!(code == 200, "allocating claim {namespace}/{name}: {code} {text}");
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uevent_prints_action_devpath_and_sorted_keys_when_it_passes_the_filters() {
        let packet = b"change@/devices/mock-accel/0000:00:01.0/mock-accel/mock1\0ACTION=change\0\
DEVPATH=/devices/mock-accel/0000:00:01.0/mock-accel/mock1\0SUBSYSTEM=mock-accel\0\
MOCK_ACCEL_EVENT=health\0SEQNUM=42\0MOCK_ACCEL_HEALTH=failed\0";
        let keep = |s: &[&str], m: &[&str]| {
            let own = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            format_event(packet, &own(s), &own(m))
        };
        assert_eq!(
            keep(&["mock-accel"], &[]).as_deref(),
            Some(
                "change /devices/mock-accel/0000:00:01.0/mock-accel/mock1 MOCK_ACCEL_EVENT=health \
MOCK_ACCEL_HEALTH=failed SEQNUM=42 SUBSYSTEM=mock-accel"
            )
        );
        assert!(keep(&[], &[]).is_some(), "no subsystem filter keeps everything");
        assert_eq!(keep(&["mem"], &[]), None);
        assert_eq!(format_event(b"not a uevent", &[], &[]), None);

        let module = b"add@/module/mock_accel\0ACTION=add\0DEVPATH=/module/mock_accel\0SUBSYSTEM=module\0SEQNUM=7\0";
        assert_eq!(
            format_event(module, &["mock-accel".into()], &["mock_accel".into()]).as_deref(),
            Some("add /module/mock_accel SEQNUM=7 SUBSYSTEM=module")
        );
        assert_eq!(format_event(module, &["mock-accel".into()], &["other".into()]), None);
    }

    #[test]
    fn request_counts_sum_by_verb_and_resource() {
        let counts: std::collections::BTreeMap<String, u64> = serde_json::from_str(
            r#"{"create resourceslices":2,"update resourceslices":5,"get resourceslices":9,"update leases":3}"#,
        )
        .unwrap();
        let verbs = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(count_requests(&counts, &[], None), 19);
        assert_eq!(count_requests(&counts, &verbs("create,update,patch,delete"), None), 10);
        assert_eq!(
            count_requests(&counts, &verbs("create,update,patch,delete"), Some("resourceslices")),
            7
        );
        assert_eq!(count_requests(&counts, &verbs("delete"), None), 0);
    }
}
