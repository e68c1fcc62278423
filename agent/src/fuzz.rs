//! The fuzz targets' bodies: each takes bytes it does not control, as the
//! agent meets them, and checks what must hold whatever they are (nothing
//! panics; what is accepted round-trips). `fuzz/` runs them under libFuzzer
//! (`just fuzz`); `agent/tests/fuzz_corpus.rs` replays the kept corpora on
//! every test run. A crash found becomes a unit test beside its parser.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{ebpf, uevents};
use crate::plugin::{cdi, checkpoint};
use crate::{args, inventory};

/// A target: its name (as `fuzz/fuzz_targets/<name>.rs` and its corpus
/// directory are called) and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: [Target; 9] = [
    ("uevent", uevent),
    ("device_name", device_name),
    ("sysfs", sysfs_function),
    ("duration", duration),
    ("checkpoint", checkpoint_file),
    ("cdi_spec", cdi_spec),
    ("probe_event", probe_event),
    ("sim_control", sim_control),
    ("scenario", scenario),
];

/// A DeviceScenario object as the API might hold it (JSON): read or
/// refused naming a field; one that is read plans either nothing (with a
/// reason) or writes the module's own semantics (the sim's model, started
/// as the plan saw it) all take; its status, summary and schedule compute.
pub fn scenario(data: &[u8]) {
    use crate::backend::sim::model::{Identity, Model, Params};
    use crate::declared::plan::{Applied, Step, plan};
    use crate::declared::schedule::Running;
    use crate::declared::{spec, status, summary};
    let Ok(object) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let s = match spec::parse(&object) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    struct Fixed;
    impl Identity for Fixed {
        fn uuid(&self, _: u32, _: Option<u32>) -> String {
            "u".into()
        }
        fn pci_address(&self, pf: u32, vf: Option<u32>) -> String {
            format!("0000:{:02x}:00.{}", 0x1a + pf, vf.map_or(0, |v| v % 8))
        }
    }
    let params = Params {
        num_pfs: 2,
        max_vfs: 4,
        fabric_attach_ms: u32::from(data.len().is_multiple_of(2)) * 100,
        ..Params::default()
    };
    let mut m = Model::load(params.clone()).expect("valid parameters");
    m.write("class/mock0/sriov_numvfs", "2").expect("2 VFs");
    let inv = inventory::Inventory {
        scanned: true,
        functions: m.functions(&Fixed).into_iter().map(|f| (f.name.clone(), f)).collect(),
        skipped: vec![],
    };
    match plan(Some(&s.spec), &inv, &params, &Applied::default()) {
        Err(b) => assert!(!b.message.is_empty() && !b.reason.is_empty()),
        Ok(steps) => {
            for step in &steps {
                let (path, value) = match step {
                    Step::AddPf { id, numa_node: Some(n) } => ("bus/new_device".to_string(), format!("{id} {n}")),
                    Step::AddPf { id, numa_node: None } => ("bus/new_device".into(), id.to_string()),
                    Step::RemovePf { id } => ("bus/del_device".into(), id.to_string()),
                    Step::SetVfs { pf, vfs } => (format!("class/{pf}/sriov_numvfs"), vfs.to_string()),
                    Step::SetHealth { function, health } => {
                        (format!("class/{function}/health"), health.as_str().into())
                    }
                    Step::FailAttaches { function, n } => (format!("class/{function}/fail_attach"), n.to_string()),
                };
                if let Err(e) = m.write(&path, &value) {
                    panic!("the module refuses a planned write {step:?}: {e} (plan {steps:?})");
                }
            }
            let after = Applied::after(&s.name, &s.uid, s.generation, &s.spec, 0);
            let mut running: Running = after.running;
            for t in [0, 150, 1_000, 60_000, 86_400_000] {
                let _ = running.tick(&s.spec.faults, &inv, t);
            }
        }
    }
    let outcome = status::Outcome {
        applied: data.len().is_multiple_of(3),
        reason: "Applied".into(),
        message: String::new(),
    };
    let entry = status::node_status("n", &s, &inv, &outcome, &[], &[], "T");
    let body = status::apply_body("g", &s.name, Some(&entry));
    let _ = summary::summary(&body);
}

/// Requests to the sim's control socket, one per line (`write PATH
/// VALUE`, `read PATH`, anything else), applied to the model: each is
/// taken or refused with an errno, and what the model holds stays
/// something the module could hold.
pub fn sim_control(data: &[u8]) {
    use crate::backend::sim::model::{AttachState, MAX_PFS, Model, Params};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let params = Params {
        num_pfs: 2,
        max_vfs: 4,
        fabric_attach_ms: u32::from(text.len() % 2 == 0) * 100,
        ..Params::default()
    };
    let mut m = Model::load(params.clone()).expect("valid parameters");
    struct Fixed;
    impl crate::backend::sim::model::Identity for Fixed {
        fn uuid(&self, _: u32, _: Option<u32>) -> String {
            "u".into()
        }
        fn pci_address(&self, _: u32, _: Option<u32>) -> String {
            "p".into()
        }
    }
    for line in text.lines().take(256) {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "write" => {
                let (path, value) = rest.split_once(' ').unwrap_or((rest, ""));
                let before = m.clone();
                if m.write(path, value).is_err() {
                    assert_eq!(m, before, "a refused write changed the model: {line:?}");
                }
            }
            "read" => {
                let _ = m.read(rest, &Fixed);
            }
            "attach" => {
                for (name, seq) in m.attaching() {
                    m.complete_attach(&name, seq);
                }
            }
            _ => {}
        }
        for (&pf, p) in &m.pfs {
            assert!(pf < MAX_PFS && p.vfs.len() as u32 <= p.total_vfs, "{line:?}");
            for f in std::iter::once(&p.f).chain(&p.vfs) {
                assert!(f.status <= 1, "{line:?}");
                assert_eq!(f.attach == AttachState::Local, params.fabric_attach_ms == 0, "{line:?}");
                assert!(f.memory_size <= params.memory_mib << 20, "{line:?}");
            }
        }
    }
    let back: Model = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
    assert_eq!(m.functions(&Fixed).len(), m.names().len());
}

/// A netlink uevent packet (udev's or the kernel's): parsed or refused,
/// and a parsed one goes through the relevance filter and the trigger.
pub fn uevent(data: &[u8]) {
    if let Some(ev) = uevents::parse(data, "fuzz") {
        let relevant = uevents::relevant(&ev);
        let trigger = uevents::trigger(ev, "fuzz", Instant::now(), false);
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

/// A function's sysfs directory: the attributes (and the `device` and
/// `physfn` links' targets) as the module's files could hold them, through
/// the parser the scan uses. A function read is well-formed; written back
/// as the module writes its attributes, it reads the same.
///
/// Input: the class entry's name, then each of [`SYSFS_FILES`], separated
/// by NUL; a missing trailing part, or one that is the byte 0xff alone, is
/// a file that is not there.
pub fn sysfs_function(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut files = Files::default();
    for (file, value) in SYSFS_FILES.into_iter().zip(parts) {
        if value != [0xff] {
            files.0.insert(file, value.to_vec());
        }
    }
    let f = match inventory::read_function(&files, &name) {
        Ok(f) => f,
        Err((_, detail)) => {
            assert!(!detail.is_empty(), "{name:?} refused without a word");
            return;
        }
    };
    assert_eq!(inventory::parse_name(&f.name), Some((f.pf_index, f.vf_index)));
    assert_eq!(f.kind == inventory::Kind::Vf, f.vf_index.is_some());
    assert_eq!(f.physfn.is_some(), f.vf_index.is_some());
    assert_eq!(f.sriov.is_some(), f.vf_index.is_none());
    let again = inventory::read_function(&Files::written(&f), &f.name);
    assert_eq!(again.as_ref(), Ok(&f), "{f:?} written back reads otherwise");
}

/// The files (and links) of a function's directory [`sysfs_function`] reads.
pub const SYSFS_FILES: [&str; 14] = [
    "type",
    "uuid",
    "device",
    "health",
    "fw_version",
    "capabilities",
    "physfn",
    "sriov_numvfs",
    "sriov_totalvfs",
    "numa_node",
    "memory_size",
    "status",
    "dev",
    "attach",
];

/// A directory in memory: a file's bytes, or a link's target.
#[derive(Default)]
struct Files(BTreeMap<&'static str, Vec<u8>>);

impl Files {
    /// `f`'s directory as the module writes it (kmod/ABI.md): one value
    /// and a newline per file; links to the PCI device and the PF.
    fn written(f: &inventory::Function) -> Files {
        let mut files = Files::default();
        let mut put = |file: &'static str, value: String| {
            files.0.insert(file, value.into_bytes());
        };
        put("type", format!("{}\n", f.kind.as_str()));
        put("uuid", format!("{}\n", f.uuid));
        put("device", format!("../../../{}", f.pci_address));
        put("health", format!("{}\n", f.health.as_str()));
        put("fw_version", format!("{}\n", f.fw_version));
        put("capabilities", format!("{}\n", f.capabilities));
        if let Some(pf) = &f.physfn {
            put("physfn", format!("../{pf}"));
        }
        if let Some((num, total)) = f.sriov {
            put("sriov_numvfs", format!("{num}\n"));
            put("sriov_totalvfs", format!("{total}\n"));
        }
        put("numa_node", format!("{}\n", f.numa_node));
        put("memory_size", format!("{}\n", f.memory_bytes));
        put("status", format!("{}\n", f.status));
        if let Some((major, minor)) = f.devnum {
            put("dev", format!("{major}:{minor}\n"));
        }
        put(
            "attach",
            format!("{}\n", f.attach.map_or("local", inventory::Attach::as_str)),
        );
        files
    }
}

impl inventory::Attributes for Files {
    fn read(&self, attr: &str) -> io::Result<String> {
        let bytes = self.0.get(attr).ok_or(io::ErrorKind::NotFound)?;
        String::from_utf8(bytes.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn read_link(&self, link: &str) -> io::Result<PathBuf> {
        let bytes = self.0.get(link).ok_or(io::ErrorKind::NotFound)?;
        Ok(PathBuf::from(OsStr::from_bytes(bytes)))
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
        let _ = ebpf::kernel_instant(ev.timestamp_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input `sysfs_function` reads for `name` and `files`.
    fn input(name: &str, files: &Files) -> Vec<u8> {
        let mut data = name.as_bytes().to_vec();
        for file in SYSFS_FILES {
            data.push(0);
            data.extend(files.0.get(file).map_or(&[0xff][..], Vec::as_slice));
        }
        data
    }

    /// What the scan reads from a tree laid out as the module's, written
    /// back by the target, reads the same; broken, it is refused.
    #[test]
    fn functions_read_from_sysfs_and_written_back_read_the_same() {
        let root = tempfile::tempdir().unwrap();
        let class = root.path().join("class/mock-accel");
        crate::backend::sysfs::write_fake_tree(&class, 2, 2).unwrap();
        let scanned = crate::backend::Backend::scan(&crate::backend::sysfs::Sysfs::new(&class)).unwrap();
        assert_eq!(scanned.functions.len(), 6);
        for f in scanned.functions.values() {
            let files = Files::written(f);
            assert_eq!(inventory::read_function(&files, &f.name).as_ref(), Ok(f));
            sysfs_function(&input(&f.name, &files));

            let mut broken = Files::written(f);
            broken.0.insert("health", b"on fire\n".to_vec());
            let (reason, detail) = inventory::read_function(&broken, &f.name).unwrap_err();
            assert_eq!(reason, inventory::SkipReason::BadValue);
            assert_eq!(detail, "health: \"on fire\"");
            broken.0.insert("health", vec![0xc3, 0x28]);
            let (reason, detail) = inventory::read_function(&broken, &f.name).unwrap_err();
            assert_eq!(reason, inventory::SkipReason::BadValue, "{detail}");
            broken.0.remove("health");
            let (reason, _) = inventory::read_function(&broken, &f.name).unwrap_err();
            assert_eq!(reason, inventory::SkipReason::MissingAttribute);
            sysfs_function(&input(&f.name, &broken));
        }
    }
}
