//! The sim's local control, driven the way the module is: a unix socket
//! in the state directory (mode 0600: the node's root, or `kubectl exec`
//! into the agent) taking one request per line, with the module's file
//! names relative to its sysfs directories:
//!
//! ```text
//! write bus/new_device 4 1      ->  ok
//! write class/mock1/health bad  ->  error EINVAL
//! read class/mock1/status       ->  ok 0
//! list                          ->  ok mock0 mock1 mock1_vf0 ...
//! ```
//!
//! `mock-accel-agent ctl` is its client. Not on the metrics port: anyone who can
//! scrape could fail devices.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Sim;
use super::model::Errno;

/// A request longer than this is refused (EINVAL), like the module's
/// 64-byte bus writes, with room for paths.
const MAX_LINE: usize = 4096;

/// Serves the control socket at `path` until `cancel`.
pub async fn serve(sim: Sim, path: PathBuf, cancel: CancellationToken) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "the sim's control socket listens");
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
            r = listener.accept() => r?,
        };
        let (sim, cancel) = (sim.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sim, stream, cancel).await {
                debug!(error = %e, "a control connection ended");
            }
        });
    }
}

async fn connection(sim: Sim, stream: UnixStream, cancel: CancellationToken) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(64 << 20)).lines();
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            l = lines.next_line() => match l? {
                Some(l) => l,
                None => return Ok(()),
            },
        };
        let sim = sim.clone();
        let reply = tokio::task::spawn_blocking(move || answer(&sim, &line))
            .await
            .unwrap_or_else(|e| format!("error EIO {e}"));
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
}

/// One request's reply line.
pub fn answer(sim: &Sim, line: &str) -> String {
    if line.len() > MAX_LINE {
        return format!("error {}", Errno(libc::EINVAL));
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let result = match verb {
        "list" if rest.is_empty() => Ok(sim.names().join(" ")),
        "read" if !rest.is_empty() && !rest.contains(' ') => sim.read(rest).map(|v| v.trim_end().to_string()),
        "write" => match rest.split_once(' ') {
            Some((path, value)) => {
                let r = sim.write(path, value);
                match r {
                    Ok(()) => info!(path, value, "sim: written"),
                    Err(e) => warn!(path, value, errno = %e, "sim: a write was refused"),
                }
                r.map(|()| String::new())
            }
            None => Err(Errno(libc::EINVAL)),
        },
        _ => Err(Errno(libc::EINVAL)),
    };
    match result {
        Ok(v) if v.is_empty() => "ok".into(),
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("error {e}"),
    }
}

/// The client: sends one request, returns the reply's value or errno.
pub async fn request(socket: &Path, line: &str) -> anyhow::Result<Result<String, String>> {
    anyhow::ensure!(!line.contains('\n'), "a request is one line");
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the sim's control socket {}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    let reply = BufReader::new(read)
        .lines()
        .next_line()
        .await?
        .context("the agent closed the control socket without a reply")?;
    Ok(match reply.split_once(' ').unwrap_or((reply.as_str(), "")) {
        ("ok", v) => Ok(v.to_string()),
        ("error", e) => Err(e.to_string()),
        _ => anyhow::bail!("an unexpected reply: {reply:?}"),
    })
}

/// `mock-accel-agent ctl`: the sim's control from a shell.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mock-accel-agent ctl",
    about = "Drive the sim's devices (--devices=sim) as the module's files are driven: prints `ok`, the value read, or the module's errno (EINVAL, EBUSY, ...) and exits 1"
)]
pub struct Ctl {
    /// The sim's state directory (the agent's --sim-dir).
    #[arg(long, env = "SIM_DIR", default_value = "/run/mock-accel-sim")]
    pub sim_dir: PathBuf,
    #[command(subcommand)]
    pub op: Op,
}

#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Write VALUE to FILE: bus/new_device ("ID [NUMA]"), bus/del_device,
    /// class/<function>/{status,health,attach,fail_attach,sriov_numvfs}.
    Write {
        file: String,
        #[arg(allow_hyphen_values = true, num_args = 1.., required = true)]
        value: Vec<String>,
    },
    /// Read FILE: class/<function>/<attribute>, parameters/<parameter>.
    Read { file: String },
    /// The functions, one per line.
    List,
}

/// Runs one `ctl` command; `Ok(false)` when the sim refused it.
pub async fn ctl(args: Ctl) -> anyhow::Result<bool> {
    let line = match &args.op {
        Op::Write { file, value } => format!("write {file} {}", value.join(" ")),
        Op::Read { file } => format!("read {file}"),
        Op::List => "list".into(),
    };
    let socket = args.sim_dir.join(super::SOCKET);
    Ok(match request(&socket, &line).await? {
        Ok(v) if matches!(args.op, Op::List) => {
            v.split(' ').filter(|n| !n.is_empty()).for_each(|n| println!("{n}"));
            true
        }
        Ok(v) if v.is_empty() => {
            println!("ok");
            true
        }
        Ok(v) => {
            println!("{v}");
            true
        }
        Err(errno) => {
            println!("{errno}");
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::Params;
    use super::*;

    #[tokio::test]
    async fn requests_get_the_modules_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::open(dir.path(), "n1", Params::default(), "b").unwrap();
        let socket = dir.path().join("control.sock");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(sim.clone(), socket.clone(), cancel.clone()));
        while !socket.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ask = |l: &'static str| {
            let s = socket.clone();
            async move { request(&s, l).await.unwrap() }
        };
        assert_eq!(ask("write bus/new_device 4 1").await, Ok(String::new()));
        assert_eq!(ask("write bus/new_device 4").await, Err("EEXIST".into()));
        assert_eq!(ask("read class/mock4/numa_node").await, Ok("1".into()));
        assert_eq!(ask("write class/mock4/health bad").await, Err("EINVAL".into()));
        assert_eq!(ask("write class/mock4/health failed").await, Ok(String::new()));
        assert_eq!(ask("write class/mock4/status 1").await, Err("EIO".into()));
        assert_eq!(ask("read class/mock9/status").await, Err("ENOENT".into()));
        assert_eq!(ask("list").await, Ok("mock0 mock1 mock2 mock3 mock4".into()));
        assert_eq!(ask("frobnicate").await, Err("EINVAL".into()));
        assert_eq!(ask("write class/mock4/health").await, Err("EINVAL".into()));
        cancel.cancel();
        server.await.unwrap().unwrap();
        assert!(!socket.exists(), "the socket goes with the agent");
    }
}
