//! Hot-plug and faults declared through the API: DeviceScenarios
//! (chart/templates/devicescenarios.yaml) → this node's backend.
//!
//! A scenario names its nodes (`nodeName`, or `nodeSelector` on the Node's
//! labels) and what their devices should be ([`spec`]). The node's agent
//! follows the one scenario for it (the oldest of several; the others are
//! told `Conflict`), plans the writes that make the node so ([`plan`]: all
//! or nothing, a held device waited for, a node that cannot be so said
//! why), applies them through the backend — the module's files in kernel
//! mode, the model in sim mode — and reports its node's part in the
//! scenario's status ([`status`]) with an Event per change. The devices'
//! own events then publish as any change does: this task writes to the
//! devices, never to the slices.
//!
//! A generation is applied once: a write on the node since (an operator's
//! `echo`) is reported as drift, not fought. What the agent set is given
//! back (health ok, attach failures disarmed) when the scenario stops
//! asking for it or goes; devices it plugged stay (removal is declared, as
//! a spec that lists the PFs to keep).

pub mod plan;
pub mod schedule;
pub mod spec;
pub mod status;
pub mod summary;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use metrics::{counter, histogram};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::plan::{Applied, Blocked, Step};
use self::spec::{AttachSpec, Scenario};
use self::status::{NodeStatus, Outcome};
use crate::backend::Backend;
use crate::inventory::{Health, Inventory, parse_name};
use crate::metrics as m;

pub struct Config {
    /// The driver's name, which is the API group of its DeviceScenarios.
    pub driver: String,
    pub node: String,
    pub backend: Arc<dyn Backend>,
    /// Where [`Applied`] is kept (the agent's plugin directory).
    pub state_file: PathBuf,
    /// Where the followed generation's attach faults go (the binding task).
    pub attach: watch::Sender<AttachSpec>,
}

/// The scenarios' API resource (the driver's group).
pub fn api_resource(driver: &str) -> ApiResource {
    ApiResource {
        group: driver.to_string(),
        version: spec::VERSION.to_string(),
        api_version: format!("{driver}/{}", spec::VERSION),
        kind: spec::KIND.to_string(),
        plural: spec::PLURAL.to_string(),
    }
}

/// The field manager of this node's status entries (at most 128 bytes).
fn field_manager(node: &str) -> String {
    let m = format!("mock-accel-agent/{node}");
    if m.len() <= 128 {
        m
    } else {
        use sha2::{Digest, Sha256};
        format!("mock-accel-agent/{:x}", Sha256::digest(node.as_bytes()))
    }
}

fn load(path: &PathBuf) -> Applied {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "the declared-devices record is unreadable: starting from none");
            Applied::default()
        }),
        Err(_) => Applied::default(),
    }
}

fn save(path: &PathBuf, applied: &Applied) {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let r = std::fs::write(&tmp, serde_json::to_vec(applied).expect("plain data"))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        warn!(path = %path.display(), error = %e, "cannot keep the declared-devices record: a restart would apply the scenario again");
    }
}

fn now() -> String {
    serde_json::to_value(Time(Timestamp::now()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// This node's entry in a scenario object's status, if it has one.
fn entry_of<'a>(obj: &'a DynamicObject, node: &str) -> Option<&'a Value> {
    obj.data["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)
}

/// The task: follows the scenarios and the Node's labels, and applies.
pub async fn run(
    requests: Client,
    watches: Client,
    cfg: Config,
    inventory: watch::Receiver<Arc<Inventory>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (scenarios, stream) = scenario_watch(watches.clone(), &cfg.driver);
    let (nodes, nw) = reflector::store::<Node>();
    let node_stream = watcher(
        Api::<Node>::all(watches),
        watcher::Config::default().fields(&format!("metadata.name={}", cfg.node)),
    )
    .default_backoff()
    .reflect(nw);
    let changed = Arc::new(Notify::new());
    let mut watching = tokio::task::JoinSet::new();
    let wake = changed.clone();
    watching.spawn(drive(
        stream,
        move |_| wake.notify_one(),
        "DeviceScenarios",
        cfg.driver.clone(),
    ));
    let wake = changed.clone();
    watching.spawn(drive(
        node_stream,
        move |_| wake.notify_one(),
        "the Node",
        cfg.driver.clone(),
    ));
    let seen = Seen {
        scenarios,
        nodes,
        changed,
    };
    follow(requests, cfg, seen, inventory, cancel).await
}

/// The scenarios' reflector: its store, and the stream to drive (with
/// [`drive`]) that fills it.
pub fn scenario_watch(
    watches: Client,
    driver: &str,
) -> (
    Store<DynamicObject>,
    impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + 'static,
) {
    let ar = api_resource(driver);
    let w = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let store = w.as_reader();
    let stream = watcher(Api::<DynamicObject>::all_with(watches, &ar), watcher::Config::default())
        .default_backoff()
        .reflect(w);
    (store, stream)
}

/// What one node's reconciler reads: the scenarios, the Nodes (its own
/// among them: its labels select), and a wake-up when either changed.
pub struct Seen {
    pub scenarios: Store<DynamicObject>,
    pub nodes: Store<Node>,
    pub changed: Arc<Notify>,
}

/// One node's reconciler, until cancelled: the node agent's, and each of
/// a fleet's nodes' (whose stores are shared by all of them).
pub async fn follow(
    requests: Client,
    cfg: Config,
    seen: Seen,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let ar = api_resource(&cfg.driver);
    let Seen {
        scenarios: store,
        nodes,
        changed,
    } = seen;
    let mut agent = Reconciler {
        api: Api::all_with(requests.clone(), &ar),
        group: cfg.driver.clone(),
        recorder: Recorder::new(
            requests,
            Reporter {
                controller: format!("{}/node-agent", cfg.driver),
                instance: Some(cfg.node.clone()),
            },
        ),
        applied: load(&cfg.state_file),
        attach: cfg.attach.clone(),
        cfg,
        warned: HashMap::new(),
        next_due: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        // No settling delay: a burst of watch events while a pass runs is
        // one wake-up (Notify keeps one permit), and the inventory comes
        // coalesced already. (A 20 ms settle was a third of a declared
        // change's time to its slice: `just bench-sim`.)
        let due = agent.next_due;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = changed.notified() => {}
            r = inventory.changed() => if r.is_err() { return Ok(()) },
            _ = tick.tick() => {}
            _ = sleep_until(due) => {}
        }
        if store.wait_until_ready().now_or_never_ready() && nodes.wait_until_ready().now_or_never_ready() {
            let inv = inventory.borrow_and_update().clone();
            if inv.scanned {
                agent.pass(&store, &nodes, &inv).await;
            }
        }
    }
}

/// Until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Whether a reflector's first list is in, without waiting.
trait ReadyNow {
    fn now_or_never_ready(self) -> bool;
}

impl<F: std::future::Future> ReadyNow for F {
    fn now_or_never_ready(self) -> bool {
        futures::FutureExt::now_or_never(self).is_some()
    }
}

/// What a watch's health changed to, said once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Failing,
    Recovered,
}

/// Whether a watch is failing, from its events. The start of a relist
/// (`Init`) is no sign of recovery: kube's watcher sends one before each
/// retry's list, so an API without the resource would otherwise be said
/// to fail and recover at every retry.
#[derive(Debug, Default)]
struct WatchHealth {
    failing: bool,
}

impl WatchHealth {
    fn on<K>(&mut self, ev: &Result<watcher::Event<K>, watcher::Error>) -> Option<Said> {
        match ev {
            Ok(watcher::Event::Init) => None,
            Ok(_) => std::mem::take(&mut self.failing).then_some(Said::Recovered),
            Err(_) => (!std::mem::replace(&mut self.failing, true)).then_some(Said::Failing),
        }
    }
}

/// Runs a reflected watch, waking the loop on each event (the agent's
/// and the controller's summary alike). An API without
/// the resource (the CRD not installed, or no right to it) is said once.
pub async fn drive<S, K>(stream: S, mut changed: impl FnMut(&watcher::Event<K>), what: &'static str, driver: String)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut health = WatchHealth::default();
    while let Some(ev) = stream.next().await {
        let said = health.on(&ev);
        match ev {
            Ok(ev) => {
                if said == Some(Said::Recovered) {
                    info!(what, "watching again");
                }
                changed(&ev);
            }
            Err(e) => {
                counter!(m::DECLARED_ERRORS, "stage" => "watch").increment(1);
                if said == Some(Said::Failing) {
                    warn!(what, error = %e, hint = %format!("is the {} DeviceScenario CRD installed (chart value scenarios.enabled) and may this agent watch it?", driver), "cannot watch; scenarios wait for it");
                } else {
                    debug!(what, error = %e, "still cannot watch");
                }
            }
        }
    }
}

struct Reconciler {
    api: Api<DynamicObject>,
    group: String,
    recorder: Recorder,
    applied: Applied,
    cfg: Config,
    /// Warnings already sent: (scenario uid, generation) → reason.
    warned: HashMap<(String, i64), String>,
    /// The attach faults of the followed generation, for the binding task.
    attach: watch::Sender<AttachSpec>,
    /// When the next scheduled fault changes.
    next_due: Option<Instant>,
}

impl Reconciler {
    async fn pass(&mut self, store: &Store<DynamicObject>, nodes: &Store<Node>, inv: &Inventory) {
        let node = self.cfg.node.clone();
        let labels: BTreeMap<String, String> = nodes
            .get(&reflector::ObjectRef::new(&node))
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let objects = store.state();
        let mut mine: Vec<(Arc<DynamicObject>, Scenario)> = Vec::new();
        for obj in &objects {
            let json = serde_json::to_value(obj.as_ref()).unwrap_or_default();
            match spec::parse(&json) {
                Ok(s) if s.selects(&node, &labels) => mine.push((obj.clone(), s)),
                Ok(_) => {
                    // Not (or no longer) for this node: its entry goes.
                    if entry_of(obj, &node).is_some() {
                        self.write(&obj.name_any(), None).await;
                    }
                }
                Err(e) => {
                    let key = (obj.uid().unwrap_or_default(), obj.metadata.generation.unwrap_or(0));
                    if self.warned.get(&key).map(String::as_str) != Some("Invalid") {
                        counter!(m::DECLARED_ERRORS, "stage" => "parse").increment(1);
                        warn!(scenario = %obj.name_any(), error = %e, "a DeviceScenario the agent cannot read: ignored");
                        self.warned.insert(key, "Invalid".into());
                    }
                }
            }
        }
        mine.sort_by(|a, b| a.1.precedence().cmp(&b.1.precedence()));
        let params = self.cfg.backend.parameters();
        // The one followed, the others told so.
        let mut iter = mine.into_iter();
        let winner = iter.next();
        for (obj, s) in iter {
            let w = &winner.as_ref().expect("a first").1;
            let outcome = Outcome {
                applied: false,
                reason: "Conflict".into(),
                message: format!(
                    "node {node} follows the older scenario {} (one scenario per node): this one waits",
                    w.name
                ),
            };
            self.report(&obj, &s, inv, outcome).await;
        }
        let params = match params {
            Ok(p) => p,
            Err(e) => {
                // No provider (the module unloaded): nothing can be applied.
                let _ = self.attach.send_replace(AttachSpec::default());
                if let Some((obj, s)) = &winner {
                    let outcome = Outcome {
                        applied: false,
                        reason: "NoDevices".into(),
                        message: format!("the device provider is not there: {e}"),
                    };
                    self.report(obj, s, inv, outcome).await;
                }
                return;
            }
        };
        let current = winner.as_ref().is_some_and(|(_, s)| {
            self.applied.uid == s.uid && self.applied.generation == s.generation && !s.uid.is_empty()
        });
        if !current && !self.applied.running.active().is_empty() {
            // The faults of what was applied end before anything else is
            // planned (from the inventory they leave: the next pass).
            self.end_faults(winner.as_ref().map(|(o, _)| o.as_ref())).await;
            return;
        }
        let Some((obj, s)) = &winner else {
            let _ = self.attach.send_replace(AttachSpec::default());
            if self.applied != Applied::default() {
                match plan::plan(None, inv, &params, &self.applied) {
                    Ok(steps) => {
                        info!(scenario = %self.applied.scenario, steps = steps.len(), "its scenario is gone: giving back what it set");
                        if self.apply(&steps, None).await.is_ok() {
                            self.applied = Applied::default();
                            save(&self.cfg.state_file, &self.applied);
                        }
                    }
                    Err(b) => debug!(reason = b.reason, message = %b.message, "cannot give back yet"),
                }
            }
            return;
        };
        let outcome = if current {
            self.run_faults(obj, s, inv).await;
            Outcome {
                applied: true,
                reason: "Applied".into(),
                message: format!("generation {} applied on node {node}", s.generation),
            }
        } else {
            let _ = self.attach.send_replace(AttachSpec::default());
            // What an earlier generation (or scenario) set and this one
            // does not ask is given back in the same plan.
            match plan::plan(Some(&s.spec), inv, &params, &self.applied) {
                Err(Blocked { reason, message }) => {
                    self.warn_once(obj, s, reason, &message).await;
                    Outcome {
                        applied: false,
                        reason: reason.into(),
                        message,
                    }
                }
                Ok(steps) => match self.apply(&steps, Some(obj)).await {
                    Ok(()) => {
                        info!(scenario = %s.name, generation = s.generation, steps = steps.len(), "scenario applied");
                        counter!(m::DECLARED_APPLIED).increment(1);
                        self.applied = Applied::after(&s.name, &s.uid, s.generation, &s.spec, now_ms());
                        save(&self.cfg.state_file, &self.applied);
                        self.run_faults(obj, s, inv).await;
                        Outcome {
                            applied: true,
                            reason: "Applied".into(),
                            message: format!(
                                "generation {} applied on node {node}: {}",
                                s.generation,
                                if steps.is_empty() {
                                    "nothing to change".to_string()
                                } else {
                                    steps.iter().map(Step::describe).collect::<Vec<_>>().join("; ")
                                }
                            ),
                        }
                    }
                    Err(message) => {
                        self.warn_once(obj, s, "WriteFailed", &message).await;
                        Outcome {
                            applied: false,
                            reason: "WriteFailed".into(),
                            message,
                        }
                    }
                },
            }
        };
        // The inventory is the one before the writes: the next scan's pass
        // reports the devices as they are after.
        self.report(obj, s, inv, outcome).await;
    }

    /// The followed generation's scheduled faults: those due now turned on
    /// or off, the next due time kept for the loop; and its attach faults
    /// handed to the binding task.
    async fn run_faults(&mut self, obj: &DynamicObject, s: &Scenario, inv: &Inventory) {
        let _ = self.attach.send_replace(s.spec.attach.unwrap_or_default());
        let now = now_ms();
        let (changes, next) = self.applied.running.tick(&s.spec.faults, inv, now);
        self.next_due = next.map(|at| Instant::now() + Duration::from_millis((at - now).max(0) as u64));
        for t in changes {
            let f = &s.spec.faults[t.fault];
            let step = match (f.action.health(), t.on) {
                (Some(h), true) => Step::SetHealth {
                    function: f.device.clone(),
                    health: h,
                },
                (Some(_), false) => Step::SetHealth {
                    function: f.device.clone(),
                    health: Health::Ok,
                },
                (None, on) => {
                    let Some((pf, None)) = parse_name(&f.device) else {
                        continue;
                    };
                    if on {
                        if let Some(d) = inv.functions.get(&f.device) {
                            self.applied.running.removed.insert(pf, d.numa_node);
                        }
                        Step::RemovePf { id: pf }
                    } else {
                        Step::AddPf {
                            id: pf,
                            numa_node: self.applied.running.removed.remove(&pf),
                        }
                    }
                }
            };
            let late = (now - t.due_ms).max(0) as f64 / 1000.0;
            histogram!(m::DECLARED_FAULT_LATENESS).record(late);
            let what = format!(
                "fault {} on {} {} ({}, {:.0} ms after its time)",
                f.action.as_str(),
                f.device,
                if t.on { "started" } else { "ended" },
                step.describe(),
                late * 1000.0
            );
            // A write the module refuses (the device gone) is said and the
            // fault counted as changed: it is not retried in a loop.
            let _ = self.apply(std::slice::from_ref(&step), None).await;
            self.applied.running.on[t.fault] = t.on;
            info!(%what, "scheduled fault");
            let reason = if t.on { "FaultStarted" } else { "FaultEnded" };
            self.event(obj, EventType::Normal, reason, &format!("{reason}/{}", f.device), &what)
                .await;
        }
        save(&self.cfg.state_file, &self.applied);
    }

    /// Ends every fault on (health back to ok, removed PFs plugged back).
    async fn end_faults(&mut self, obj: Option<&DynamicObject>) {
        let mut steps = Vec::new();
        for (device, action) in self.applied.running.active() {
            match (action.health(), parse_name(&device)) {
                (Some(_), _) => steps.push(Step::SetHealth {
                    function: device,
                    health: Health::Ok,
                }),
                (None, Some((pf, None))) => steps.push(Step::AddPf {
                    id: pf,
                    numa_node: self.applied.running.removed.get(&pf).copied(),
                }),
                (None, _) => {}
            }
        }
        info!(faults = steps.len(), "ending the scheduled faults of what was applied");
        for step in steps {
            // Each on its own: a device gone meanwhile does not keep the
            // others on.
            let _ = self.apply(std::slice::from_ref(&step), obj).await;
        }
        self.applied.running.on.iter_mut().for_each(|on| *on = false);
        self.applied.running.removed.clear();
        save(&self.cfg.state_file, &self.applied);
    }

    /// The steps, in order, each said in an Event; the first failure stops
    /// them (the next pass plans again from what the node is then).
    async fn apply(&mut self, steps: &[Step], obj: Option<&DynamicObject>) -> Result<(), String> {
        for step in steps {
            let backend = self.cfg.backend.clone();
            let s = step.clone();
            let r = tokio::task::spawn_blocking(move || match &s {
                Step::AddPf { id, numa_node } => backend.add_pf(*id, *numa_node),
                Step::RemovePf { id } => backend.remove_pf(*id),
                Step::SetVfs { pf, vfs } => backend.set_vfs(pf, *vfs),
                Step::SetHealth { function, health } => backend.set_health(function, *health),
                Step::FailAttaches { function, n } => backend.fail_attaches(function, *n),
            })
            .await
            .map_err(|e| format!("{}: {e}", step.describe()))?;
            match r {
                Ok(()) => {
                    counter!(m::DECLARED_STEPS, "step" => step.reason()).increment(1);
                    info!(step = %step.describe(), "declared change applied");
                    if let Some(obj) = obj {
                        let action = format!("{}/{}", step.reason(), step.target());
                        self.event(obj, EventType::Normal, step.reason(), &action, &step.describe())
                            .await;
                    }
                }
                Err(e) => {
                    counter!(m::DECLARED_ERRORS, "stage" => "apply").increment(1);
                    warn!(step = %step.describe(), error = %e, "a declared change failed");
                    return Err(format!("{} failed: {e}", step.describe()));
                }
            }
        }
        Ok(())
    }

    async fn warn_once(&mut self, obj: &DynamicObject, s: &Scenario, reason: &str, message: &str) {
        let key = (s.uid.clone(), s.generation);
        if self.warned.get(&key).map(String::as_str) == Some(reason) {
            return;
        }
        self.warned.insert(key, reason.into());
        warn!(scenario = %s.name, reason, message, "a declared scenario is not applied");
        self.event(obj, EventType::Warning, reason, "Apply", message).await;
    }

    /// An Event about the scenario (and the node). Events with the same
    /// reason and `action` (a device, for its changes) make one series: a
    /// flapping device is one Event whose count grows.
    async fn event(&self, obj: &DynamicObject, type_: EventType, reason: &str, action: &str, note: &str) {
        let reference = ObjectReference {
            api_version: Some(format!("{}/{}", self.group, spec::VERSION)),
            kind: Some(spec::KIND.into()),
            name: obj.metadata.name.clone(),
            uid: obj.metadata.uid.clone(),
            // No resourceVersion: it changes with every status write, and
            // the recorder would no longer see a repeat as one series.
            ..Default::default()
        };
        let node = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.cfg.node.clone()),
            ..Default::default()
        };
        let mut note = format!("node {}: {note}", self.cfg.node);
        note.truncate(1000);
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: Some(node),
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            counter!(m::DECLARED_ERRORS, "stage" => "event").increment(1);
            debug!(error = %e, "cannot record an Event");
        }
    }

    /// Writes this node's entry of the scenario's status, unless it holds
    /// that already.
    async fn report(&self, obj: &DynamicObject, s: &Scenario, inv: &Inventory, outcome: Outcome) {
        let previous = entry_of(obj, &self.cfg.node);
        let prev_conditions = previous
            .and_then(|e| e["conditions"].as_array())
            .cloned()
            .unwrap_or_default();
        let current = self.applied.uid == s.uid && self.applied.generation == s.generation;
        let faults_on = if current {
            self.applied.running.active()
        } else {
            Vec::new()
        };
        let entry = status::node_status(&self.cfg.node, s, inv, &outcome, &faults_on, &prev_conditions, &now());
        if previous.is_some_and(|p| status::same(p, &entry)) {
            return;
        }
        self.write(&s.name, Some(&entry)).await;
    }

    async fn write(&self, scenario: &str, entry: Option<&NodeStatus>) {
        let body = status::apply_body(&self.group, scenario, entry);
        let pp = PatchParams::apply(&field_manager(&self.cfg.node)).force();
        match self.api.patch_status(scenario, &pp, &Patch::Apply(&body)).await {
            Ok(_) => counter!(m::DECLARED_STATUS_WRITES).increment(1),
            Err(e) => {
                counter!(m::DECLARED_ERRORS, "stage" => "status").increment(1);
                warn!(scenario, error = %e, "cannot write the scenario's status for this node");
            }
        }
    }
}

/// A function as a scan would give it, for the tests.
#[cfg(test)]
pub(crate) fn test_function(pf: u32, vf: Option<u32>, vfs: u32) -> crate::inventory::Function {
    use crate::inventory::{Function, Health, Kind};
    let name = vf.map_or(format!("mock{pf}"), |v| format!("mock{pf}_vf{v}"));
    Function {
        name,
        kind: if vf.is_some() { Kind::Vf } else { Kind::Pf },
        pf_index: pf,
        vf_index: vf,
        uuid: String::new(),
        pci_address: String::new(),
        numa_node: pf % 2,
        memory_bytes: 16 << 30,
        capabilities: String::new(),
        fw_version: String::new(),
        physfn: None,
        health: Health::Ok,
        status: 0,
        sriov: vf.is_none().then_some((vfs, 8)),
        devnum: None,
        attach: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found() -> Result<watcher::Event<()>, watcher::Error> {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            kube::core::Status::failure("the server could not find the requested resource", "NotFound").with_code(404),
        ))))
    }

    /// An API without the resource: said once, not at every retry (each
    /// retry's relist starts with `Init`); recovered once a list is in.
    #[test]
    fn a_failing_watch_is_said_once_and_its_recovery_once() {
        let mut h = WatchHealth::default();
        let evs = [
            not_found(),
            Ok(watcher::Event::Init),
            not_found(),
            Ok(watcher::Event::Init),
            not_found(),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(())),
            not_found(),
        ];
        let said: Vec<Option<Said>> = evs.iter().map(|e| h.on(e)).collect();
        use Said::*;
        assert_eq!(
            said,
            [
                Some(Failing),
                None,
                None,
                None,
                None,
                None,
                Some(Recovered),
                None,
                Some(Failing)
            ]
        );
    }
}
