//! mock-device's node agent: kernel → events → inventory → publisher.
//!
//! - [`backend`] owns the devices: scans, allocation, attach, hot-plug and
//!   the triggers that say a scan is due (for the kernel module: its sysfs
//!   files, uevents, and kprobes on its probe/remove where eBPF is allowed);
//! - [`inventory`] is the devices as typed records;
//! - [`events`] turns triggers (and a safety-net timer) into coalesced scans;
//! - [`slices`] turns an inventory into ResourceSlices and plans writes;
//! - [`flapping`] holds a flapping device's published health at its worst;
//! - [`publisher`] makes the API hold them, whatever happens to it;
//! - [`plugin`] is the kubelet's DRA plugin: prepares and releases
//!   claims' devices (CDI, checkpoint) and streams device health;
//! - [`binding`] attaches fabric-attached devices that claims hold and
//!   reports their binding conditions to the scheduler;
//! - [`claims`] reads claims' allocations and writes their device status;
//! - [`heartbeat`] keeps a Lease per node agent, for the controller;
//! - [`controller`] (`--mode=controller`) is the cluster-wide view: fleet
//!   metrics and the clean-up of slices whose node or agent is gone;
//! - [`fleet`] (`--mode=fleet`) serves many agentless nodes (kwok's) from
//!   one process, each with its own sim, through the same inventory,
//!   publisher, declared-devices and heartbeat code as a node agent;
//! - [`admin`] serves `/livez`, `/readyz` and `/metrics`.

pub mod admin;
pub mod api;
pub mod args;
pub mod backend;
pub mod binding;
pub mod check;
pub mod claims;
pub mod controller;
pub mod declared;
pub mod events;
#[doc(hidden)]
pub mod failpoints;
pub mod flapping;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod heartbeat;
pub mod inventory;
pub mod metrics;
pub mod plugin;
pub mod publisher;
pub mod slices;
pub mod turn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

pub use args::{Args, LogFormat, Mode};

/// A running agent.
pub struct Agent {
    pub admin_addr: SocketAddr,
    pub health: Arc<admin::Health>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// How to start one: the command line, and optionally where the API is
/// (else the pod's service account or KUBECONFIG) and a source of extra
/// events (tests inject uevents there).
pub struct Options {
    pub args: Args,
    pub api: Option<kube::Config>,
    pub injected: Option<mpsc::Receiver<backend::Trigger>>,
}

/// What both modes set up before their tasks: metrics, health, the admin
/// listener and the API clients.
struct Common {
    health: Arc<admin::Health>,
    listener: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    clients: api::Clients,
}

impl Common {
    async fn setup(args: &Args, api: Option<kube::Config>, node: &str, mode: &'static str) -> anyhow::Result<Common> {
        let handle = metrics::install();
        ::metrics::gauge!(metrics::INFO, "version" => env!("CARGO_PKG_VERSION"), "driver" => args.driver_name.clone(), "node" => node.to_string(), "mode" => mode).set(1.0);
        let health = admin::Health::new(handle);
        let listener = admin::bind(args.admin_address)
            .await
            .with_context(|| format!("binding the admin address {}", args.admin_address))?;
        let admin_addr = listener.local_addr()?;
        let clients = match api {
            Some(c) => api::Clients::new(c, args.api_timeout)?,
            None => api::Clients::infer(args.api_timeout).await?,
        };
        Ok(Common {
            health,
            listener,
            admin_addr,
            clients,
        })
    }

    /// The agent, its tasks run by `run` until cancelled.
    fn spawn<F>(self, run: impl FnOnce(Common, CancellationToken) -> F) -> Agent
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let (admin_addr, health) = (self.admin_addr, self.health.clone());
        let task = tokio::spawn(run(self, cancel.clone()));
        Agent {
            admin_addr,
            health,
            cancel,
            task,
        }
    }
}

impl Agent {
    pub async fn start(opts: Options) -> anyhow::Result<Agent> {
        let args = opts.args;
        anyhow::ensure!(
            args.mode != Mode::Check,
            "--mode=check runs once (check::run), it is not a service"
        );
        if args.mode == Mode::Controller {
            return Agent::start_controller(args, opts.api).await;
        }
        if args.mode == Mode::Fleet {
            return Agent::start_fleet(args, opts.api).await;
        }
        let node = args
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .context("the node name is required in node-agent mode: set NODE_NAME or --node-name")?;
        let common = Common::setup(&args, opts.api, &node, "node-agent").await?;
        let injected = opts.injected;
        Ok(common.spawn(move |c, cancel| run(args, node, c, injected, cancel)))
    }

    async fn start_controller(args: Args, api: Option<kube::Config>) -> anyhow::Result<Agent> {
        let timing = args.leader_timing().map_err(anyhow::Error::msg)?;
        let common = Common::setup(&args, api, "", "controller").await?;
        let cfg = controller::Config {
            driver: args.driver_name.clone(),
            namespace: args.namespace.clone(),
            identity: controller::leader::identity(),
            timing,
            agent_grace: args.agent_grace_period,
            audit: args.rescan(),
            // On a shared kernel the controller gives back gone nodes' PFs.
            shared_kernel: (args.shared_kernel && args.devices == args::Devices::Kernel)
                .then(|| Arc::new(backend::sysfs::Sysfs::new(&args.sysfs_root))),
        };
        Ok(common.spawn(move |c, cancel| async move {
            let mut tasks = JoinSet::new();
            tasks.spawn(admin::serve(c.listener, c.health.clone(), cancel.clone()).instrument(info_span!("admin")));
            tasks.spawn(
                controller::run(c.clients, cfg, c.health.clone(), cancel.clone()).instrument(info_span!("controller")),
            );
            supervise(tasks, &c.health, &cancel).await
        }))
    }

    async fn start_fleet(args: Args, api: Option<kube::Config>) -> anyhow::Result<Agent> {
        anyhow::ensure!(
            args.devices == args::Devices::Sim,
            "--mode=fleet serves simulated nodes: it needs --devices=sim (kwok's nodes have no kernel of their own)"
        );
        let boot_id = std::fs::read_to_string(&args.boot_id_path)
            .with_context(|| format!("reading the boot ID from {}", args.boot_id_path.display()))?;
        let params = args.sim_params();
        params.check().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            args.fleet_vfs <= args.sim_max_vfs,
            "--fleet-vfs={} is above --sim-max-vfs={}",
            args.fleet_vfs,
            args.sim_max_vfs
        );
        let cfg = fleet::Config {
            driver: args.driver_name.clone(),
            selector: args.fleet_node_selector.clone(),
            max_nodes: args.fleet_max_nodes as usize,
            sim_dir: args.sim_dir.clone(),
            params,
            vfs: args.fleet_vfs,
            boot_id: boot_id.trim().to_string(),
            max_devices: args.max_devices_per_slice as usize,
            counters: args.shared_counters,
            taints: args.health_taints,
            shared: args.consumable_capacity,
            lists: args.list_attributes,
            groups: args.compatibility_groups,
            host_overhead: args.host_overhead(),
            scenarios: args.scenarios,
            heartbeat: (!args.heartbeat_interval.is_zero()).then_some(args.heartbeat_interval),
            namespace: args.namespace.clone(),
        };
        let common = Common::setup(&args, api, "", "fleet").await?;
        Ok(common.spawn(move |c, cancel| async move {
            let mut tasks = JoinSet::new();
            tasks.spawn(admin::serve(c.listener, c.health.clone(), cancel.clone()).instrument(info_span!("admin")));
            tasks.spawn(fleet::run(c.clients, cfg, c.health.clone(), cancel.clone()).instrument(info_span!("fleet")));
            supervise(tasks, &c.health, &cancel).await
        }))
    }

    /// Asks every task to stop and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await?
    }

    /// Waits until the agent ends by itself (a critical task failed).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

type Tasks = JoinSet<anyhow::Result<()>>;

/// The node agent: kernel → backend → events → inventory → publisher,
/// the kubelet plugin and the binding reporter beside it.
/// The node's devices, from the backend `--devices` names.
fn open_devices(args: &Args, node: &str) -> anyhow::Result<Arc<dyn backend::Backend>> {
    Ok(match args.devices {
        args::Devices::Kernel => {
            if !args.shared_kernel && (args.take_pfs > 0 || !args.take_pf_ids.is_empty()) {
                anyhow::bail!("--take-pfs and --take-pf-ids need --shared-kernel");
            }
            if args.shared_kernel {
                info!(
                    take = args.take_pfs,
                    ids = ?args.take_pf_ids,
                    "devices: a shared kernel, only the PFs this node owns"
                );
            }
            Arc::new(
                backend::sysfs::Sysfs::new(&args.sysfs_root).owned_by(backend::owner::Ownership {
                    node: node.to_string(),
                    shared: args.shared_kernel,
                    take: args.take_pfs,
                    take_ids: args.take_pf_ids.clone(),
                }),
            )
        }
        args::Devices::Sim => {
            let boot_id = std::fs::read_to_string(&args.boot_id_path)
                .with_context(|| format!("reading the boot ID from {}", args.boot_id_path.display()))?;
            let params = args.sim_params();
            let sim = backend::sim::Sim::open(&args.sim_dir, node, params, boot_id.trim())
                .with_context(|| format!("opening the sim's devices in {}", args.sim_dir.display()))?;
            info!(dir = %args.sim_dir.display(), "devices: the user-space sim (no kernel module)");
            Arc::new(sim)
        }
    })
}

async fn run(
    args: Args,
    node: String,
    common: Common,
    injected: Option<mpsc::Receiver<backend::Trigger>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Common {
        health,
        listener,
        clients,
        ..
    } = common;
    let (trigger_tx, trigger_rx) = mpsc::channel(4096);
    let devices = open_devices(&args, &node)?;
    let mut tasks = Tasks::new();

    tasks.spawn(admin::serve(listener, health.clone(), cancel.clone()).instrument(info_span!("admin")));
    let sources = backend::Sources {
        uevents: args.uevents,
        ebpf: args.ebpf,
    };
    devices.watch(sources, trigger_tx.clone(), &mut tasks, &cancel);
    if let Some(rx) = injected {
        tasks.spawn(forward(rx, trigger_tx.clone(), cancel.clone()));
    }
    drop(trigger_tx);
    // Every scan goes to the publisher, and the newest to the kubelet plugin.
    let (tee_tx, snap_rx, inventory_rx) = events::tee(&mut tasks);
    let (attach_tx, attach_rx) = tokio::sync::watch::channel(declared::spec::AttachSpec::default());
    tasks.spawn(
        binding::run(
            clients.requests.clone(),
            clients.watches.clone(),
            binding::Config {
                driver: args.driver_name.clone(),
                node: node.clone(),
                backend: devices.clone(),
                faults: attach_rx,
            },
            inventory_rx.clone(),
            cancel.clone(),
        )
        .instrument(info_span!("binding")),
    );
    if args.scenarios {
        tasks.spawn(
            declared::run(
                clients.requests.clone(),
                clients.watches.clone(),
                declared::Config {
                    driver: args.driver_name.clone(),
                    node: node.clone(),
                    backend: devices.clone(),
                    state_file: args.plugin_paths().0.join("declared.json"),
                    attach: attach_tx,
                },
                inventory_rx.clone(),
                cancel.clone(),
            )
            .instrument(info_span!("declared")),
        );
    }
    if args.kubelet_plugin {
        let plugin = kubelet_plugin(&args, &node, &devices, &clients, &health, inventory_rx);
        tasks.spawn(plugin.run(cancel.clone()).instrument(info_span!("plugin")));
    } else {
        info!("kubelet plugin off (--kubelet-plugin=false): publishing only");
    }
    tasks.spawn(
        events::inventory_task(
            devices.clone(),
            trigger_rx,
            tee_tx,
            args.rescan(),
            events::Coalesce::default(),
            cancel.clone(),
        )
        .instrument(info_span!("inventory")),
    );
    if !args.heartbeat_interval.is_zero() {
        tasks.spawn(
            heartbeat::run(
                kube::Api::namespaced(clients.requests.clone(), &args.namespace),
                args.driver_name.clone(),
                node.clone(),
                args.heartbeat_interval,
                cancel.clone(),
            )
            .instrument(info_span!("heartbeat")),
        );
    }
    let publishing = publisher::Config {
        driver: args.driver_name.clone(),
        node: node.clone(),
        max_devices: args.max_devices_per_slice as usize,
        counters: args.shared_counters,
        taints: args.health_taints,
        shared: args.consumable_capacity,
        lists: args.list_attributes,
        groups: args.compatibility_groups,
        host_overhead: args.host_overhead(),
        turn: turn::Turn::new(&args.plugin_paths().0, &node, turn::identity(args.pod_uid.as_deref())),
    };
    tasks.spawn(
        publisher::run(clients, publishing, snap_rx, health.clone(), cancel.clone())
            .instrument(info_span!("publisher")),
    );
    info!(%node, driver = %args.driver_name, devices = %devices.location(), "node agent started");
    let outcome = supervise(tasks, &health, &cancel).await;
    info!("node agent stopped");
    outcome
}

/// Injected triggers (tests) join the backend's.
async fn forward(
    mut rx: mpsc::Receiver<backend::Trigger>,
    tx: mpsc::Sender<backend::Trigger>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let t = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            t = rx.recv() => t,
        };
        // The injector went away: the other sources go on.
        let Some(t) = t else {
            cancel.cancelled().await;
            return Ok(());
        };
        if tx.send(t).await.is_err() {
            return Ok(());
        }
    }
}

/// The kubelet plugin of this node.
fn kubelet_plugin(
    args: &Args,
    node: &str,
    devices: &Arc<dyn backend::Backend>,
    clients: &api::Clients,
    health: &Arc<admin::Health>,
    inventory: tokio::sync::watch::Receiver<Arc<inventory::Inventory>>,
) -> plugin::Plugin {
    let (plugin_dir, dra) = args.plugin_paths();
    let driver = Arc::new(plugin::driver::Driver::new(
        plugin::driver::Config {
            driver: args.driver_name.clone(),
            node: node.to_string(),
            cdi_root: args.cdi_root.clone(),
            plugin_dir,
            boot_id_path: args.boot_id_path.clone(),
            // Always: two pods of a node may run side by side (a rolling
            // update), with or without POD_UID.
            cross_pod_lock: true,
            device_metadata: args.device_metadata,
        },
        devices.clone(),
        clients.requests.clone(),
        inventory.clone(),
    ));
    health.plugin.store(true, Ordering::SeqCst);
    plugin::Plugin {
        driver,
        sockets: plugin::Sockets {
            registration: args.registration_socket(),
            dra,
        },
        health: health.clone(),
        inventory,
    }
}

/// The first task to end ends them all: by cancellation, or by failure.
async fn supervise(
    mut tasks: JoinSet<anyhow::Result<()>>,
    health: &admin::Health,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if !cancel.is_cancelled() {
            health.alive.store(false, Ordering::SeqCst);
            match &result {
                Err(e) => error!(error = %format!("{e:#}"), "a task failed: stopping"),
                Ok(()) => error!("a task ended unexpectedly: stopping"),
            }
            outcome = result.and(Err(anyhow::anyhow!("a task ended unexpectedly")));
            cancel.cancel();
        }
    }
    outcome
}

/// Sets up tracing for the process from `--v` and `--log-format`.
pub fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| args.log_filter().into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
