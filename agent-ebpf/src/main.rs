//! The eBPF programs. Bodies are thin; events go to user space through a
//! ring buffer, and failed reservations are counted in `DROPS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
    use aya_ebpf::macros::{kprobe, kretprobe, map};
    use aya_ebpf::maps::{HashMap, PerCpuArray, RingBuf};
    use aya_ebpf::programs::{ProbeContext, RetProbeContext};
    use mock_accel_ebpf::{KIND_PROBE, KIND_REMOVE, ProbeEvent};

    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

    /// Failed reservations, one counter per CPU (user space sums them).
    #[map]
    static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// A probe in flight, by task, until it returns: [pf << 32 | vf, start time].
    #[map]
    static PENDING: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(1024, 0);

    fn now() -> u64 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }

    fn emit(kind: u32, pf_index: u32, vf_index: u32, result: i32, timestamp_ns: u64) {
        match EVENTS.reserve::<ProbeEvent>(0) {
            Some(mut entry) => {
                entry.write(ProbeEvent {
                    timestamp_ns,
                    kind,
                    pf_index,
                    vf_index,
                    result,
                });
                entry.submit(0);
            }
            None => {
                if let Some(drops) = DROPS.get_ptr_mut(0) {
                    // SAFETY: this CPU's slot; a program is not preempted on its CPU.
                    unsafe { *drops += 1 };
                }
            }
        }
    }

    #[kprobe]
    pub fn mock_accel_probe_entry(ctx: ProbeContext) -> u32 {
        try_probe_entry(&ctx).unwrap_or(1)
    }

    fn try_probe_entry(ctx: &ProbeContext) -> Option<u32> {
        let ids = (u64::from(ctx.arg::<u32>(0)?) << 32) | u64::from(ctx.arg::<u32>(1)?);
        PENDING.insert(&bpf_get_current_pid_tgid(), &[ids, now()], 0).ok()?;
        Some(0)
    }

    #[kretprobe]
    pub fn mock_accel_probe_return(ctx: RetProbeContext) -> u32 {
        try_probe_return(&ctx).unwrap_or(1)
    }

    fn try_probe_return(ctx: &RetProbeContext) -> Option<u32> {
        let key = bpf_get_current_pid_tgid();
        // SAFETY: the value is copied out before the entry is removed.
        let [ids, started] = *unsafe { PENDING.get(&key) }?;
        let _ = PENDING.remove(&key);
        // The event is stamped with the probe's start: the hot-plug's true start.
        emit(KIND_PROBE, (ids >> 32) as u32, ids as u32, ctx.ret::<i32>(), started);
        Some(0)
    }

    #[kprobe]
    pub fn mock_accel_remove(ctx: ProbeContext) -> u32 {
        match (ctx.arg::<u32>(0), ctx.arg::<u32>(1)) {
            (Some(pf), Some(vf)) => {
                emit(KIND_REMOVE, pf, vf, 0, now());
                0
            }
            _ => 1,
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("mock-accel-ebpf is eBPF bytecode, built by the agent's build script; it does not run on the host");
    std::process::exit(2);
}
