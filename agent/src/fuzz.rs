//! The fuzz targets' bodies: each takes bytes it does not control, as the
//! agent meets them, and checks what must hold whatever they are (nothing
//! panics; what is accepted round-trips). `fuzz/` runs them under libFuzzer
//! (`just fuzz`); `agent/tests/fuzz_corpus.rs` replays the kept corpora on
//! every test run. A crash found becomes a unit test beside its parser.

use std::path::Path;
use std::time::Instant;

use crate::plugin::{cdi, checkpoint};
use crate::{args, events, inventory};

/// A target: its name (as `fuzz/fuzz_targets/<name>.rs` and its corpus
/// directory are called) and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: [Target; 6] = [
    ("uevent", uevent),
    ("device_name", device_name),
    ("duration", duration),
    ("checkpoint", checkpoint_file),
    ("cdi_spec", cdi_spec),
    ("probe_event", probe_event),
];

/// A netlink uevent packet (udev's or the kernel's): parsed or refused,
/// and a parsed one goes through the relevance filter and the trigger.
pub fn uevent(data: &[u8]) {
    if let Some(ev) = events::parse(data, "fuzz") {
        let relevant = events::relevant(&ev);
        let trigger = events::trigger(ev, "fuzz", Instant::now(), false);
        assert_eq!(trigger.is_some(), relevant);
    }
}

/// A class device's name, as sysfs and uevents give it: `mock<N>` or
/// `mock<N>_vf<M>`. What parses is that form exactly (the numbers written
/// back give the name, leading zeros aside).
pub fn device_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Some((pf, vf)) = inventory::parse_name(name) {
        let canonical = match vf {
            Some(vf) => format!("mock{pf}_vf{vf}"),
            None => format!("mock{pf}"),
        };
        assert_eq!(
            without_leading_zeros(name),
            canonical,
            "{name:?} parsed as ({pf}, {vf:?})"
        );
    }
}

/// Each run of digits without its leading zeros ("mock007_vf00" → "mock7_vf0").
fn without_leading_zeros(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            let t = run.trim_start_matches('0');
            out.push_str(if t.is_empty() { "0" } else { t });
            run.clear();
        }
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

/// A duration flag's value (`--resync-period=…`, env): parsed or refused
/// with a message naming the value.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = args::parse_duration(text) {
        assert!(e.contains(&format!("{text:?}")), "{e}");
    }
}

/// The checkpoint file's bytes: decoded or refused (never a panic); what
/// decodes, encoded again, decodes to the same claims.
pub fn checkpoint_file(data: &[u8]) {
    let cp = checkpoint::Checkpoint::new(Path::new("/nonexistent"), "mock-accel.example.com", "node-a");
    if let Ok(claims) = cp.decode(data) {
        let again = cp.decode(&cp.encode(&claims)).expect("a checkpoint we wrote decodes");
        assert_eq!(again, claims);
    }
}

/// A CDI spec, as JSON: whatever the writer accepts must parse back
/// strictly (unknown fields refused, as runtimes do), equal what was meant
/// and pass the same checks again.
pub fn cdi_spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<cdi::Spec>(data) else {
        return;
    };
    let _ = cdi::minimum_version(&spec);
    if let Ok(bytes) = cdi::encode(&spec) {
        let back: cdi::Spec = serde_json::from_slice(&bytes).expect("a spec we wrote parses strictly");
        assert_eq!(back, spec);
        cdi::validate(&back).expect("a spec we wrote validates");
    }
}

/// A record from the eBPF ring buffer: one event of the right size and
/// kind, or nothing.
pub fn probe_event(data: &[u8]) {
    if let Some(ev) = mock_accel_ebpf::ProbeEvent::from_bytes(data) {
        assert_eq!(data.len(), mock_accel_ebpf::ProbeEvent::SIZE);
        let _ = crate::ebpf::kernel_instant(ev.timestamp_ns);
    }
}
