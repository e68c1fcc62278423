//! The sim follows the module's behaviour table (testkit's `behaviour`),
//! the same table the kernel module runs in a guest (`kmod_guest`).

use std::time::Duration;

use mock_accel_agent::backend::sim::Sim;
use mock_accel_agent::backend::sim::model::Params;
use mock_accel_agent::backend::{Backend, Sources, Trigger};
use mock_device_testkit::behaviour::{self, Observed, STEPS, Step};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A loaded sim, its attach timers running, and its events.
struct Loaded {
    sim: Sim,
    events: broadcast::Receiver<Trigger>,
    cancel: CancellationToken,
    _tasks: JoinSet<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    _sink: mpsc::Receiver<Trigger>,
}

fn load(params: &str) -> Loaded {
    let mut p = Params::default();
    for (k, v) in behaviour::params(params) {
        match k {
            "num_pfs" => p.num_pfs = v.parse().unwrap(),
            "numa_nodes" => p.numa_nodes = v.parse().unwrap(),
            "max_vfs" => p.max_vfs = v.parse().unwrap(),
            "memory_mib" => p.memory_mib = v.parse().unwrap(),
            "fabric_attach_ms" => p.fabric_attach_ms = v.parse().unwrap(),
            other => panic!("the sim has no parameter {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::open(dir.path(), "behaviour-node", p, "boot").unwrap();
    let events = sim.subscribe();
    let (tx, sink) = mpsc::channel(4096);
    let mut tasks = JoinSet::new();
    let cancel = CancellationToken::new();
    sim.watch(
        Sources {
            uevents: false,
            ebpf: false,
        },
        tx,
        &mut tasks,
        &cancel,
    );
    Loaded {
        sim,
        events,
        cancel,
        _tasks: tasks,
        _dir: dir,
        _sink: sink,
    }
}

/// The events queued so far, in the table's form.
fn drain(rx: &mut broadcast::Receiver<Trigger>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(t) = rx.try_recv() {
        let Trigger::Uevent { event, .. } = t else {
            panic!("not a uevent: {t:?}")
        };
        let action = format!("{:?}", event.action).to_ascii_lowercase();
        out.extend(behaviour::summary(&action, |k| event.env.get(k).cloned()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_follows_the_behaviour_table() {
    let mut loaded: Option<Loaded> = None;
    let mut observed = Vec::new();
    for step in STEPS {
        let seen = match *step {
            Step::Load(params) => {
                if let Some(old) = loaded.take() {
                    old.cancel.cancel();
                }
                loaded = Some(load(params));
                Observed::default()
            }
            Step::Write { path, value, .. } => {
                let l = loaded.as_mut().expect("loaded");
                let result = match l.sim.write(path, value) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.name().to_string(),
                };
                Observed {
                    result,
                    events: drain(&mut l.events),
                }
            }
            Step::Read { path, .. } => {
                let l = loaded.as_mut().expect("loaded");
                let result = match l.sim.read(path) {
                    Ok(v) => v.trim_end_matches('\n').to_string(),
                    Err(e) => e.name().to_string(),
                };
                Observed {
                    result,
                    events: drain(&mut l.events),
                }
            }
            Step::Sleep { ms, .. } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let l = loaded.as_mut().expect("loaded");
                Observed {
                    result: String::new(),
                    events: drain(&mut l.events),
                }
            }
        };
        observed.push(seen);
    }
    if let Some(l) = loaded {
        l.cancel.cancel();
    }
    if let Err(diffs) = behaviour::check(&observed) {
        panic!("the sim differs from the module's behaviour table:\n{diffs}");
    }
}
