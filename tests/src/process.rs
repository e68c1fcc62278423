//! Children that die with the process that started them.
//!
//! Every long-lived child the rig starts (QEMU, etcd, kube-apiserver, an
//! agent, Prometheus, containerd) is started through [`spawn`]: the kernel
//! sends it SIGKILL when its parent goes (`PR_SET_PDEATHSIG`), however the
//! parent goes — a panic, a deadline's SIGKILL, a test runner killing it.
//! Without this, a killed test left QEMU, etcd and kube-apiserver running.
//!
//! The "parent" the kernel watches is the *thread* that forked the child,
//! not the process: a child spawned on a test's thread would be killed as
//! soon as that thread ends, and one spawned on a tokio blocking thread when
//! the pool retires it. So every child is forked by one thread that lives as
//! long as the process ([`spawner`]), and dies only with it.

use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` so that it is killed (SIGKILL) when this process ends.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// [`spawn`], then waits for it like [`Command::output`] (stdout and stderr
/// captured, stdin from /dev/null unless set).
pub fn output(mut cmd: Command) -> io::Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn(cmd)?.wait_with_output()
}

/// The thread that forks every child, and lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rig-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_here(&mut cmd));
                }
            })
            .expect("starting the rig's spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_here(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec (prctl,
    // getppid); no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody
            // would send the signal.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Waits for `child` to exit, at most `limit`; kills and reaps it past that.
/// `Ok(None)`: it was killed at the deadline.
pub fn wait_for(child: &mut Child, limit: Duration) -> io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes descended from `pid` (children, their children, ...),
/// read from /proc: (pid, command name, start time in clock ticks since
/// boot — with the pid, an identity a recycled pid does not share).
pub fn descendants(pid: u32) -> Vec<(u32, String, u64)> {
    let all: Vec<(u32, u32, String, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (ppid, name, start) = parse_stat(&stat)?;
            Some((p, ppid, name, start))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, ppid, name, start) in &all {
            if *ppid == parent {
                out.push((*p, name.clone(), *start));
                frontier.push(*p);
            }
        }
    }
    out
}

/// Whether the process `pid` that started at `start` (see [`descendants`])
/// still exists (a zombie counts as gone).
pub fn alive(pid: u32, start: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some((parse_stat(&s)?.2, state))
        })
        .is_some_and(|(s, state)| s == start && state != "Z")
}

/// (ppid, comm, starttime) from a `/proc/<pid>/stat` line; the command name
/// is in parentheses and may hold spaces and parentheses itself.
fn parse_stat(stat: &str) -> Option<(u32, String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... starttime is field 22 of the
    // line, the 20th after the name.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((ppid, name, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_whatever_the_name() {
        let line = "4242 (qemu (sys) x) S 17 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 3 0 987654 1 2";
        assert_eq!(parse_stat(line), Some((17, "qemu (sys) x".into(), 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    /// A child spawned from a thread that then ends lives on: the thread
    /// the kernel watches is the spawner, not the caller.
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            spawn(cmd).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "the child died with the thread");
        let me = std::process::id();
        let ours = descendants(me);
        assert!(
            ours.iter().any(|(p, name, _)| *p == child.id() && name == "sleep"),
            "{ours:?}"
        );
        let (_, _, start) = ours.iter().find(|(p, ..)| *p == child.id()).unwrap().clone();
        assert!(alive(child.id(), start));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(child.id(), start));
        assert_eq!(
            wait_for(&mut child, Duration::from_secs(1))
                .unwrap()
                .map(|s| s.success()),
            Some(false)
        );
    }

    #[test]
    fn output_is_captured_and_a_deadline_kills() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = output(cmd).unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn(cmd).unwrap();
        let t = Instant::now();
        assert!(wait_for(&mut child, Duration::from_millis(200)).unwrap().is_none());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
