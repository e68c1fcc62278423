//! Inventory → ResourceSlices in the API. Watches this node's slices of
//! this driver (so slices deleted behind our back, e.g. by a starting
//! kubelet, come back) and this node's Node (the slices' owner: a Node
//! deleted and created again gets them under its new uid), plans the
//! fewest writes (`slices::plan`), retries failures with backoff, and never
//! gives up because the API is down.
//!
//! - [`state`] decides (pure, unit-tested): what to write, when to retry,
//!   what the cluster does not keep;
//! - [`view`] is what the API holds, as the watches show it;
//! - [`dropped`] notices fields the API server dropped or refused;
//! - this module is the runner: the watches, the timers and the writes.

mod dropped;
mod state;
mod view;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::dropped::{Dropped, dropped, has_node_resources, refused};
use self::state::{Action, Event, Retry, State};
use self::view::{View, rv};
use crate::admin::Health;
use crate::api::Clients;
use crate::events::Snapshot;
use crate::metrics as m;
use crate::slices::{Publisher, TaintEffect, Write};
use crate::turn::Turn;

pub struct Config {
    pub driver: String,
    pub node: String,
    pub max_devices: usize,
    /// Shared counters for PF/VF exclusion, unless the cluster drops them.
    pub counters: bool,
    /// The effect of a failed device's taint (off: no health taints).
    pub taints: TaintEffect,
    /// PFs shared by memory (consumable capacity), unless the cluster
    /// drops the fields.
    pub shared: bool,
    /// List-typed attributes, unless the cluster drops or refuses them.
    pub lists: bool,
    /// Compatibility groups, unless the cluster drops them.
    pub groups: bool,
    /// Host memory overhead per pod, in bytes, unless the cluster drops it.
    pub host_overhead: Option<u64>,
    /// One publisher per node (see `turn`): taken before the first write,
    /// given up for good to a newer agent pod.
    pub turn: Turn,
}

/// Runs until cancelled.
pub async fn run(
    clients: Clients,
    cfg: Config,
    snapshots: mpsc::UnboundedReceiver<Snapshot>,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    gauge!(m::PUBLISHER).set(0.0);
    let Some(held) = cfg.turn.take(&cancel).await? else {
        return Ok(());
    };
    gauge!(m::PUBLISHER).set(1.0);
    let publisher = Publisher {
        driver: cfg.driver.clone(),
        node: cfg.node.clone(),
        node_uid: String::new(),
        max_devices: cfg.max_devices,
        counters: cfg.counters,
        taints: cfg.taints,
        shared: cfg.shared,
        lists: cfg.lists,
        groups: cfg.groups,
        host_overhead: cfg.host_overhead,
    };
    gauges(&publisher);
    info!(node = %cfg.node, driver = %cfg.driver, "publishing this node's pool");
    let (node_watch, watch) = watches(&clients, &cfg.node, &publisher);
    let inputs = Inputs {
        snapshots,
        slices: watch,
        node: node_watch,
    };
    let ready = |r: bool| health.ready.store(r, Ordering::SeqCst);
    serve(clients.requests, publisher, inputs, ready, Some(held), cancel).await
}

/// The publishing settings as gauges (one per process: a fleet's pools
/// share them).
pub fn gauges(p: &Publisher) {
    gauge!(m::SHARED_COUNTERS).set(if p.counters { 1.0 } else { 0.0 });
    gauge!(m::HEALTH_TAINTS).set(if p.taints == TaintEffect::Off { 0.0 } else { 1.0 });
    gauge!(m::CONSUMABLE_CAPACITY).set(if p.shared { 1.0 } else { 0.0 });
    gauge!(m::LIST_ATTRIBUTES).set(if p.lists { 1.0 } else { 0.0 });
    gauge!(m::COMPATIBILITY_GROUPS).set(if p.groups && p.counters { 1.0 } else { 0.0 });
    gauge!(m::HOST_MEMORY_OVERHEAD).set(p.host_overhead.unwrap_or(0) as f64);
    gauge!(m::HEALTH_FLAPPING).set(0.0);
}

/// What one pool's publisher hears: its node's scans, its slices' watch
/// events and its Node's (a node agent's own watches; a fleet's shared
/// watches, routed to each of its pools).
pub struct Inputs {
    pub snapshots: mpsc::UnboundedReceiver<Snapshot>,
    pub slices: Watch<ResourceSlice>,
    pub node: Watch<Node>,
}

/// One pool's publishing loop, until cancelled: the node agent's, and
/// each of a fleet's nodes'. `ready` gets `/readyz`'s answer for this pool;
/// `held`, the node agent's turn, is checked twice a second.
pub async fn serve(
    requests: kube::Client,
    publisher: Publisher,
    inputs: Inputs,
    mut ready: impl FnMut(bool),
    held: Option<crate::turn::Held>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Inputs {
        mut snapshots,
        slices: mut watch,
        node: mut node_watch,
    } = inputs;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let api: Api<ResourceSlice> = Api::all(requests);
    let mut state = State::new(publisher);
    loop {
        let (retry_at, hold_ends) = state.timers();
        let event = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            snap = snapshots.recv() => {
                let Some(snap) = snap else { return Ok(()) };
                // The newest inventory; the oldest event not yet published.
                let mut all = vec![snap];
                while let Ok(newer) = snapshots.try_recv() {
                    all.push(newer);
                }
                Event::Snapshots(all)
            }
            event = watch.next() => match event {
                Some(Ok(event)) => {
                    // Drain what else arrived, then plan once.
                    let mut all = vec![event];
                    while let Some(Some(Ok(more))) = futures::FutureExt::now_or_never(watch.next()) {
                        all.push(more);
                    }
                    Event::Slices(all)
                }
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "watch of our ResourceSlices failed; it retries with backoff");
                    continue;
                }
                None => return Ok(()),
            },
            event = node_watch.next() => match event {
                Some(Ok(event)) => Event::Node(Box::new(event)),
                Some(Err(e)) => {
                    counter!(m::API_ERRORS, "kind" => "watch").increment(1);
                    warn!(error = %e, "watch of this node's Node object failed; it retries with backoff");
                    continue;
                }
                None => return Ok(()),
            },
            _ = async { tokio::time::sleep_until(retry_at.unwrap()).await }, if retry_at.is_some() => Event::RetryDue,
            _ = async { tokio::time::sleep_until(hold_ends.unwrap()).await }, if hold_ends.is_some() => Event::HoldEnded,
            // Only the turn to check: nothing else changed.
            _ = check.tick(), if held.is_some() => {
                if held.as_ref().is_some_and(step_aside) {
                    drop(held);
                    cancel.cancelled().await;
                    return Ok(());
                }
                continue;
            }
        };
        if held.as_ref().is_some_and(step_aside) {
            drop(held);
            cancel.cancelled().await;
            return Ok(());
        }
        let mut actions: VecDeque<Action> = state.on(event, tokio::time::Instant::now()).into();
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Ready(r) => ready(r),
                Action::Write(writes) => {
                    let outcome = execute(&api, &writes, &mut state.view).await;
                    actions.extend(state.on(Event::Written(outcome), tokio::time::Instant::now()));
                }
            }
        }
    }
}

pub type Watch<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// This node's Node, and our slices of it.
fn watches(clients: &Clients, node: &str, publisher: &Publisher) -> (Watch<Node>, Watch<ResourceSlice>) {
    let nodes: Api<Node> = Api::all(clients.watches.clone());
    let node_watch = watcher(
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .default_backoff()
    .boxed();
    let slices = watcher(
        Api::<ResourceSlice>::all(clients.watches.clone()),
        watcher::Config::default().fields(&publisher.field_selector()),
    )
    .default_backoff()
    .boxed();
    (node_watch, slices)
}

/// A newer agent pod of this node asked to publish: this one stops for good.
fn step_aside(held: &crate::turn::Held) -> bool {
    let Some(newer) = held.superseded() else {
        return false;
    };
    info!(%newer, "a newer agent pod on this node asked to publish: stepping aside for good (this one goes on serving the kubelet)");
    gauge!(m::PUBLISHER).set(0.0);
    true
}

/// Carries out a plan's writes in order, keeping `view` right; the first
/// that fails ends it, saying what follows.
async fn execute(api: &Api<ResourceSlice>, writes: &[Write], view: &mut View) -> Result<(), Retry> {
    let pp = PostParams {
        field_manager: Some("mock-accel-agent".into()),
        ..Default::default()
    };
    for w in writes {
        let name = w.name().to_string();
        let result = match w {
            Write::Create(s) => api.create(&pp, s).await.map(Some),
            Write::Update(s) => api.replace(&name, &pp, s).await.map(Some),
            Write::Delete { resource_version, .. } => {
                let dp = DeleteParams::default().preconditions(Preconditions {
                    resource_version: resource_version.clone(),
                    uid: None,
                });
                api.delete(&name, &dp).await.map(|either| either.left())
            }
        };
        match result {
            Ok(obj) => {
                counter!(m::SLICE_WRITES, "verb" => w.verb(), "result" => "success").increment(1);
                if let (Write::Create(sent) | Write::Update(sent), Some(stored)) = (w, &obj)
                    && let Some((what, why)) = dropped(sent, stored)
                {
                    view.deleted.remove(&name);
                    view.written.insert(name, stored.clone());
                    return Err(Retry::Without(what, why));
                }
                match obj {
                    Some(s) if !matches!(w, Write::Delete { .. }) => {
                        view.deleted.remove(&name);
                        view.written.insert(name, s);
                    }
                    other => {
                        view.written.remove(&name);
                        let at = other.as_ref().map_or(0, rv);
                        view.deleted.insert(name, at);
                    }
                }
            }
            Err(e) => {
                let kind = m::api_error_kind(&e);
                counter!(m::API_ERRORS, "kind" => kind).increment(1);
                let result = if kind == "conflict" { "conflict" } else { "error" };
                counter!(m::SLICE_WRITES, "verb" => w.verb(), "result" => result).increment(1);
                match (kind, w) {
                    // Someone else wrote it (or deleted it) first: re-read and plan again.
                    ("conflict", _) | ("not_found", Write::Update(_)) => {
                        debug!(slice = %name, error = %e, "our view was stale; re-reading");
                        match api.get_opt(&name).await {
                            Ok(Some(fresh)) => {
                                view.deleted.remove(&name);
                                view.written.insert(name.clone(), fresh);
                            }
                            Ok(None) => {
                                view.written.remove(&name);
                                view.watched.remove(&name);
                            }
                            Err(e) => {
                                counter!(m::API_ERRORS, "kind" => m::api_error_kind(&e)).increment(1);
                                return Err(Retry::Later);
                            }
                        }
                        return Err(Retry::Now);
                    }
                    ("not_found", Write::Delete { .. }) => {
                        view.written.remove(&name);
                        view.deleted.insert(name, 0);
                    }
                    // The node's kubelet does not declare the feature (Node
                    // status.declaredFeatures, KEP-5328): admission refuses
                    // node allocatable resources for it.
                    ("denied", Write::Create(sent) | Write::Update(sent))
                        if has_node_resources(sent) && e.to_string().contains("DRANodeAllocatableResources") =>
                    {
                        return Err(Retry::Without(
                            Dropped::NodeResources,
                            format!("the API server refused {name}: {e}"),
                        ));
                    }
                    ("invalid", w) => {
                        let what = match w {
                            Write::Create(sent) | Write::Update(sent) => refused(sent, &e.to_string()),
                            Write::Delete { .. } => None,
                        };
                        if let Some(what) = what {
                            return Err(Retry::Without(what, format!("the API server refused {name}: {e}")));
                        }
                        warn!(slice = %name, error = %e, "the API server rejected our ResourceSlice: this is a bug");
                        return Err(Retry::Later);
                    }
                    _ => {
                        warn!(slice = %name, verb = w.verb(), error = %e, "ResourceSlice write failed; retrying");
                        return Err(Retry::Later);
                    }
                }
            }
        }
    }
    Ok(())
}
