//! What the eBPF programs and the agent share: the event layout, the
//! program and map names, and the kernel functions they attach to
//! (the module's stable attach points, kmod/ABI.md).
#![no_std]

/// A function probed: `result` is 0 or a negative errno.
pub const KIND_PROBE: u32 = 1;
/// A function removed.
pub const KIND_REMOVE: u32 = 2;
/// `vf_index` of a PF.
pub const VF_NONE: u32 = u32::MAX;

pub const PROGRAM_PROBE_ENTRY: &str = "mock_accel_probe_entry";
pub const PROGRAM_PROBE_RETURN: &str = "mock_accel_probe_return";
pub const PROGRAM_REMOVE: &str = "mock_accel_remove";
pub const ATTACH_PROBE: &str = "mock_accel_probe_device";
pub const ATTACH_REMOVE: &str = "mock_accel_remove_device";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_DROPS: &str = "DROPS";

/// One probe or remove, as the kernel ran it. No bool, no implicit
/// padding: 24 bytes on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, ns) when the probe or remove
    /// started: the true start of the hot-plug in the kernel.
    pub timestamp_ns: u64,
    pub kind: u32,
    pub pf_index: u32,
    pub vf_index: u32,
    pub result: i32,
}

impl ProbeEvent {
    pub const SIZE: usize = core::mem::size_of::<ProbeEvent>();

    /// Decodes a ring-buffer record; `None` if it is not one event.
    pub fn from_bytes(bytes: &[u8]) -> Option<ProbeEvent> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        // SAFETY: the size is checked and every bit pattern is a valid ProbeEvent.
        let ev = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<ProbeEvent>()) };
        matches!(ev.kind, KIND_PROBE | KIND_REMOVE).then_some(ev)
    }

    /// The class device name: `mock3`, `mock3_vf1`.
    pub fn is_vf(&self) -> bool {
        self.vf_index != VF_NONE
    }
}

const _: () = assert!(ProbeEvent::SIZE == 24);

// SAFETY: plain old data, repr(C), no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeEvent {}
