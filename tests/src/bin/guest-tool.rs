//! Runs inside the guest for the scenarios:
//!
//! - `guest-tool uevents [--subsystem S]... [--module M]... [--ready FILE]`
//!   prints every kernel uevent (netlink group 1) of those subsystems and
//!   modules, one per line: `ACTION DEVPATH KEY=VALUE...`. It creates FILE
//!   once it listens; on SIGTERM it prints what is queued, then exits.
//! - `guest-tool write FILE VALUE` does one write(2) of VALUE to FILE and
//!   prints `ok` or the errno name (EINVAL, ERANGE, ...), as sysfs returns it.

use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "In-guest helper for the mock-device scenarios")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print kernel uevents, one per line.
    Uevents {
        /// Keep events of this SUBSYSTEM (repeatable; none keeps all).
        #[arg(long)]
        subsystem: Vec<String>,
        /// Keep load/unload events of this module (repeatable).
        #[arg(long)]
        module: Vec<String>,
        /// Create this file once the socket listens.
        #[arg(long)]
        ready: Option<String>,
    },
    /// Write VALUE to FILE in one write(2); print "ok" or the errno name.
    Write {
        file: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Uevents {
            subsystem,
            module,
            ready,
        } => uevents(&subsystem, &module, ready.as_deref()),
        Cmd::Write { file, value } => {
            let result = write_once(&file, value.as_bytes());
            println!("{}", result.as_ref().err().map_or("ok", String::as_str));
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}

fn write_once(file: &str, value: &[u8]) -> Result<(), String> {
    let path = CString::new(file).map_err(|_| "EINVAL".to_string())?;
    // SAFETY: plain syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno_name(last_errno()));
        }
        let n = libc::write(fd, value.as_ptr().cast(), value.len());
        let err = last_errno();
        libc::close(fd);
        if n < 0 {
            return Err(errno_name(err));
        }
    }
    Ok(())
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

fn uevents(subsystems: &[String], modules: &[String], ready: Option<&str>) -> anyhow::Result<()> {
    // SAFETY: socket setup with plain syscalls; every struct is zeroed first.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        );
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        let size: libc::c_int = 8 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1; // the kernel's own events
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            bail!("netlink bind: {}", std::io::Error::last_os_error());
        }
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        fd
    };
    if let Some(path) = ready {
        std::fs::write(path, b"").with_context(|| format!("creating {path}"))?;
    }

    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        let flags = if stopping { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            match last_errno() {
                libc::EAGAIN | libc::EINTR if stopping => break,
                libc::EAGAIN | libc::EINTR => continue,
                libc::ENOBUFS => {
                    writeln!(out, "ENOBUFS events were lost")?;
                    continue;
                }
                e => bail!("netlink recv: {}", std::io::Error::from_raw_os_error(e)),
            }
        }
        if let Some(line) = format_event(&buf[..n as usize], subsystems, modules) {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `ACTION DEVPATH KEY=VALUE...` if the event passes the filters.
fn format_event(msg: &[u8], subsystems: &[String], modules: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let mut fields = text.split('\0').filter(|f| !f.is_empty());
    let (action, devpath) = fields.next()?.split_once('@')?;
    let props: Vec<&str> = fields.collect();
    let subsystem = props.iter().find_map(|p| p.strip_prefix("SUBSYSTEM="))?;
    let keep = if subsystem == "module" {
        modules.iter().any(|m| devpath == format!("/module/{m}"))
    } else {
        subsystems.is_empty() || subsystems.iter().any(|s| s == subsystem)
    };
    keep.then(|| {
        let rest: Vec<&str> = props
            .iter()
            .copied()
            .filter(|p| !p.starts_with("ACTION=") && !p.starts_with("DEVPATH="))
            .collect();
        format!("{action} {devpath} {}", rest.join(" "))
    })
}
