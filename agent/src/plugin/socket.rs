//! The plugin's sockets: bound so that the path is never absent (a newer
//! agent pod takes it over by rename), served until cancelled, listened on
//! again when deleted, left to a newer pod that replaced it, removed only
//! if still ours. [`Life`] decides (pure, unit-tested); [`serve`] runs it.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use metrics::counter;
use notify::Watcher;
use tokio::net::UnixListener;
use tokio::sync::{Notify, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tracing::{debug, info, warn};

use super::authority;
use crate::metrics as m;

/// Identifies the socket file we created, so that we never remove or keep
/// one that is not ours.
pub(super) type Ident = (u64, u64);

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

/// Where a socket's life stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Binding: the first time (taking the path over), or again.
    Binding,
    Serving {
        id: Ident,
    },
    /// Left to another agent's socket, until cancelled.
    Left,
    Stopped,
}

/// What happened to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// The bind's outcome: our socket, or `None` (another agent's is there).
    Bound(Option<Ident>),
    /// Something changed in the directory: what the path is now.
    Changed {
        now: Option<Ident>,
        socket: bool,
    },
    Cancelled,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Bind {
        take_over: bool,
    },
    /// Serve on the socket just bound.
    Listen,
    StopServer,
    /// Ours was deleted or replaced by a non-socket: counted, said.
    Recreate,
    /// Another agent's socket is there (`replaced`: it replaced ours;
    /// else it took the path after ours was deleted): leave it, until
    /// cancelled.
    Leave {
        replaced: bool,
    },
    /// Remove the socket if it is still this one.
    Remove(Ident),
    Done,
}

/// A socket's life as a state machine: [`Life::on`] from an event to steps.
#[derive(Debug)]
pub(super) struct Life(Stage);

impl Life {
    pub(super) fn start() -> (Life, Vec<Step>) {
        (Life(Stage::Binding), vec![Step::Bind { take_over: true }])
    }

    pub(super) fn on(&mut self, event: Event) -> Vec<Step> {
        let (next, steps) = match (self.0, event) {
            (Stage::Binding, Event::Bound(Some(id))) => (Stage::Serving { id }, vec![Step::Listen]),
            (Stage::Binding, Event::Bound(None)) => (Stage::Left, vec![Step::Leave { replaced: false }]),
            (Stage::Serving { id }, Event::Changed { now, .. }) if now == Some(id) => return vec![],
            // Another agent pod of this node (same socket path: no POD_UID)
            // listens there now: the newer one serves, and binding it back
            // would start a fight.
            (
                Stage::Serving { .. },
                Event::Changed {
                    now: Some(_),
                    socket: true,
                },
            ) => (Stage::Left, vec![Step::StopServer, Step::Leave { replaced: true }]),
            (Stage::Serving { .. }, Event::Changed { .. }) => (
                Stage::Binding,
                vec![Step::StopServer, Step::Recreate, Step::Bind { take_over: false }],
            ),
            (Stage::Serving { id }, Event::Cancelled) => {
                (Stage::Stopped, vec![Step::StopServer, Step::Remove(id), Step::Done])
            }
            (Stage::Binding | Stage::Left, Event::Cancelled) => (Stage::Stopped, vec![Step::Done]),
            (stage, _) => (stage, vec![]),
        };
        self.0 = next;
        steps
    }
}

/// Serves `make()` on `path` until cancelled; binds again whenever the
/// socket file is no longer ours (deleted, replaced). Removes only its own
/// socket on the way out.
/// `bound` hears once the socket first listens (dropped unheard if it
/// cannot be bound: the error is this function's result).
pub(super) async fn serve(
    path: PathBuf,
    what: &'static str,
    make: impl Fn() -> Router,
    recheck: Arc<Notify>,
    mut bound: Option<oneshot::Sender<()>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (mut life, steps) = Life::start();
    let mut todo: VecDeque<Step> = steps.into();
    let mut listener = None;
    let mut server: Option<(
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
        CancellationToken,
    )> = None;
    loop {
        while let Some(step) = todo.pop_front() {
            match step {
                Step::Bind { take_over } => {
                    let bound_now = bind(&path, take_over).with_context(|| format!("the {what} socket"))?;
                    let id = bound_now.as_ref().map(|(_, id)| *id);
                    listener = bound_now.map(|(l, _)| l);
                    todo.extend(life.on(Event::Bound(id)));
                }
                Step::Listen => {
                    info!(socket = %path.display(), "{what} socket listening");
                    if let Some(tx) = bound.take() {
                        let _ = tx.send(());
                    }
                    let stop = CancellationToken::new();
                    let incoming = UnixListenerStream::new(listener.take().expect("bound"));
                    let task = tokio::spawn(
                        // Each connection through the :authority relay (authority.rs):
                        // the real kubelet dials registration sockets by bare path, and
                        // gRPC's C core sends the socket path even for `unix:` targets
                        // (to either socket: plugin_api's C-core test).
                        make().serve_with_incoming_shutdown(
                            incoming.map(|conn| conn.map(authority::relayed)),
                            stop.clone().cancelled_owned(),
                        ),
                    );
                    server = Some((task, stop));
                }
                Step::StopServer => {
                    if let Some((task, stop)) = server.take() {
                        stop.cancel();
                        let _ = task.await;
                    }
                }
                Step::Recreate => {
                    counter!(m::SOCKET_RECREATIONS, "socket" => what).increment(1);
                    warn!(socket = %path.display(), "our {what} socket was removed or replaced: listening again");
                }
                Step::Leave { replaced } => {
                    if replaced {
                        warn!(socket = %path.display(), "our {what} socket was replaced by another agent's (a newer pod on this node with the same socket path): leaving it to that one");
                    } else {
                        warn!(socket = %path.display(), "our {what} socket was deleted and another agent's is there now: leaving it to that one");
                    }
                }
                Step::Remove(id) => remove_if_ours(&path, id),
                Step::Done => return Ok(()),
            }
        }
        let event = tokio::select! {
            _ = cancel.cancelled() => Event::Cancelled,
            _ = recheck.notified() => Event::Changed { now: ident(&path), socket: is_socket(&path) },
            r = async { (&mut server.as_mut().expect("serving").0).await }, if server.is_some() => {
                let r = r.context("the gRPC server panicked")?;
                r.with_context(|| format!("the {what} gRPC server on {} stopped", path.display()))?;
                anyhow::bail!("the {what} gRPC server on {} stopped", path.display());
            }
        };
        todo.extend(life.on(event));
    }
}

/// Watches the directories of our sockets (inotify through `notify`) and
/// pokes the servers when something there changes.
pub(super) fn watch_dirs(dirs: &[&Path], pokes: Vec<Arc<Notify>>) -> anyhow::Result<notify::RecommendedWatcher> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ident = (1, 10);
    const B: Ident = (1, 11);

    fn changed(now: Option<Ident>, socket: bool) -> Event {
        Event::Changed { now, socket }
    }

    #[test]
    fn a_socket_is_taken_over_then_served_until_cancelled_and_removed_if_ours() {
        let (mut life, steps) = Life::start();
        assert_eq!(steps, [Step::Bind { take_over: true }]);
        assert_eq!(life.on(Event::Bound(Some(A))), [Step::Listen]);
        assert_eq!(
            life.on(changed(Some(A), true)),
            [],
            "a change elsewhere in the directory"
        );
        assert_eq!(
            life.on(Event::Cancelled),
            [Step::StopServer, Step::Remove(A), Step::Done]
        );
    }

    #[test]
    fn a_deleted_socket_is_bound_again_but_never_taken_from_another_agent() {
        let (mut life, _) = Life::start();
        life.on(Event::Bound(Some(A)));
        assert_eq!(
            life.on(changed(None, false)),
            [Step::StopServer, Step::Recreate, Step::Bind { take_over: false }]
        );
        assert_eq!(life.on(Event::Bound(Some(B))), [Step::Listen]);
        // A regular file put there: bound again (the bind refuses it, saying so).
        assert_eq!(life.on(changed(Some(A), false))[2], Step::Bind { take_over: false });
        // Between our deletion and our bind another agent took the path.
        assert_eq!(life.on(Event::Bound(None)), [Step::Leave { replaced: false }]);
        assert_eq!(life.on(changed(None, false)), [], "left for good");
        assert_eq!(life.on(Event::Cancelled), [Step::Done]);
    }

    #[test]
    fn a_socket_replaced_by_another_agents_is_left_to_it() {
        let (mut life, _) = Life::start();
        life.on(Event::Bound(Some(A)));
        assert_eq!(
            life.on(changed(Some(B), true)),
            [Step::StopServer, Step::Leave { replaced: true }]
        );
        assert_eq!(life.on(Event::Bound(Some(A))), [], "nothing binds once left");
        assert_eq!(
            life.on(Event::Cancelled),
            [Step::Done],
            "and nothing of another's is removed"
        );
    }
}
