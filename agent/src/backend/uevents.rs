//! Kernel → uevents → triggers: the kernel's uevent netlink group (always)
//! and udev's (where `/run/udev` is shared with us), filtered to the
//! module's devices and the module itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kobject_uevent::{ActionType, UEvent};
use metrics::counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ModuleState, Trigger};
use crate::metrics as m;

/// The kernel module's name in `/module/<name>` uevents.
pub const MODULE: &str = "mock_accel";
/// The module's subsystem (bus and class).
pub const SUBSYSTEM: &str = "mock-accel";

pub fn action_name(a: ActionType) -> &'static str {
    match a {
        ActionType::Add => "add",
        ActionType::Remove => "remove",
        ActionType::Change => "change",
        ActionType::Move => "move",
        ActionType::Online => "online",
        ActionType::Offline => "offline",
        ActionType::Bind => "bind",
        ActionType::Unbind => "unbind",
    }
}

/// Whether a uevent concerns us: a mock-accel device, or the module itself.
pub fn relevant(ev: &UEvent) -> bool {
    ev.subsystem == SUBSYSTEM
        || (ev.subsystem == "module" && ev.devpath.as_os_str() == format!("/module/{MODULE}").as_str())
}

/// Parses a raw kernel uevent (`action@devpath\0KEY=VALUE\0...`); `None`
/// (and a metric) for a malformed one.
pub fn parse(packet: &[u8], source: &'static str) -> Option<UEvent> {
    match UEvent::from_netlink_packet(packet) {
        Ok(ev) => Some(ev),
        Err(e) => {
            counter!(m::UEVENTS_MALFORMED, "source" => source).increment(1);
            debug!(error = %e, len = packet.len(), "malformed uevent ignored");
            None
        }
    }
}

/// Counts a relevant event and turns it into a trigger.
pub fn trigger(ev: UEvent, source: &'static str, at: Instant, ebpf_attached: bool) -> Option<Trigger> {
    if !relevant(&ev) {
        return None;
    }
    counter!(m::UEVENTS, "source" => source, "action" => action_name(ev.action)).increment(1);
    debug!(source, action = action_name(ev.action), devpath = %ev.devpath.display(), seq = ev.seq, "uevent");
    Some(Trigger::Uevent {
        source,
        event: Box::new(ev),
        at,
        ebpf_attached,
    })
}

/// The kernel's uevent netlink group (1): reaches a pod without hostNetwork.
/// Module loads and unloads also go to `module` (for the eBPF probes).
pub async fn kernel_uevents(
    tx: mpsc::Sender<Trigger>,
    module: tokio::sync::watch::Sender<ModuleState>,
    ebpf_attached: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_KOBJECT_UEVENT};
    let mut socket = TokioSocket::new(NETLINK_KOBJECT_UEVENT)?;
    // Room for a storm (16 VFs x 3 events is small; a reload of 64 PFs is not).
    if let Err(e) = socket.socket_ref().set_rx_buf_sz(4usize << 20) {
        warn!(error = %e, "cannot enlarge the uevent socket buffer");
    }
    socket.socket_mut().bind(&SocketAddr::new(0, 1))?;
    info!("listening to kernel uevents (netlink group 1)");
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from_full() => r,
        };
        match received {
            Ok((packet, _)) => {
                let at = Instant::now();
                let event = parse(&packet, "kernel");
                if let Some(ev) = event.as_ref().filter(|ev| ev.subsystem == "module" && relevant(ev)) {
                    let loaded = ev.action == ActionType::Add;
                    module.send_modify(|m| {
                        m.loaded = loaded;
                        m.loads += loaded as u64;
                    });
                }
                let attached = ebpf_attached.load(Ordering::SeqCst);
                if let Some(t) = event.and_then(|ev| trigger(ev, "kernel", at, attached))
                    && tx.send(t).await.is_err()
                {
                    return Ok(());
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                counter!(m::UEVENT_OVERFLOWS).increment(1);
                warn!("uevents were lost (ENOBUFS): rescanning everything");
                if tx.send(Trigger::Overflow { at: Instant::now() }).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// udev's processed events (group 2), where udevd runs and `/run/udev` is
/// shared with us. A thread of its own: libudev's monitor is not Send.
pub fn udev_uevents(tx: mpsc::Sender<Trigger>, cancel: CancellationToken) -> Option<std::thread::JoinHandle<()>> {
    if !std::path::Path::new("/run/udev/control").exists() {
        info!("no /run/udev/control: udev events not used (kernel uevents suffice)");
        return None;
    }
    let spawned = std::thread::Builder::new().name("udev-monitor".into()).spawn(move || {
        use std::os::unix::io::AsRawFd;
        let monitor = match udev::MonitorBuilder::new()
            .and_then(|b| b.match_subsystem(SUBSYSTEM))
            .and_then(|b| b.listen())
        {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cannot listen to udev events; kernel uevents suffice");
                return;
            }
        };
        info!("listening to udev events");
        let fd = monitor.as_raw_fd();
        while !cancel.is_cancelled() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
            if ready <= 0 {
                continue;
            }
            for event in monitor.iter() {
                let at = Instant::now();
                let mut packet = format!("{}@{}\0", event.event_type(), event.devpath().to_string_lossy()).into_bytes();
                for p in event.properties() {
                    packet.extend_from_slice(p.name().as_encoded_bytes());
                    packet.push(b'=');
                    packet.extend_from_slice(p.value().as_encoded_bytes());
                    packet.push(0);
                }
                if let Some(t) = parse(&packet, "udev").and_then(|ev| trigger(ev, "udev", at, false))
                    && tx.blocking_send(t).is_err()
                {
                    return;
                }
            }
        }
    });
    spawned
        .map_err(|e| warn!(error = %e, "cannot start the udev thread"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(s: &str) -> Vec<u8> {
        s.replace('|', "\0").into_bytes()
    }

    #[test]
    fn kernel_packets_parse_and_filter() {
        let add = packet(
            "add@/devices/mock-accel/0000:1a:00.0/mock-accel/mock0|ACTION=add|DEVPATH=/devices/mock-accel/0000:1a:00.0/mock-accel/mock0|SUBSYSTEM=mock-accel|MOCK_ACCEL_UUID=x|SEQNUM=12|",
        );
        let ev = parse(&add, "kernel").unwrap();
        assert_eq!(ev.action, ActionType::Add);
        assert_eq!(ev.seq, 12);
        assert_eq!(ev.env.get("MOCK_ACCEL_UUID").map(String::as_str), Some("x"));
        assert!(relevant(&ev));

        let module = packet("add@/module/mock_accel|ACTION=add|DEVPATH=/module/mock_accel|SUBSYSTEM=module|SEQNUM=13|");
        assert!(relevant(&parse(&module, "kernel").unwrap()));
        let other_module = packet("add@/module/loop|ACTION=add|DEVPATH=/module/loop|SUBSYSTEM=module|SEQNUM=14|");
        assert!(!relevant(&parse(&other_module, "kernel").unwrap()));
        let other = packet(
            "change@/devices/virtual/net/lo|ACTION=change|DEVPATH=/devices/virtual/net/lo|SUBSYSTEM=net|SEQNUM=15|",
        );
        assert!(!relevant(&parse(&other, "kernel").unwrap()));
    }

    #[test]
    fn malformed_packets_are_rejected_not_fatal() {
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"garbage",
            b"add@/x\0SUBSYSTEM=mock-accel\0", // no SEQNUM
            b"explode@/x\0ACTION=explode\0DEVPATH=/x\0SUBSYSTEM=mock-accel\0SEQNUM=1\0",
            b"add@/x\0ACTION=add\0DEVPATH=/x\0SUBSYSTEM=mock-accel\0SEQNUM=notanumber\0",
        ] {
            assert!(parse(bad, "kernel").is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
