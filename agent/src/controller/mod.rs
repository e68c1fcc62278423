//! `--mode=controller`: the cluster-wide view of this driver's devices and
//! the clean-up nobody on a single node can do.
//!
//! One instance leads ([`leader`]); only the leader watches. Reflectors
//! keep ResourceSlices (this driver's), ResourceClaims, DeviceClasses,
//! Nodes and the node agents' heartbeat Leases; [`fleet`] turns them into
//! gauges at every scrape and into the slices to delete: those whose Node
//! is gone, whose agent is gone for longer than the grace period (a
//! heartbeat expires a lease duration after this controller last saw its
//! renewTime change: agents' clocks are not trusted), or left
//! behind in a pool without a heartbeat that has been at a newer generation
//! for the grace period (by this controller's clock; a heartbeating agent's
//! pool is never touched: it may be rewriting it). Every `--rescan-interval` an audit
//! lists again from the API, fixes what the watches missed and counts it.
//! Each deletion is confirmed against the API first, made conditional on
//! the slice's uid (and, for a stale generation, its resourceVersion), and
//! explained by an Event.

pub mod fleet;
pub mod leader;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use metrics::{counter, histogram};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin::Health;
use crate::api::Clients;
use crate::heartbeat;
use crate::metrics as m;
use fleet::{Cleanup, Cluster, Policy, Reason};

/// The component name in Events and logs.
pub const COMPONENT: &str = "mock-accel-controller";

#[derive(Debug, Clone)]
pub struct Config {
    pub driver: String,
    /// Where the leader Lease and the agents' heartbeat Leases live.
    pub namespace: String,
    pub identity: String,
    pub timing: leader::Timing,
    pub agent_grace: Duration,
    /// Full audit period (None: off).
    pub audit: Option<Duration>,
    /// Many nodes on this kernel (kind): the PFs of a node that left the
    /// cluster, once its agent is gone too (the slices' grace rules), are
    /// given back here, so other nodes can take them.
    pub shared_kernel: Option<Arc<crate::backend::sysfs::Sysfs>>,
}

impl Config {
    pub fn lease_name(&self) -> String {
        format!("{}-controller", self.driver)
    }
}

/// Runs until cancelled: stands by, leads when elected, stands by again
/// when the lead is lost.
pub async fn run(clients: Clients, cfg: Config, health: Arc<Health>, cancel: CancellationToken) -> anyhow::Result<()> {
    // Every series there from the start: rates and increases need a zero
    // before the first event, and dashboards show 0, not "no data".
    for reason in [Reason::NodeGone, Reason::AgentGone, Reason::StaleGeneration] {
        counter!(m::CONTROLLER_CLEANUPS, "reason" => reason.as_str()).increment(0);
        counter!(m::CONTROLLER_DRIFT, "kind" => reason.as_str()).increment(0);
        counter!(m::CONTROLLER_EVENTS, "reason" => reason.as_str()).increment(0);
    }
    counter!(m::CONTROLLER_DRIFT, "kind" => "cache").increment(0);
    for result in ["clean", "drift", "error"] {
        counter!(m::CONTROLLER_AUDITS, "result" => result).increment(0);
    }
    let (leading_tx, mut leading) = watch::channel(false);
    let elector = leader::Elector {
        api: Api::namespaced(clients.requests.clone(), &cfg.namespace),
        name: cfg.lease_name(),
        identity: cfg.identity.clone(),
        timing: cfg.timing.clone(),
    };
    let election = tokio::spawn(elector.run(leading_tx, cancel.clone()).instrument(info_span!("leader")));
    health.ready.store(true, Ordering::SeqCst);
    info!(driver = %cfg.driver, namespace = %cfg.namespace, identity = %cfg.identity, "controller started; standing by for the lead");
    while !cancel.is_cancelled() {
        if !*leading.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = leading.changed() => if r.is_err() { break } else { continue },
            }
        }
        let term = cancel.child_token();
        let mut work = tokio::spawn(
            lead(clients.clone(), cfg.clone(), health.clone(), term.clone()).instrument(info_span!("lead")),
        );
        // Stop acting the moment the lead is lost (or on shutdown). Should
        // the work end while we still lead, start it again a second later.
        let mut restart = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = leading.changed() => if r.is_err() || !*leading.borrow_and_update() { break },
                done = &mut work => {
                    let why = match done {
                        Ok(Ok(())) => "ended".to_string(),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(e) => format!("panicked: {e}"),
                    };
                    counter!(m::CONTROLLER_API_ERRORS, "op" => "lead", "kind" => "other").increment(1);
                    warn!(error = %why, "leading work stopped while still the leader; starting it again in 1 s");
                    restart = true;
                    break;
                }
            }
        }
        term.cancel();
        if !restart && let Ok(Err(e)) = work.await {
            warn!(error = %format!("{e:#}"), "leading ended with an error");
        }
        *health.extra.lock().unwrap() = None;
        if restart {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        info!("not leading: the fleet metrics are withdrawn");
    }
    election.await??;
    info!("controller stopped");
    Ok(())
}

/// A reflector of `api`; a change `on_event` says a pass must see pokes
/// `notify` (the store has it by then).
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    notify: Arc<Notify>,
    mut on_event: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
    term: CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                _ = term.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(ev)) => {
                    if on_event(&ev) {
                        notify.notify_one();
                    }
                }
                Some(Err(e)) => {
                    counter!(m::CONTROLLER_WATCH_ERRORS, "resource" => resource).increment(1);
                    warn!(resource, error = %e, "watch failed; it resumes with backoff");
                }
                None => return,
            }
        }
    });
    store
}

struct Stores {
    slices: Store<ResourceSlice>,
    claims: Store<ResourceClaim>,
    classes: Store<DeviceClass>,
    nodes: Store<Node>,
    agents: Store<Lease>,
}

impl Stores {
    fn cluster(&self) -> Cluster {
        Cluster {
            slices: self.slices.state(),
            claims: self.claims.state(),
            classes: self.classes.state(),
            nodes: self.nodes.state(),
            agents: self.agents.state(),
        }
    }

    async fn ready(&self) -> bool {
        self.slices.wait_until_ready().await.is_ok()
            && self.claims.wait_until_ready().await.is_ok()
            && self.classes.wait_until_ready().await.is_ok()
            && self.nodes.wait_until_ready().await.is_ok()
            && self.agents.wait_until_ready().await.is_ok()
    }
}

/// How long claims wait for allocation: seen pending, then allocated.
#[derive(Default)]
struct Waits {
    pending: HashSet<String>,
}

impl Waits {
    fn observe(&mut self, ev: &watcher::Event<ResourceClaim>, driver: &str) {
        match ev {
            watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                let Some(uid) = c.uid() else { return };
                let allocation = c.status.as_ref().and_then(|s| s.allocation.as_ref());
                match allocation {
                    None => {
                        self.pending.insert(uid);
                    }
                    Some(a) => {
                        if !self.pending.remove(&uid) || fleet::allocated_devices(c, driver).next().is_none() {
                            return;
                        }
                        let Some(created) = c.metadata.creation_timestamp.as_ref() else {
                            return;
                        };
                        let at = a
                            .allocation_timestamp
                            .as_ref()
                            .map(|t| t.0)
                            .unwrap_or_else(Timestamp::now);
                        let wait = (at.as_millisecond() - created.0.as_millisecond()).max(0) as f64 / 1000.0;
                        let classes = fleet::claim_classes(c);
                        for class in if classes.is_empty() {
                            BTreeSet::from([String::new()])
                        } else {
                            classes
                        } {
                            histogram!(m::CLAIM_ALLOCATION_SECONDS, "device_class" => class).record(wait);
                        }
                    }
                }
            }
            watcher::Event::Delete(c) => {
                if let Some(uid) = c.uid() {
                    self.pending.remove(&uid);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

struct Ctx {
    cfg: Config,
    policy: Policy,
    slices: Api<ResourceSlice>,
    nodes: Api<Node>,
    agents: Api<Lease>,
    events: Api<Event>,
    term: CancellationToken,
}

async fn lead(clients: Clients, cfg: Config, health: Arc<Health>, term: CancellationToken) -> anyhow::Result<()> {
    let client = clients.requests;
    let notify = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let seen = Arc::new(Mutex::new(fleet::Seen::default()));
    let stores = watch_cluster(&mut tasks, clients.watches.clone(), &cfg, &notify, &seen, &term);
    tasks.spawn(
        crate::declared::summary::run(client.clone(), clients.watches, cfg.driver.clone(), term.clone())
            .instrument(info_span!("scenarios")),
    );
    tokio::select! {
        _ = term.cancelled() => return Ok(()),
        ok = stores.ready() => if !ok { anyhow::bail!("a watch ended before it synced") },
    }
    info!("leading: the watches are synced");
    {
        let (stores, driver, seen) = (stores.clone(), cfg.driver.clone(), seen.clone());
        *health.extra.lock().unwrap() = Some(Box::new(move |out: &mut String| {
            let f = fleet::fleet(&stores.cluster(), &driver, &seen.lock().unwrap(), Timestamp::now());
            f.render(out)
        }));
    }
    let ctx = Ctx {
        policy: Policy {
            driver: cfg.driver.clone(),
            agent_grace: cfg.agent_grace,
        },
        slices: Api::all(client.clone()),
        nodes: Api::all(client.clone()),
        agents: Api::namespaced(client.clone(), &cfg.namespace),
        events: Api::namespaced(client.clone(), "default"),
        term: term.clone(),
        cfg,
    };
    reconcile(&ctx, &stores, &seen, &notify).await;
    tasks.shutdown().await;
    Ok(())
}

/// The caches the leader plans from, each fed by a watch task in `tasks`
/// that pokes `notify` on every change of what a pass reads (slices, Nodes,
/// the agents' Leases) but a heartbeat's renewal, which is noted in `seen`
/// as it arrives (a thousand agents renew a thousand times a minute; a
/// pass for each would read the whole fleet each time); claims and classes
/// are for the scrape's view.
fn watch_cluster(
    tasks: &mut JoinSet<()>,
    watches: kube::Client,
    cfg: &Config,
    notify: &Arc<Notify>,
    seen: &Arc<Mutex<fleet::Seen>>,
    term: &CancellationToken,
) -> Arc<Stores> {
    let by_driver = watcher::Config::default().fields(&format!("spec.driver={}", cfg.driver));
    let agent_selector = heartbeat::selector(&cfg.driver);
    let waits = Arc::new(Mutex::new(Waits::default()));
    let driver = cfg.driver.clone();
    Arc::new(Stores {
        slices: reflect(
            tasks,
            Api::all(watches.clone()),
            by_driver,
            "resourceslices",
            notify.clone(),
            |_| true,
            term.clone(),
        ),
        claims: reflect(
            tasks,
            Api::all(watches.clone()),
            watcher::Config::default(),
            "resourceclaims",
            notify.clone(),
            // (claims and classes feed the fleet view a scrape renders and
            // the allocation waits, never a pass: no pass for their changes)
            {
                let waits = waits.clone();
                move |ev| {
                    waits.lock().unwrap().observe(ev, &driver);
                    false
                }
            },
            term.clone(),
        ),
        classes: reflect(
            tasks,
            Api::all(watches.clone()),
            watcher::Config::default(),
            "deviceclasses",
            notify.clone(),
            |_| false,
            term.clone(),
        ),
        nodes: reflect(
            tasks,
            Api::all(watches.clone()),
            watcher::Config::default(),
            "nodes",
            notify.clone(),
            |_| true,
            term.clone(),
        ),
        agents: reflect(
            tasks,
            Api::namespaced(watches.clone(), &cfg.namespace),
            watcher::Config::default().labels(&agent_selector),
            "leases",
            notify.clone(),
            {
                let seen = seen.clone();
                move |ev| match ev {
                    watcher::Event::Apply(lease) => !seen.lock().unwrap().renewal(lease, Timestamp::now()),
                    _ => true,
                }
            },
            term.clone(),
        ),
    })
}

/// Plans and acts on every change (folded into passes at most every
/// PASS_GAP), when a heartbeat outlives its grace, and audits from the
/// API every `audit`, until the term ends.
async fn reconcile(ctx: &Ctx, stores: &Stores, seen: &Mutex<fleet::Seen>, notify: &Notify) {
    let mut audit = ctx.cfg.audit.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // The first change after a quiet spell is acted on at once; a burst is
    // folded into passes at most every PASS_GAP.
    const PASS_GAP: Duration = Duration::from_millis(100);
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        if let Some(gap) = last_pass.map(|t| PASS_GAP.saturating_sub(t.elapsed()))
            && !gap.is_zero()
        {
            tokio::select! {
                _ = ctx.term.cancelled() => break,
                _ = tokio::time::sleep(gap) => {}
            }
        }
        last_pass = Some(tokio::time::Instant::now());
        let cluster = stores.cluster();
        let now = Timestamp::now();
        counter!(m::CONTROLLER_RECONCILES).increment(1);
        let (todo, deadline) = {
            let mut seen = seen.lock().unwrap();
            seen.observe(&cluster, &ctx.policy.driver, now);
            (
                fleet::plan(&cluster, &ctx.policy, &seen, now),
                fleet::next_deadline(&cluster, &ctx.policy, &seen, now),
            )
        };
        if !todo.is_empty() {
            execute(ctx, todo, false).await;
        }
        if let Some(kernel) = &ctx.cfg.shared_kernel {
            release_gone_owners(kernel, &cluster, &ctx.policy, seen, now);
        }
        // Wake for the next heartbeat to outlive its grace, a change, or the audit.
        let wake = deadline
            .map(|t| Duration::from_millis((t.as_millisecond() - now.as_millisecond()).max(0) as u64 + 50))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = ctx.term.cancelled() => break,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wake) => {}
            _ = async { match audit.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => {
                run_audit(ctx, stores, seen).await;
            }
        }
    }
}

/// On a shared kernel: gives back the PFs of nodes gone from the cluster
/// whose agents are gone too ([`fleet::gone_owners`]).
fn release_gone_owners(
    kernel: &crate::backend::sysfs::Sysfs,
    cluster: &Cluster,
    policy: &Policy,
    seen: &Mutex<fleet::Seen>,
    now: Timestamp,
) {
    let owners = match kernel.owners() {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "shared kernel: cannot read the PFs' owners");
            return;
        }
    };
    let gone = fleet::gone_owners(
        cluster,
        policy,
        &seen.lock().unwrap(),
        now,
        owners.keys().map(String::as_str),
    );
    for (node, why) in gone {
        match kernel.release(&node) {
            Ok(ids) => {
                counter!(m::OWNER_RELEASED).increment(ids.len() as u64);
                info!(node = %node, pfs = ?ids, "shared kernel: gave back the PFs of a gone node: {why}");
            }
            Err(e) => warn!(node = %node, error = %e, "shared kernel: giving back a gone node's PFs failed"),
        }
    }
}

/// Lists again from the API (not the caches), fixes what is wrong, and
/// counts what the watches had not caught. The slices and Nodes are listed
/// as metadata first: a thousand nodes' slices in full are tens of MB a
/// LIST, every period, for the API server to encode and this controller to
/// decode (`just bench-fleet`); only when the caches disagree with them are
/// they listed whole, and acted on.
async fn run_audit(ctx: &Ctx, stores: &Stores, seen: &Mutex<fleet::Seen>) {
    let slices_lp = ListParams::default().fields(&format!("spec.driver={}", ctx.cfg.driver));
    let uids = async {
        let slices = ctx.slices.list_metadata(&slices_lp).await?;
        let nodes = ctx.nodes.list_metadata(&ListParams::default()).await?;
        Ok::<_, kube::Error>(Uids {
            slices: slices.items.iter().filter_map(|o| o.metadata.uid.clone()).collect(),
            nodes: nodes.items.iter().filter_map(|o| o.metadata.uid.clone()).collect(),
        })
    };
    let listed = match uids.await {
        Ok(u) => u,
        Err(e) => return audit_failed(&e),
    };
    // What the caches still disagree on after they had a second to catch up.
    let mut missed = listed.diff(&Uids::of(&stores.cluster()));
    if missed > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        missed = listed.diff(&Uids::of(&stores.cluster()));
    }
    let now = Timestamp::now();
    let view = if missed > 0 {
        counter!(m::CONTROLLER_DRIFT, "kind" => "cache").increment(missed as u64);
        warn!(
            objects = missed,
            "audit: the watches disagree with the API; acting on the API's view"
        );
        let fresh = async {
            let slices = ctx.slices.list(&slices_lp).await?;
            let nodes = ctx.nodes.list(&ListParams::default()).await?;
            let agents = ctx
                .agents
                .list(&ListParams::default().labels(&heartbeat::selector(&ctx.cfg.driver)))
                .await?;
            Ok::<_, kube::Error>(Cluster {
                slices: slices.items.into_iter().map(Arc::new).collect(),
                nodes: nodes.items.into_iter().map(Arc::new).collect(),
                agents: agents.items.into_iter().map(Arc::new).collect(),
                claims: stores.claims.state(),
                classes: stores.classes.state(),
            })
        };
        match fresh.await {
            Ok(c) => c,
            Err(e) => return audit_failed(&e),
        }
    } else {
        stores.cluster()
    };
    let todo = {
        let mut seen = seen.lock().unwrap();
        seen.observe(&view, &ctx.policy.driver, now);
        fleet::plan(&view, &ctx.policy, &seen, now)
    };
    let fixed = if todo.is_empty() {
        0
    } else {
        execute(ctx, todo, true).await
    };
    let result = if missed == 0 && fixed == 0 { "clean" } else { "drift" };
    counter!(m::CONTROLLER_AUDITS, "result" => result).increment(1);
    info!(result, fixed, cache_drift = missed, "audit done");
}

fn audit_failed(e: &kube::Error) {
    counter!(m::CONTROLLER_AUDITS, "result" => "error").increment(1);
    counter!(m::CONTROLLER_API_ERRORS, "op" => "audit", "kind" => m::api_error_kind(e)).increment(1);
    warn!(error = %e, "audit: cannot list; trying again at the next one");
}

/// The uids of the driver's slices and of the Nodes.
struct Uids {
    slices: BTreeSet<String>,
    nodes: BTreeSet<String>,
}

impl Uids {
    fn of(c: &Cluster) -> Uids {
        fn uids<K: Resource>(v: &[Arc<K>]) -> BTreeSet<String> {
            v.iter().filter_map(|o| o.meta().uid.clone()).collect()
        }
        Uids {
            slices: uids(&c.slices),
            nodes: uids(&c.nodes),
        }
    }

    /// Slices and Nodes that one side has and the other has not.
    fn diff(&self, other: &Uids) -> usize {
        self.slices.symmetric_difference(&other.slices).count() + self.nodes.symmetric_difference(&other.nodes).count()
    }
}

/// Re-reads what a decision rests on: the cache may lag behind the API.
async fn confirm(ctx: &Ctx, c: &Cleanup) -> Result<bool, kube::Error> {
    match c.reason {
        Reason::NodeGone => Ok(match ctx.nodes.get_opt(&c.node).await? {
            None => true,
            Some(n) => c.owner_uid.is_some() && n.uid() != c.owner_uid,
        }),
        // Expiry is judged by this controller's clock: the API must show
        // the very renewTime that was judged, not renewed since.
        Reason::AgentGone => {
            let lease = ctx
                .agents
                .get_opt(&heartbeat::lease_name(&ctx.cfg.driver, &c.node))
                .await?;
            let Some(lease) = lease else {
                return Ok(false);
            };
            // A fleet's node: the fleet's Lease is its heartbeat.
            let fleet = match fleet::via(&lease) {
                Some(via) => ctx.agents.get_opt(via).await?,
                None => None,
            };
            Ok(
                fleet::beat_of(&lease, fleet.as_ref())
                    .is_some_and(|b| b.node == c.node && Some(b.renewed) == c.renewed),
            )
        }
        // Never a pool whose agent has a heartbeat: it may be rewriting it.
        Reason::StaleGeneration => Ok(ctx
            .agents
            .get_opt(&heartbeat::lease_name(&ctx.cfg.driver, &c.node))
            .await?
            .is_none()),
    }
}

/// Deletes, explains, counts; returns how many slices went.
async fn execute(ctx: &Ctx, todo: Vec<Cleanup>, audit: bool) -> usize {
    let mut done = 0;
    let mut agents_gone: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // A node's slices share the answer: one GET per node and reason.
    let mut confirmed: HashMap<(Reason, String, Option<String>), bool> = HashMap::new();
    for c in todo {
        if ctx.term.is_cancelled() {
            break; // No longer the leader: act no more.
        }
        let key = (c.reason, c.node.clone(), c.owner_uid.clone());
        let answer = match confirmed.get(&key) {
            Some(yes) => Ok(*yes),
            None => confirm(ctx, &c).await.inspect(|yes| {
                confirmed.insert(key, *yes);
            }),
        };
        match answer {
            Ok(true) => {}
            Ok(false) => {
                debug!(slice = %c.slice, reason = c.reason.as_str(), "not confirmed by the API; left alone");
                continue;
            }
            Err(e) => {
                counter!(m::CONTROLLER_API_ERRORS, "op" => "confirm", "kind" => m::api_error_kind(&e)).increment(1);
                warn!(slice = %c.slice, error = %e, "cannot confirm a clean-up; trying again later");
                continue;
            }
        }
        // Always the very object judged (uid); for a stale generation also
        // unchanged since (resourceVersion): its content was the reason.
        // A gone node or agent condemns the slice whatever changed in it
        // (e.g. its owner reference removed when the Node was orphan-deleted).
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(c.uid.clone()),
                resource_version: (c.reason == Reason::StaleGeneration).then(|| c.resource_version.clone()),
            }),
            ..Default::default()
        };
        match ctx.slices.delete(&c.slice, &dp).await {
            Ok(_) => {
                done += 1;
                counter!(m::CONTROLLER_CLEANUPS, "reason" => c.reason.as_str()).increment(1);
                if audit {
                    counter!(m::CONTROLLER_DRIFT, "kind" => c.reason.as_str()).increment(1);
                }
                info!(slice = %c.slice, node = %c.node, reason = c.reason.as_str(), audit, "deleted a ResourceSlice: {}", c.message);
                let involved = ObjectReference {
                    api_version: Some("resource.k8s.io/v1".into()),
                    kind: Some("ResourceSlice".into()),
                    name: Some(c.slice.clone()),
                    uid: Some(c.uid.clone()),
                    resource_version: Some(c.resource_version.clone()),
                    ..Default::default()
                };
                let msg = format!("Deleted ResourceSlice {}: {}", c.slice, c.message);
                record(ctx, involved, c.reason, &msg).await;
                if c.reason == Reason::AgentGone {
                    agents_gone.entry(c.node.clone()).or_default().push(c.slice.clone());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                debug!(slice = %c.slice, code = s.code, "already gone or changed since judged; left to the next pass");
            }
            Err(e) => {
                counter!(m::CONTROLLER_API_ERRORS, "op" => "delete", "kind" => m::api_error_kind(&e)).increment(1);
                warn!(slice = %c.slice, error = %e, "cannot delete a ResourceSlice; trying again later");
            }
        }
    }
    // `kubectl describe node` tells why the node's devices disappeared.
    for (node, slices) in agents_gone {
        if let Ok(Some(n)) = ctx.nodes.get_opt(&node).await {
            let involved = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                uid: n.uid(),
                ..Default::default()
            };
            let msg = format!(
                "Deleted {} ResourceSlice(s) of {} ({}): the node agent's heartbeat expired more than {}s ago",
                slices.len(),
                ctx.cfg.driver,
                slices.join(", "),
                ctx.policy.agent_grace.as_secs()
            );
            record(ctx, involved, Reason::AgentGone, &msg).await;
        }
    }
    done
}

/// A core/v1 Event, as client-go's recorder writes one for a cluster-scoped
/// object (namespace `default`).
async fn record(ctx: &Ctx, involved: ObjectReference, reason: Reason, message: &str) {
    let now = Timestamp::now();
    let name = format!(
        "{}.{:x}",
        involved.name.as_deref().unwrap_or("object"),
        now.as_nanosecond()
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: involved,
        reason: Some(reason.as_str().into()),
        message: Some(message.chars().take(1024).collect()),
        type_: Some(
            if reason == Reason::StaleGeneration {
                "Normal"
            } else {
                "Warning"
            }
            .into(),
        ),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(ctx.cfg.identity.chars().take(128).collect()),
        ..Default::default()
    };
    match ctx.events.create(&PostParams::default(), &event).await {
        Ok(_) => counter!(m::CONTROLLER_EVENTS, "reason" => reason.as_str()).increment(1),
        Err(e) => {
            counter!(m::CONTROLLER_API_ERRORS, "op" => "event", "kind" => m::api_error_kind(&e)).increment(1);
            warn!(error = %e, "cannot record an Event");
        }
    }
}
