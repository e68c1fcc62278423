//! The kubelet plugin: the registration socket in the kubelet's registry
//! directory, the DRA socket (v1, v1beta1 and the health stream) in the
//! plugin directory, both kept alive and checked.
//!
//! - [`driver`] prepares and releases claims' devices;
//! - [`cdi`] writes the CDI specs the runtime reads;
//! - [`metadata`] writes the device metadata files they mount;
//! - [`checkpoint`] records what was prepared, crash-safely;
//! - [`health`] turns scans into the device health stream;
//! - [`grpc`] adapts all of it to the kubelet's protos.

mod apply;
pub mod authority;
pub mod cdi;
pub mod checkpoint;
pub mod driver;
pub mod grpc;
pub mod health;
pub mod metadata;
mod policy;
mod resolve;
mod socket;
pub mod status;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use mock_accel_proto::dra::{v1, v1beta1};
use mock_accel_proto::health::v1alpha1 as pb_health;
use mock_accel_proto::pluginregistration as reg;
use mock_accel_proto::services;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{Instrument, info, info_span, warn};

use crate::admin;
use crate::metrics as m;

/// How often the agent dials its own sockets (and the kubelet its GetInfo).
pub const SELF_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// Where the plugin listens.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub registration: PathBuf,
    pub dra: PathBuf,
}

/// Dials both sockets like the kubelet does; `/livez` fails while they do
/// not answer, and a missing socket is recreated.
async fn self_check(sockets: &Sockets) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let reg_ok = tokio::time::timeout(timeout, async {
        let ch = mock_accel_proto::client::connect(&sockets.registration)
            .await
            .map_err(|e| format!("dialing {}: {e}", sockets.registration.display()))?;
        reg::registration_client::RegistrationClient::new(ch)
            .get_info(reg::InfoRequest {})
            .await
            .map_err(|e| format!("GetInfo on {}: {e}", sockets.registration.display()))
    })
    .await
    .map_err(|_| format!("{} did not answer in {timeout:?}", sockets.registration.display()))?;
    reg_ok?;
    let dra_ok = tokio::time::timeout(timeout, async {
        let ch = mock_accel_proto::client::connect(&sockets.dra)
            .await
            .map_err(|e| format!("dialing {}: {e}", sockets.dra.display()))?;
        // An empty batch: answered without touching anything.
        v1::dra_plugin_client::DraPluginClient::new(ch)
            .node_prepare_resources(v1::NodePrepareResourcesRequest { claims: vec![] })
            .await
            .map_err(|e| format!("NodePrepareResources on {}: {e}", sockets.dra.display()))
    })
    .await
    .map_err(|_| format!("{} did not answer in {timeout:?}", sockets.dra.display()))?;
    dra_ok.map(|_| ())
}

/// Everything the plugin needs to run.
pub struct Plugin {
    pub driver: Arc<driver::Driver>,
    pub sockets: Sockets,
    pub health: Arc<admin::Health>,
    pub inventory: watch::Receiver<Arc<crate::inventory::Inventory>>,
}

type Tasks = tokio::task::JoinSet<anyhow::Result<()>>;

impl Plugin {
    /// Runs until cancelled; fails if a socket cannot be served.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        // Our tasks end with the agent, or together when one fails: then
        // the error is ours to return, and the agent's to act on.
        let cancel = cancel.child_token();
        let Plugin {
            driver,
            sockets,
            health,
            inventory,
        } = self;
        let cfg = driver.config().clone();
        match driver.check_checkpoint() {
            Ok(n) => {
                info!(claims = n, path = %cfg.plugin_dir.join(checkpoint::FILE_NAME).display(), "checkpoint loaded")
            }
            Err(e) => {
                warn!(error = %e, "the checkpoint cannot be used: prepare and unprepare will fail until it is fixed")
            }
        }
        let info = plugin_info(&cfg.driver, &sockets.dra)?;
        gauge!(m::PLUGIN_REGISTERED).set(0.0);

        let (health_tx, health_rx) = watch::channel(Arc::new(Vec::<pb_health::DeviceHealth>::new()));
        let mut tasks = Tasks::new();
        tasks.spawn(
            health::run(
                cfg.node.clone(),
                inventory,
                driver.prepared(),
                health_tx,
                cancel.clone(),
            )
            .instrument(info_span!("health")),
        );
        let dirs: Vec<&Path> = [sockets.registration.parent(), sockets.dra.parent()]
            .into_iter()
            .flatten()
            .collect();
        for dir in &dirs {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pokes = Pokes {
            registration: Arc::new(Notify::new()),
            dra: Arc::new(Notify::new()),
        };
        let _watcher = socket::watch_dirs(&dirs, vec![pokes.registration.clone(), pokes.dra.clone()])?;

        // The DRA socket first: the kubelet dials it as soon as it sees the
        // registration socket. Not listening (it could not bind): no
        // registration; the DRA task's error ends the plugin, and the agent
        // with it, below.
        if serve_dra(&mut tasks, &sockets.dra, driver, health_rx, &pokes, &cancel).await {
            let registration = grpc::Registration {
                info,
                health: health.clone(),
            };
            tasks.spawn(
                socket::serve(
                    sockets.registration.clone(),
                    "registration",
                    move || {
                        Server::builder()
                            .add_service(reg::registration_server::RegistrationServer::new(registration.clone()))
                    },
                    pokes.registration.clone(),
                    None,
                    cancel.clone(),
                )
                .instrument(info_span!("registration")),
            );
            tasks.spawn(
                self_checks(sockets.clone(), health.clone(), pokes, cancel.clone())
                    .instrument(info_span!("self-check")),
            );
            info!(registration = %sockets.registration.display(), dra = %sockets.dra.display(), "kubelet plugin serving");
        }

        let mut outcome = Ok(());
        while let Some(done) = tasks.join_next().await {
            let r = done.map_err(anyhow::Error::from).and_then(|r| r);
            if !cancel.is_cancelled() {
                outcome = r.and(Err(anyhow::anyhow!("a kubelet plugin task ended unexpectedly")));
                cancel.cancel();
            }
        }
        health.registered.store(false, Ordering::SeqCst);
        outcome
    }
}

/// Wake the socket tasks up to look at their paths.
struct Pokes {
    registration: Arc<Notify>,
    dra: Arc<Notify>,
}

/// What GetInfo answers: the driver, the DRA socket's absolute path, the
/// services served.
fn plugin_info(driver: &str, dra: &Path) -> anyhow::Result<reg::PluginInfo> {
    let endpoint = std::path::absolute(dra).context("the DRA socket path")?;
    Ok(reg::PluginInfo {
        r#type: services::DRA_PLUGIN_TYPE.into(),
        name: driver.to_string(),
        endpoint: endpoint.to_string_lossy().into_owned(),
        supported_versions: vec![
            services::DRA_V1.into(),
            services::DRA_V1BETA1.into(),
            services::HEALTH_V1.into(),
            services::HEALTH_V1ALPHA1.into(),
        ],
    })
}

/// Starts the DRA socket's task; whether it listens.
async fn serve_dra(
    tasks: &mut Tasks,
    path: &Path,
    driver: Arc<driver::Driver>,
    health: watch::Receiver<Arc<Vec<pb_health::DeviceHealth>>>,
    pokes: &Pokes,
    cancel: &CancellationToken,
) -> bool {
    let (bound, listening) = oneshot::channel();
    tasks.spawn(
        socket::serve(
            path.to_path_buf(),
            "dra",
            move || {
                Server::builder()
                    .add_service(v1::dra_plugin_server::DraPluginServer::new(grpc::DraV1(driver.clone())))
                    .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(grpc::DraV1beta1(
                        driver.clone(),
                    )))
                    .add_service(pb_health::dra_resource_health_server::DraResourceHealthServer::new(
                        grpc::HealthService(health.clone()),
                    ))
                    .add_service(
                        mock_accel_proto::health::v1::dra_resource_health_server::DraResourceHealthServer::new(
                            grpc::HealthService(health.clone()),
                        ),
                    )
            },
            pokes.dra.clone(),
            Some(bound),
            cancel.clone(),
        )
        .instrument(info_span!("dra")),
    );
    listening.await.is_ok()
}

/// Dials our own sockets every [`SELF_CHECK_PERIOD`]: `/livez` fails after
/// two failures in a row, and each failure makes the socket tasks look.
async fn self_checks(
    sockets: Sockets,
    health: Arc<admin::Health>,
    pokes: Pokes,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now() + SELF_CHECK_PERIOD;
    let mut tick = tokio::time::interval_at(start, SELF_CHECK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let r = self_check(&sockets).await;
        // Like the kubelet: two failures in a row, not one.
        failures = if r.is_ok() { 0 } else { failures + 1 };
        let was = health.sockets_ok.swap(failures < 2, Ordering::SeqCst);
        match r {
            Ok(()) if !was => info!("our sockets answer again"),
            Ok(()) => {}
            Err(e) => {
                counter!(m::SOCKET_CHECK_FAILURES).increment(1);
                warn!(error = %e, failures, "our own socket does not answer: /livez fails after two failures in a row");
                // A missed inotify event must not leave us deaf.
                pokes.registration.notify_one();
                pokes.dra.notify_one();
            }
        }
    }
}
