//! Kernel → eBPF → triggers: kprobes on the module's probe and remove attach
//! points (kmod/ABI.md) give every device event a kernel timestamp and a
//! second signal that does not depend on netlink buffers. They feed the same
//! coalesced scans as uevents. Where eBPF cannot be used (no privileges, no
//! kprobes) the agent says so once and goes on with uevents alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{PerCpuArray, RingBuf};
use aya::programs::KProbe;
use aya::programs::kprobe::KProbeLinkId;
use metrics::{counter, gauge};
use mock_accel_ebpf::{ATTACH_PROBE, ATTACH_REMOVE, KIND_PROBE, MAP_DROPS, MAP_EVENTS, ProbeEvent};
use mock_accel_ebpf::{PROGRAM_PROBE_ENTRY, PROGRAM_PROBE_RETURN, PROGRAM_REMOVE};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ModuleState, Trigger};
use crate::metrics as m;

/// The eBPF object the build script built (empty without the `ebpf` feature).
static BYTECODE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mock-accel-ebpf"));

/// Where the probes stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// eBPF cannot be used here.
    Unavailable,
    /// Waiting for the module.
    Detached,
    /// Attached to the module loaded `loads` times so far.
    Attached { loads: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Attach,
    Detach,
    /// The module was reloaded under us: the old links are dead.
    Reattach,
    Nothing,
}

impl Attach {
    /// The next state and what to do, when the module's state changes.
    pub fn on_module(self, m: ModuleState) -> (Attach, Action) {
        match (self, m.loaded) {
            (Attach::Unavailable, _) => (Attach::Unavailable, Action::Nothing),
            (Attach::Detached, true) => (Attach::Attached { loads: m.loads }, Action::Attach),
            (Attach::Detached, false) => (Attach::Detached, Action::Nothing),
            (Attach::Attached { .. }, false) => (Attach::Detached, Action::Detach),
            (Attach::Attached { loads }, true) if loads != m.loads => {
                (Attach::Attached { loads: m.loads }, Action::Reattach)
            }
            (a @ Attach::Attached { .. }, true) => (a, Action::Nothing),
        }
    }
}

/// The loaded programs and their links.
struct Probes {
    ebpf: Ebpf,
    links: Vec<(&'static str, KProbeLinkId)>,
}

impl Probes {
    fn load() -> Result<Probes, String> {
        let mut ebpf = Ebpf::load(BYTECODE).map_err(|e| format!("loading the eBPF object: {e}"))?;
        for name in [PROGRAM_PROBE_ENTRY, PROGRAM_PROBE_RETURN, PROGRAM_REMOVE] {
            let program: &mut KProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("no program {name} in the object"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            program.load().map_err(|e| format!("loading {name}: {e}"))?;
        }
        Ok(Probes {
            ebpf,
            links: Vec::new(),
        })
    }

    fn attach(&mut self) -> Result<(), String> {
        for (program, function) in [
            (PROGRAM_PROBE_ENTRY, ATTACH_PROBE),
            (PROGRAM_PROBE_RETURN, ATTACH_PROBE),
            (PROGRAM_REMOVE, ATTACH_REMOVE),
        ] {
            let p: &mut KProbe = self
                .ebpf
                .program_mut(program)
                .expect("loaded")
                .try_into()
                .expect("a kprobe");
            match p.attach(function, 0) {
                Ok(link) => self.links.push((program, link)),
                Err(e) => {
                    self.detach();
                    return Err(format!("attaching {program} to {function}: {e}"));
                }
            }
        }
        Ok(())
    }

    fn detach(&mut self) {
        for (program, link) in self.links.drain(..) {
            if let Some(p) = self
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut KProbe>::try_from(p).ok())
            {
                let _ = p.detach(link);
            }
        }
    }

    fn drops(&self) -> u64 {
        self.ebpf
            .map(MAP_DROPS)
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map_or(0, |values| values.iter().sum())
    }
}

/// A kernel CLOCK_MONOTONIC timestamp as an `Instant` (the same clock).
pub fn kernel_instant(timestamp_ns: u64) -> Instant {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let age = Duration::from_nanos(now_ns.saturating_sub(timestamp_ns));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

fn kind_label(ev: &ProbeEvent) -> &'static str {
    match (ev.kind, ev.result) {
        (KIND_PROBE, 0) => "probe",
        (KIND_PROBE, _) => "probe_failed",
        _ => "remove",
    }
}

fn set_attached(flag: &AtomicBool, attached: bool) {
    flag.store(attached, Ordering::SeqCst);
    gauge!(m::EBPF_ATTACHED).set(if attached { 1.0 } else { 0.0 });
}

/// Follows the module: attaches, detaches or re-attaches the probes as
/// the state machine says.
fn follow(state: &mut Attach, probes: &mut Probes, m: ModuleState, attached: &AtomicBool) {
    let (next, action) = state.on_module(m);
    *state = next;
    match action {
        Action::Attach | Action::Reattach => {
            probes.detach();
            match probes.attach() {
                Ok(()) => {
                    counter!(m::EBPF_ATTACHES).increment(1);
                    set_attached(attached, true);
                    info!(?action, "eBPF probes attached to the module");
                }
                Err(e) => {
                    *state = Attach::Detached;
                    set_attached(attached, false);
                    warn!(error = %e, "cannot attach the eBPF probes; uevents alone until the module loads again");
                }
            }
        }
        Action::Detach => {
            probes.detach();
            set_attached(attached, false);
            info!("module unloaded: eBPF probes detached");
        }
        Action::Nothing => {}
    }
}

/// Loads the probes, follows the module, and forwards every event.
pub async fn run(
    tx: mpsc::Sender<Trigger>,
    mut module: watch::Receiver<ModuleState>,
    attached: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    set_attached(&attached, false);
    if BYTECODE.is_empty() {
        gauge!(m::EBPF_AVAILABLE).set(0.0);
        info!("this agent was built without its eBPF probes (the `ebpf` feature): following uevents alone");
        cancel.cancelled().await;
        return Ok(());
    }
    let mut probes = match Probes::load() {
        Ok(p) => p,
        Err(e) => {
            gauge!(m::EBPF_AVAILABLE).set(0.0);
            warn!(error = %e, "eBPF probes unavailable (they need CAP_BPF and CAP_PERFMON, or root, and kprobes): going on with uevents alone");
            cancel.cancelled().await;
            return Ok(());
        }
    };
    gauge!(m::EBPF_AVAILABLE).set(1.0);
    let ring = RingBuf::try_from(
        probes
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or_else(|| anyhow::anyhow!("no {MAP_EVENTS} map"))?,
    )?;
    // SAFETY: the ring buffer owns its map fd, open for as long as it lives,
    // and the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
    let mut state = Attach::Detached;
    let mut drops_seen = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let initial = *module.borrow_and_update();
    follow(&mut state, &mut probes, initial, &attached);

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = module.changed() => {
                if changed.is_err() {
                    cancel.cancelled().await;
                    break;
                }
                let m = *module.borrow_and_update();
                follow(&mut state, &mut probes, m, &attached);
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let mut events = Vec::new();
                while let Some(item) = guard.get_inner_mut().next() {
                    match ProbeEvent::from_bytes(&item) {
                        Some(ev) => events.push(ev),
                        None => counter!(m::EBPF_MALFORMED).increment(1),
                    }
                }
                guard.clear_ready();
                for ev in events {
                    counter!(m::EBPF_EVENTS, "kind" => kind_label(&ev)).increment(1);
                    debug!(kind = kind_label(&ev), pf = ev.pf_index, vf = ev.vf_index, result = ev.result, "eBPF event");
                    let at = kernel_instant(ev.timestamp_ns);
                    if tx.send(Trigger::Probe { event: ev, at }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = tick.tick() => {
                let drops = probes.drops();
                if drops > drops_seen {
                    warn!(dropped = drops - drops_seen, "the eBPF ring buffer was full: events were dropped");
                    counter!(m::EBPF_DROPS).increment(drops - drops_seen);
                    drops_seen = drops;
                }
            }
        }
    }
    probes.detach();
    set_attached(&attached, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(loaded: bool, loads: u64) -> ModuleState {
        ModuleState { loaded, loads }
    }

    #[test]
    fn the_attach_state_machine() {
        let (s, a) = Attach::Detached.on_module(m(false, 0));
        assert_eq!((s, a), (Attach::Detached, Action::Nothing));
        let (s, a) = s.on_module(m(true, 1));
        assert_eq!((s, a), (Attach::Attached { loads: 1 }, Action::Attach));
        assert_eq!(s.on_module(m(true, 1)), (s, Action::Nothing));
        // Unloaded: detach; loaded again: attach again.
        let (s, a) = s.on_module(m(false, 1));
        assert_eq!((s, a), (Attach::Detached, Action::Detach));
        let (s, a) = s.on_module(m(true, 2));
        assert_eq!((s, a), (Attach::Attached { loads: 2 }, Action::Attach));
        // A reload we only saw as "loaded" (the unload was coalesced away).
        assert_eq!(
            s.on_module(m(true, 3)),
            (Attach::Attached { loads: 3 }, Action::Reattach)
        );
        // Without eBPF nothing ever happens.
        assert_eq!(
            Attach::Unavailable.on_module(m(true, 9)),
            (Attach::Unavailable, Action::Nothing)
        );
    }

    #[test]
    fn events_decode_and_bad_records_do_not() {
        let ev = ProbeEvent {
            timestamp_ns: 42,
            kind: KIND_PROBE,
            pf_index: 3,
            vf_index: mock_accel_ebpf::VF_NONE,
            result: -5,
        };
        // SAFETY: reading the bytes of a repr(C) value without padding.
        let bytes = unsafe { std::slice::from_raw_parts((&ev as *const ProbeEvent).cast::<u8>(), ProbeEvent::SIZE) };
        assert_eq!(ProbeEvent::from_bytes(bytes), Some(ev));
        assert_eq!(kind_label(&ev), "probe_failed");
        assert_eq!(ProbeEvent::from_bytes(&bytes[..20]), None);
        let mut bad = bytes.to_vec();
        bad[8] = 9; // kind 9
        assert_eq!(ProbeEvent::from_bytes(&bad), None);
    }

    #[test]
    fn kernel_timestamps_become_instants() {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let ten_ms_ago = (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) - 10_000_000;
        let age = kernel_instant(ten_ms_ago).elapsed();
        assert!(
            age >= Duration::from_millis(10) && age < Duration::from_millis(500),
            "{age:?}"
        );
    }
}
