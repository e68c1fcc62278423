//! The kubelet plugin: the registration socket in the kubelet's registry
//! directory, the DRA socket (v1, v1beta1 and the health stream) in the
//! plugin directory, both kept alive and checked.
//!
//! - [`driver`] prepares and releases claims' devices;
//! - [`cdi`] writes the CDI specs the runtime reads;
//! - [`checkpoint`] records what was prepared, crash-safely;
//! - [`health`] turns scans into the device health stream;
//! - [`grpc`] adapts all of it to the kubelet's protos.

pub mod authority;
pub mod cdi;
pub mod checkpoint;
pub mod driver;
pub mod grpc;
pub mod health;
pub mod status;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use mock_accel_proto::dra::{v1, v1beta1};
use mock_accel_proto::health::v1alpha1 as pb_health;
use mock_accel_proto::pluginregistration as reg;
use mock_accel_proto::services;
use notify::Watcher;
use tokio::net::UnixListener;
use tokio::sync::{Notify, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tracing::{Instrument, debug, info, info_span, warn};

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

/// Identifies the socket file we created, so that we never remove or keep
/// one that is not ours.
type Ident = (u64, u64);

fn ident(path: &Path) -> Option<Ident> {
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `sun_path`: a unix socket's path, its terminating NUL included.
const SUN_PATH_LEN: usize = 108;

/// Binds `path`. `take_over`: a socket there is replaced (at start: an
/// earlier run's, or an older agent pod's); else (listening again after
/// ours was deleted) one there means another agent took the path: `None`.
fn bind(path: &Path, take_over: bool) -> anyhow::Result<Option<(UnixListener, Ident)>> {
    check_len(path)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && !take_over => return Ok(None),
        Ok(m) if !m.file_type().is_socket() => {
            anyhow::bail!("{} exists and is not a socket: refusing to replace it", path.display())
        }
        _ => {}
    }
    if !take_over {
        // bind() fails where a file is: whoever took the path meanwhile
        // keeps it.
        return match UnixListener::bind(path) {
            Ok(listener) => {
                let id = ident(path).with_context(|| format!("{} vanished right after bind", path.display()))?;
                Ok(Some((listener, id)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(e).with_context(|| format!("listening on {}", path.display())),
        };
    }
    // Taking over: bind a hidden name beside the path (the kubelet's plugin
    // watcher skips dot files) and rename it over the path, so that the path
    // is never absent. With an unlink then a bind, an older agent pod of the
    // node, watching its socket, took the unlink for a deletion and bound
    // the path again in the gap; under load it won that race twenty times
    // in a row, and the newer pod gave up with "Address already in use".
    // Now the older one only ever sees a socket not its own, and leaves it.
    static TEMPS: AtomicU64 = AtomicU64::new(0);
    let temp = path.with_file_name(format!(
        ".{}.{}",
        std::process::id(),
        TEMPS.fetch_add(1, Ordering::Relaxed)
    ));
    check_len(&temp)?;
    // A name of an earlier process with our PID, killed between its bind
    // and its rename.
    let _ = fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).with_context(|| format!("listening on {}", temp.display()))?;
    let moved = ident(&temp)
        .with_context(|| format!("{} vanished right after bind", temp.display()))
        .and_then(|id| {
            fs::rename(&temp, path)
                .with_context(|| format!("moving {} to {}", temp.display(), path.display()))
                .map(|()| id)
        });
    if moved.is_err() {
        let _ = fs::remove_file(&temp);
    }
    Ok(Some((listener, moved?)))
}

fn check_len(path: &Path) -> anyhow::Result<()> {
    let len = path.as_os_str().len();
    if len >= SUN_PATH_LEN {
        anyhow::bail!(
            "{} is {len} bytes long: a unix socket path must be shorter than {SUN_PATH_LEN} bytes; choose a shorter --plugin-socket or --registry-dir",
            path.display()
        );
    }
    Ok(())
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn remove_if_ours(path: &Path, id: Ident) {
    if ident(path) == Some(id) {
        match fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "socket removed"),
            Err(e) => warn!(path = %path.display(), error = %e, "could not remove our socket"),
        }
    }
}

/// Serves `make()` on `path` until cancelled; binds again whenever the
/// socket file is no longer ours (deleted, replaced). Removes only its own
/// socket on the way out.
/// `bound` hears once the socket first listens (dropped unheard if it
/// cannot be bound: the error is this function's result).
async fn serve_socket(
    path: PathBuf,
    what: &'static str,
    make: impl Fn() -> Router,
    recheck: Arc<Notify>,
    mut bound: Option<oneshot::Sender<()>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut first = true;
    loop {
        let Some((listener, id)) = bind(&path, first).with_context(|| format!("the {what} socket"))? else {
            warn!(socket = %path.display(), "our {what} socket was deleted and another agent's is there now: leaving it to that one");
            cancel.cancelled().await;
            return Ok(());
        };
        first = false;
        info!(socket = %path.display(), "{what} socket listening");
        if let Some(tx) = bound.take() {
            let _ = tx.send(());
        }
        let stop = CancellationToken::new();
        let mut server = tokio::spawn(
            // Each connection through the :authority relay (authority.rs):
            // the real kubelet dials registration sockets by bare path, and
            // gRPC's C core sends the socket path even for `unix:` targets
            // (to either socket: plugin_api's C-core test).
            make().serve_with_incoming_shutdown(
                UnixListenerStream::new(listener).map(|conn| conn.map(authority::relayed)),
                stop.clone().cancelled_owned(),
            ),
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    stop.cancel();
                    let _ = (&mut server).await;
                    remove_if_ours(&path, id);
                    return Ok(());
                }
                _ = recheck.notified() => {
                    let now = ident(&path);
                    if now == Some(id) {
                        continue;
                    }
                    if now.is_some() && is_socket(&path) {
                        // Another agent pod of this node (same socket path:
                        // no POD_UID) listens there now: the newer one
                        // serves, and binding it back would start a fight.
                        warn!(socket = %path.display(), "our {what} socket was replaced by another agent's (a newer pod on this node with the same socket path): leaving it to that one");
                        stop.cancel();
                        let _ = (&mut server).await;
                        cancel.cancelled().await;
                        return Ok(());
                    }
                    counter!(m::SOCKET_RECREATIONS, "socket" => what).increment(1);
                    warn!(socket = %path.display(), "our {what} socket was removed or replaced: listening again");
                    stop.cancel();
                    let _ = (&mut server).await;
                    break;
                }
                r = &mut server => {
                    let r = r.context("the gRPC server panicked")?;
                    r.with_context(|| format!("the {what} gRPC server on {} stopped", path.display()))?;
                    anyhow::bail!("the {what} gRPC server on {} stopped", path.display());
                }
            }
        }
    }
}

/// Watches the directories of our sockets (inotify through `notify`) and
/// pokes the servers when something there changes.
fn watch_dirs(dirs: &[&Path], pokes: Vec<Arc<Notify>>) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| e.kind.is_remove() || e.kind.is_create() || e.kind.is_modify()) {
            pokes.iter().for_each(|p| p.notify_one());
        }
    })
    .context("creating the inotify watcher")?;
    for d in dirs {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", d.display()))?;
    }
    Ok(watcher)
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
        let endpoint = std::path::absolute(&sockets.dra).context("the DRA socket path")?;
        let info = reg::PluginInfo {
            r#type: services::DRA_PLUGIN_TYPE.into(),
            name: cfg.driver.clone(),
            endpoint: endpoint.to_string_lossy().into_owned(),
            supported_versions: vec![
                services::DRA_V1.into(),
                services::DRA_V1BETA1.into(),
                services::HEALTH_V1.into(),
                services::HEALTH_V1ALPHA1.into(),
            ],
        };
        gauge!(m::PLUGIN_REGISTERED).set(0.0);

        let (health_tx, health_rx) = watch::channel(Arc::new(Vec::<pb_health::DeviceHealth>::new()));
        let mut tasks = tokio::task::JoinSet::new();
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
        let (reg_poke, dra_poke) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        for dir in [sockets.registration.parent(), sockets.dra.parent()]
            .into_iter()
            .flatten()
        {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let dirs: Vec<&Path> = [sockets.registration.parent(), sockets.dra.parent()]
            .into_iter()
            .flatten()
            .collect();
        let _watcher = watch_dirs(&dirs, vec![reg_poke.clone(), dra_poke.clone()])?;

        // The DRA socket first: the kubelet dials it as soon as it sees the
        // registration socket.
        let (dra_bound, dra_listening) = oneshot::channel();
        {
            let (driver, health_rx) = (driver.clone(), health_rx.clone());
            tasks.spawn(
                serve_socket(
                    sockets.dra.clone(),
                    "dra",
                    move || {
                        Server::builder()
                            .add_service(v1::dra_plugin_server::DraPluginServer::new(grpc::DraV1(driver.clone())))
                            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(grpc::DraV1beta1(
                                driver.clone(),
                            )))
                            .add_service(pb_health::dra_resource_health_server::DraResourceHealthServer::new(
                                grpc::HealthService(health_rx.clone()),
                            ))
                            .add_service(
                                mock_accel_proto::health::v1::dra_resource_health_server::DraResourceHealthServer::new(
                                    grpc::HealthService(health_rx.clone()),
                                ),
                            )
                    },
                    dra_poke.clone(),
                    Some(dra_bound),
                    cancel.clone(),
                )
                .instrument(info_span!("dra")),
            );
        }
        // Not listening (it could not bind): no registration; the DRA
        // task's error ends the plugin, and the agent with it, below.
        let listening = dra_listening.await.is_ok();
        if listening {
            let registration = grpc::Registration {
                info,
                health: health.clone(),
            };
            tasks.spawn(
                serve_socket(
                    sockets.registration.clone(),
                    "registration",
                    move || {
                        Server::builder()
                            .add_service(reg::registration_server::RegistrationServer::new(registration.clone()))
                    },
                    reg_poke.clone(),
                    None,
                    cancel.clone(),
                )
                .instrument(info_span!("registration")),
            );
        }
        if listening {
            let (sockets, health, cancel) = (sockets.clone(), health.clone(), cancel.clone());
            tasks.spawn(
                async move {
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
                                reg_poke.notify_one();
                                dra_poke.notify_one();
                            }
                        }
                    }
                }
                .instrument(info_span!("self-check")),
            );
        }
        if listening {
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
