//! `--mode=fleet`: one process serves the pools of many nodes that have
//! no agent of their own — kwok's simulated nodes — each node's devices
//! from its own user-space model ([`crate::backend::sim`], its identities
//! derived from the node's name), published and driven by the very code a
//! node agent runs: [`events::inventory_task`] scans it,
//! [`publisher::serve`] keeps its slices (generation, ≤128 devices a slice,
//! counters, taints), [`declared::follow`] applies the DeviceScenarios that
//! select it, [`binding::follow`] reports the binding conditions of its
//! fabric-attached devices (the scheduler waits for them; kwok has no
//! kubelet, so nothing else is written to claims), [`heartbeat::delegate`]
//! writes its Lease once, naming the fleet's own Lease, which
//! [`heartbeat::run_fleet`] renews for all of them (so the controller
//! treats it as any node with an agent, alive while the fleet is).
//!
//! What is shared is the API's side: one watch of the selected Nodes, one
//! of the driver's slices and (fabric-attached devices only) one of the
//! claims — not one or three per node — their events routed to each node's
//! pool by [`route`] as that node's own watches would give them; one watch
//! of the scenarios read by every pool.
//!
//! Nodes come and go with the selector: a node appearing gets a pool, a
//! node leaving loses it, its slices deleted and its devices dropped. At
//! most `max_nodes` are served (memory is bounded by it); the rest wait,
//! said once and counted, and are taken as served nodes leave.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use metrics::{counter, gauge};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

mod route;

use self::route::Router;
use crate::admin::Health;
use crate::api::Clients;
use crate::backend::sim::Sim;
use crate::backend::{self, Backend};
use crate::metrics as m;
use crate::publisher::{self, Inputs, Watch};
use crate::slices::{Publisher, TaintEffect};
use crate::{binding, declared, events, heartbeat};

pub struct Config {
    pub driver: String,
    /// The Nodes served: a label selector (kwok's `type=kwok`).
    pub selector: String,
    /// Most nodes served at once.
    pub max_nodes: usize,
    /// Each node's devices live in `<sim_dir>/<node>`.
    pub sim_dir: PathBuf,
    pub params: backend::Params,
    /// VFs each PF of a node gets when its devices are first made.
    pub vfs: u32,
    pub boot_id: String,
    pub max_devices: usize,
    pub counters: bool,
    pub taints: TaintEffect,
    pub shared: bool,
    pub lists: bool,
    pub groups: bool,
    pub host_overhead: Option<u64>,
    pub scenarios: bool,
    /// Each node's heartbeat Lease (None: none).
    pub heartbeat: Option<Duration>,
    pub namespace: String,
}

/// A served node.
struct Pool {
    node_tx: mpsc::UnboundedSender<watcher::Event<Node>>,
    slice_tx: mpsc::UnboundedSender<watcher::Event<ResourceSlice>>,
    /// Fabric-attached devices: the claims allocated on the node.
    claim_tx: Option<mpsc::UnboundedSender<watcher::Event<ResourceClaim>>>,
    wake: Arc<Notify>,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
    /// True once every task of the pool has ended.
    finished: tokio::sync::watch::Receiver<bool>,
    /// Which start of the node's pool this is.
    serial: u64,
}

impl Pool {
    /// The node's whole state, as a watch's relist gives it.
    fn relist_node(&self, n: &Node) {
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(n.clone()),
            watcher::Event::InitDone,
        ] {
            let _ = self.node_tx.send(e);
        }
    }
}

/// Watch events from a channel, as a watch stream.
fn stream_of<K: Send + 'static>(rx: mpsc::UnboundedReceiver<watcher::Event<K>>) -> Watch<K> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) }).boxed()
}

/// The nodes a scenario selects now (of the fleet's), and those with an
/// entry in its status (the entry must go when it stops selecting them).
fn scenario_nodes(obj: &kube::api::DynamicObject, nodes: &Store<Node>) -> BTreeSet<String> {
    let json = serde_json::to_value(obj).unwrap_or_default();
    let mut out: BTreeSet<String> = json["status"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["node"].as_str().map(str::to_string))
        .collect();
    if let Ok(s) = declared::spec::parse(&json) {
        out.extend(
            nodes
                .state()
                .iter()
                .filter(|n| s.selects(&n.name_any(), n.labels()))
                .map(|n| n.name_any()),
        );
    }
    out
}

/// A node's fixed place in a period, from its name.
fn phase_of(node: &str) -> u16 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(node.as_bytes());
    u16::from_be_bytes([h[0], h[1]])
}

/// Which nodes are served, which wait: the oldest-seen first, up to the
/// bound (pure; the runner starts and stops pools from it).
#[derive(Debug, Default, PartialEq)]
pub struct Admission {
    pub served: BTreeSet<String>,
    pub waiting: BTreeSet<String>,
}

impl Admission {
    /// With `present` the selected nodes now: who stops, who starts.
    pub fn update(&mut self, present: &BTreeSet<String>, max: usize) -> (Vec<String>, Vec<String>) {
        let stop: Vec<String> = self.served.difference(present).cloned().collect();
        for n in &stop {
            self.served.remove(n);
        }
        self.waiting.retain(|n| present.contains(n));
        let mut start = Vec::new();
        // Waiting nodes first (they came first), then new ones, by name.
        let candidates: Vec<String> = self
            .waiting
            .iter()
            .cloned()
            .chain(
                present
                    .iter()
                    .filter(|n| !self.served.contains(*n) && !self.waiting.contains(*n))
                    .cloned(),
            )
            .collect();
        for n in candidates {
            if self.served.len() < max {
                self.waiting.remove(&n);
                self.served.insert(n.clone());
                start.push(n);
            } else {
                self.waiting.insert(n);
            }
        }
        (stop, start)
    }
}

/// Runs until cancelled.
pub async fn run(clients: Clients, cfg: Config, health: Arc<Health>, cancel: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.max_nodes > 0, "--fleet-max-nodes must be at least 1");
    let cfg = Arc::new(cfg);
    let publisher = template(&cfg, "");
    publisher::gauges(&publisher);
    gauge!(m::PUBLISHER).set(1.0);
    info!(selector = %cfg.selector, max_nodes = cfg.max_nodes, dir = %cfg.sim_dir.display(), "fleet: serving the selected nodes' pools from the sim");
    std::fs::create_dir_all(&cfg.sim_dir)?;
    // What a previous run set aside and had no time to remove.
    for e in std::fs::read_dir(&cfg.sim_dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".gone-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    // The shared watches.
    let (nodes_store, nodes_writer) = reflector::store::<Node>();
    let mut node_watch = watcher(
        Api::<Node>::all(clients.watches.clone()),
        watcher::Config::default().labels(&cfg.selector),
    )
    .default_backoff()
    .reflect(nodes_writer)
    .boxed();
    let mut slice_watch = watcher(
        Api::<ResourceSlice>::all(clients.watches.clone()),
        watcher::Config::default().fields(&format!("spec.driver={}", cfg.driver)),
    )
    .default_backoff()
    .boxed();
    let wakes: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
    let mut background = JoinSet::new();
    let scenarios = if cfg.scenarios {
        let (store, stream) = declared::scenario_watch(clients.watches.clone(), &cfg.driver);
        let w = wakes.clone();
        let nodes = nodes_store.clone();
        // Which nodes each scenario selected when last seen: a change wakes
        // those it selects now and those it selected (a thousand pools
        // each reading every scenario at every change saturated the
        // fleet: `just bench-fleet`, 1000 nodes).
        let mut selected: HashMap<String, BTreeSet<String>> = HashMap::new();
        background.spawn(
            declared::drive(
                stream,
                move |ev: &watcher::Event<kube::api::DynamicObject>| {
                    let wakes = w.lock().expect("not poisoned");
                    let (obj, gone) = match ev {
                        watcher::Event::Apply(o) => (o, false),
                        watcher::Event::Delete(o) => (o, true),
                        watcher::Event::Init => {
                            selected.clear();
                            return;
                        }
                        watcher::Event::InitApply(o) => {
                            selected.insert(o.uid().unwrap_or_default(), scenario_nodes(o, &nodes));
                            return;
                        }
                        // A relist: every pool looks once.
                        watcher::Event::InitDone => {
                            wakes.values().for_each(|n| n.notify_one());
                            return;
                        }
                    };
                    let uid = obj.uid().unwrap_or_default();
                    let now = if gone {
                        BTreeSet::new()
                    } else {
                        scenario_nodes(obj, &nodes)
                    };
                    let before = if gone {
                        selected.remove(&uid)
                    } else {
                        selected.insert(uid, now.clone())
                    };
                    for n in before.unwrap_or_default().union(&now) {
                        if let Some(w) = wakes.get(n) {
                            w.notify_one();
                        }
                    }
                },
                "DeviceScenarios",
                cfg.driver.clone(),
            )
            .instrument(info_span!("fleet-scenarios")),
        );
        Some(store)
    } else {
        None
    };

    // The fleet's heartbeat: one Lease renewed for all its nodes (each
    // node's Lease names it), not a thousand.
    if let Some(interval) = cfg.heartbeat {
        tokio::spawn(
            heartbeat::run_fleet(
                Api::namespaced(clients.requests.clone(), &cfg.namespace),
                cfg.driver.clone(),
                cfg.selector.clone(),
                crate::controller::leader::identity(),
                interval,
                cancel.clone(),
            )
            .instrument(info_span!("fleet-heartbeat")),
        );
    }
    let mut pools: HashMap<String, Pool> = HashMap::new();
    let mut admission = Admission::default();
    let mut slices: Router<ResourceSlice> =
        Router::new(Box::new(|s: &ResourceSlice| s.spec.node_name.iter().cloned().collect()));
    // The claims only matter with fabric-attached devices (binding
    // conditions): watched then only.
    let fabric = cfg.params.fabric_attach_ms > 0;
    let driver = cfg.driver.clone();
    let mut claims: Router<ResourceClaim> = Router::new(Box::new(move |c: &ResourceClaim| {
        crate::claims::results(c, &driver).map(|r| r.pool.clone()).collect()
    }));
    let mut claim_watch = if fabric {
        watcher(
            Api::<ResourceClaim>::all(clients.watches.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut relisting: Option<BTreeMap<String, Node>> = None;
    let mut nodes_synced = false;
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, u64)>();
    let mut serial = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut said_waiting = 0usize;
    let deletes: Api<ResourceSlice> = Api::all(clients.requests.clone());
    let leases: Api<Lease> = Api::namespaced(clients.requests.clone(), &cfg.namespace);
    let shared = Shared {
        clients: clients.clone(),
        cfg: cfg.clone(),
        scenarios,
        nodes: nodes_store,
        ended: ended_tx,
        cancel: cancel.clone(),
    };
    loop {
        let mut membership = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = node_watch.next() => match ev {
                Some(Ok(ev)) => match ev {
                    watcher::Event::Init => relisting = Some(BTreeMap::new()),
                    watcher::Event::InitApply(n) => {
                        if let Some(r) = relisting.as_mut() {
                            r.insert(n.name_any(), n);
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(r) = relisting.take() {
                            nodes = r;
                        }
                        nodes_synced = true;
                        membership = true;
                        for (name, pool) in &pools {
                            if let Some(n) = nodes.get(name) {
                                pool.relist_node(n);
                                pool.wake.notify_one();
                            }
                        }
                    }
                    watcher::Event::Apply(n) => {
                        let name = n.name_any();
                        if let Some(pool) = pools.get(&name) {
                            // Its scenarios select it by its labels: only
                            // a change of them is the scenarios' business
                            // (a Node's status or taints patched is not).
                            if nodes.get(&name).is_none_or(|old| old.labels() != n.labels()) {
                                pool.wake.notify_one();
                            }
                            let _ = pool.node_tx.send(watcher::Event::Apply(n.clone()));
                        }
                        membership = !nodes.contains_key(&name);
                        nodes.insert(name, n);
                    }
                    watcher::Event::Delete(n) => {
                        nodes.remove(&n.name_any());
                        membership = true;
                    }
                },
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "fleet: the watch of the selected Nodes failed; it retries with backoff");
                }
                None => anyhow::bail!("the Node watch ended"),
            },
            ev = slice_watch.next() => match ev {
                Some(Ok(ev)) => {
                    for (node, e) in slices.route(ev, pools.keys()) {
                        if let Some(pool) = pools.get(&node) {
                            let _ = pool.slice_tx.send(e);
                        }
                    }
                }
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "fleet: the watch of the driver's ResourceSlices failed; it retries with backoff");
                }
                None => anyhow::bail!("the ResourceSlice watch ended"),
            },
            ev = claim_watch.next() => match ev {
                Some(Ok(ev)) => {
                    for (node, e) in claims.route(ev, pools.keys()) {
                        if let Some(tx) = pools.get(&node).and_then(|p| p.claim_tx.as_ref()) {
                            let _ = tx.send(e);
                        }
                    }
                }
                Some(Err(e)) => {
                    counter!(m::FABRIC_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "fleet: the watch of ResourceClaims failed; it retries with backoff");
                }
                None => anyhow::bail!("the ResourceClaim watch ended"),
            },
            Some((node, which)) = ended_rx.recv() => {
                // A pool whose task failed: started again (the same
                // devices, from its state directory) if the node is still
                // served and that pool is still the current one.
                if pools.get(&node).is_some_and(|p| p.serial == which) {
                    pools.remove(&node);
                    wakes.lock().expect("not poisoned").remove(&node);
                    admission.served.remove(&node);
                    membership = true;
                }
            }
            _ = tick.tick() => {
                let served = pools.len();
                let ready = pools.values().filter(|p| p.ready.load(Ordering::SeqCst)).count();
                gauge!(m::FLEET_NODES, "state" => "served").set(served as f64);
                gauge!(m::FLEET_NODES, "state" => "published").set(ready as f64);
                gauge!(m::FLEET_NODES, "state" => "waiting").set(admission.waiting.len() as f64);
                health.ready.store(nodes_synced && slices.synced && ready == served, Ordering::SeqCst);
            }
            Some(_) = background.join_next() => {
                error!("fleet: the scenarios' watch ended: scenarios are no longer followed");
            }
        }
        if !membership || !nodes_synced {
            continue;
        }
        let present: BTreeSet<String> = nodes.keys().cloned().collect();
        let (stop, start) = admission.update(&present, cfg.max_nodes);
        for node in stop {
            let pool = pools.remove(&node);
            if pool.is_some() {
                wakes.lock().expect("not poisoned").remove(&node);
            }
            serial += 1;
            let aside = cfg.sim_dir.join(format!(".gone-{serial}"));
            stop_pool(&cfg, &node, pool, slices.on(&node), aside, (&deletes, &leases));
        }
        for node in start {
            let Some(n) = nodes.get(&node) else { continue };
            serial += 1;
            match start_pool(&shared, &node, serial) {
                Ok(pool) => {
                    pool.relist_node(n);
                    if slices.synced {
                        for e in slices.snapshot(&node) {
                            let _ = pool.slice_tx.send(e);
                        }
                    }
                    if let Some(tx) = pool.claim_tx.as_ref().filter(|_| claims.synced) {
                        for e in claims.snapshot(&node) {
                            let _ = tx.send(e);
                        }
                    }
                    wakes
                        .lock()
                        .expect("not poisoned")
                        .insert(node.clone(), pool.wake.clone());
                    pools.insert(node, pool);
                }
                Err(e) => {
                    counter!(m::FLEET_POOL_FAILURES).increment(1);
                    error!(%node, error = %format!("{e:#}"), "fleet: cannot serve this node");
                    admission.served.remove(&node);
                }
            }
        }
        if admission.waiting.len() > said_waiting {
            warn!(
                waiting = admission.waiting.len(),
                served = admission.served.len(),
                max = cfg.max_nodes,
                "fleet: more nodes are selected than --fleet-max-nodes: the rest wait (unpublished) until served nodes leave"
            );
        }
        said_waiting = admission.waiting.len();
    }
    for pool in pools.values() {
        pool.cancel.cancel();
    }
    Ok(())
}

/// A node left the selection: its pool is stopped and its devices set
/// aside at once (to `aside`: a node of that name may come back before the
/// old pool's tasks end); once those tasks end (a write in flight must not
/// bring back what is deleted here), its Lease and its slices are deleted
/// (the garbage collector would, later) and its devices removed, so that
/// a node of that name again is a new node.
fn stop_pool(
    cfg: &Config,
    node: &str,
    pool: Option<Pool>,
    slices: Vec<ResourceSlice>,
    aside: PathBuf,
    (deletes, leases): (&Api<ResourceSlice>, &Api<Lease>),
) {
    let finished = pool.map(|p| {
        p.cancel.cancel();
        p.finished
    });
    if let Err(e) = std::fs::rename(cfg.sim_dir.join(node), &aside) {
        debug!(%node, error = %e, "fleet: a gone node's devices were not set aside");
    }
    let (deletes, leases) = (deletes.clone(), leases.clone());
    let lease = heartbeat::lease_name(&cfg.driver, node);
    tokio::spawn(async move {
        if let Some(mut f) = finished {
            let _ = tokio::time::timeout(Duration::from_secs(30), f.wait_for(|done| *done)).await;
        }
        let _ = leases.delete(&lease, &DeleteParams::default()).await;
        for s in slices {
            let name = s.name_any();
            let dp = DeleteParams::default().preconditions(Preconditions {
                uid: s.metadata.uid.clone(),
                resource_version: None,
            });
            match deletes.delete(&name, &dp).await {
                Ok(_) => counter!(m::SLICE_WRITES, "verb" => "delete", "result" => "success").increment(1),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    counter!(m::API_ERRORS, "kind" => m::api_error_kind(&e)).increment(1);
                    debug!(slice = %name, error = %e, "fleet: a gone node's slice was not deleted (the garbage collector or the controller will)");
                }
            }
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&aside)).await;
    });
    info!(%node, "fleet: a node left the selection: its pool stopped");
}

fn template(cfg: &Config, node: &str) -> Publisher {
    Publisher {
        driver: cfg.driver.clone(),
        node: node.to_string(),
        node_uid: String::new(),
        max_devices: cfg.max_devices,
        counters: cfg.counters,
        taints: cfg.taints,
        shared: cfg.shared,
        lists: cfg.lists,
        groups: cfg.groups,
        host_overhead: cfg.host_overhead,
    }
}

/// One node's pool: its sim, scans, publisher, scenarios and heartbeat,
/// as tasks under a token of its own.
/// What every pool shares.
struct Shared {
    clients: Clients,
    cfg: Arc<Config>,
    scenarios: Option<Store<kube::api::DynamicObject>>,
    nodes: Store<Node>,
    /// A pool whose task failed says so here (node, serial).
    ended: mpsc::UnboundedSender<(String, u64)>,
    cancel: CancellationToken,
}

fn start_pool(shared: &Shared, node: &str, serial: u64) -> anyhow::Result<Pool> {
    let Shared {
        clients,
        cfg,
        scenarios,
        nodes,
        ended,
        cancel: fleet,
    } = shared;
    let dir = cfg.sim_dir.join(node);
    let fresh = !dir.exists();
    // 64 events: a PF hot-plug with 64 VFs is 65; more in one burst is a
    // rescan (the buffer is allocated whole, per node).
    let sim = Sim::open_with(&dir, node, cfg.params.clone(), &cfg.boot_id, 64)?;
    if fresh && cfg.vfs > 0 {
        // As an operator's sriov_numvfs on a new node, before its first scan.
        for pf in sim.names().iter().filter(|n| !n.contains("_vf")) {
            sim.set_vfs(pf, cfg.vfs)?;
        }
    }
    let devices: Arc<dyn Backend> = Arc::new(sim.clone());
    let cancel = fleet.child_token();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let (trigger_tx, trigger_rx) = mpsc::channel(256);
    sim.watch_changes(trigger_tx, &mut tasks, &cancel);
    let (tee_tx, snap_rx, inventory_rx) = events::tee(&mut tasks);
    // The sim says every change: no periodic rescan.
    tasks.spawn(events::inventory_task(
        devices.clone(),
        trigger_rx,
        tee_tx,
        None,
        events::Coalesce::default(),
        cancel.clone(),
    ));
    let (node_tx, node_rx) = mpsc::unbounded_channel();
    let (slice_tx, slice_rx) = mpsc::unbounded_channel();
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    tasks.spawn(publisher::serve(
        clients.requests.clone(),
        template(cfg, node),
        Inputs {
            snapshots: snap_rx,
            slices: stream_of(slice_rx),
            node: stream_of(node_rx),
        },
        move |ok| r.store(ok, Ordering::SeqCst),
        None,
        cancel.clone(),
    ));
    let wake = Arc::new(Notify::new());
    let (attach_tx, attach_rx) = tokio::sync::watch::channel(declared::spec::AttachSpec::default());
    // Fabric-attached devices: the node agent's binding reporter, on the
    // claims routed to this node (no kubelet here; the scheduler still
    // waits for the binding conditions).
    let claim_tx = (cfg.params.fabric_attach_ms > 0).then(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(binding::follow(
            clients.requests.clone(),
            binding::Config {
                driver: cfg.driver.clone(),
                node: node.to_string(),
                backend: devices.clone(),
                faults: attach_rx,
            },
            stream_of(rx),
            inventory_rx.clone(),
            cancel.clone(),
        ));
        tx
    });
    if let Some(store) = scenarios.as_ref() {
        tasks.spawn(declared::follow(
            clients.requests.clone(),
            declared::Config {
                driver: cfg.driver.clone(),
                node: node.to_string(),
                backend: devices.clone(),
                state_file: dir.join("declared.json"),
                attach: attach_tx,
            },
            declared::Seen {
                scenarios: store.clone(),
                nodes: nodes.clone(),
                changed: wake.clone(),
            },
            inventory_rx,
            cancel.clone(),
        ));
    }
    if let Some(interval) = cfg.heartbeat {
        // The node's Lease, written once: its heartbeat is the fleet's.
        // Spread over the interval by the node's name: a thousand Leases
        // written in one burst at the start would be a load spike.
        let phase = interval.mul_f64(f64::from(phase_of(node)) / f64::from(u16::MAX));
        let (api, driver, selector, name, c) = (
            Api::namespaced(clients.requests.clone(), &cfg.namespace),
            cfg.driver.clone(),
            cfg.selector.clone(),
            node.to_string(),
            cancel.clone(),
        );
        tasks.spawn(async move {
            tokio::select! {
                _ = c.cancelled() => return Ok(()),
                _ = tokio::time::sleep(phase) => {}
            }
            let via = heartbeat::fleet_lease_name(&driver, &selector);
            heartbeat::delegate(api, driver, name, via, interval, c).await
        });
    }
    let (name, token, ended) = (node.to_string(), cancel.clone(), ended.clone());
    let (finished_tx, finished) = tokio::sync::watch::channel(false);
    tokio::spawn(
        async move {
            let mut failed = false;
            while let Some(done) = tasks.join_next().await {
                if token.is_cancelled() {
                    continue;
                }
                match done.map_err(anyhow::Error::from).and_then(|r| r) {
                    Err(e) => error!(error = %format!("{e:#}"), "fleet: a task of this node's pool failed: restarting the pool"),
                    Ok(()) => error!("fleet: a task of this node's pool ended: restarting the pool"),
                }
                counter!(m::FLEET_POOL_FAILURES).increment(1);
                failed = true;
                token.cancel();
            }
            finished_tx.send_replace(true);
            if failed {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = ended.send((name, serial));
            }
        }
        .instrument(info_span!("pool", node = %node)),
    );
    debug!(%node, "fleet: serving this node's pool");
    Ok(Pool {
        node_tx,
        slice_tx,
        claim_tx,
        wake,
        ready,
        cancel,
        finished,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nodes_beyond_the_bound_wait_and_are_served_as_others_leave() {
        let mut a = Admission::default();
        let (stop, start) = a.update(&set(&["a", "b", "c"]), 2);
        assert!(stop.is_empty());
        assert_eq!(start, vec!["a", "b"]);
        assert_eq!(a.waiting, set(&["c"]));
        // Nothing changes: nothing to do.
        assert_eq!(a.update(&set(&["a", "b", "c"]), 2), (vec![], vec![]));
        // "a" leaves, "d" comes: the waiting "c" is served first.
        let (stop, start) = a.update(&set(&["b", "c", "d"]), 2);
        assert_eq!(stop, vec!["a"]);
        assert_eq!(start, vec!["c"]);
        assert_eq!(a.waiting, set(&["d"]));
        // A waiting node that leaves is forgotten.
        let (stop, start) = a.update(&set(&["b", "c"]), 2);
        assert!(stop.is_empty() && start.is_empty());
        assert!(a.waiting.is_empty());
    }
}
