//! The agent in a real kernel: the Debian guest with the mock-accel module
//! and the test API server, changes driven by real uevents.

use std::path::{Path, PathBuf};

use mock_device_testkit::guest::Guest;
use mock_device_testkit::workspace_root;

/// The binaries the guest needs, built next to this test's agent binary.
pub fn guest_binaries() -> Vec<(&'static str, PathBuf)> {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_mock-accel-agent"));
    let dir = agent.parent().expect("a target directory").to_path_buf();
    let bins = vec![
        ("mock-accel-agent", agent),
        ("mock-apiserver", dir.join("mock-apiserver")),
        ("guest-tool", dir.join("guest-tool")),
    ];
    for (name, path) in &bins {
        assert!(
            path.is_file(),
            "{name} is not built ({}): run `cargo build --workspace --bins` (just test does)",
            path.display()
        );
    }
    bins
}

#[test]
fn agent_publishes_real_hotplug_through_uevents() {
    let bins = guest_binaries();
    let refs: Vec<(&str, &Path)> = bins.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let guest = Guest::with_module(&refs).unwrap_or_else(|e| panic!("cannot set up the guest: {e}"));
    let script = std::fs::read_to_string(workspace_root().join("tests/scenarios/agent.sh")).unwrap();
    let run = guest.run(&script).unwrap_or_else(|e| panic!("{e}"));
    for line in run
        .output
        .lines()
        .filter(|l| l.starts_with("LATENCY") || l.starts_with("METRIC"))
    {
        eprintln!("{line}");
    }
    eprintln!("guest run took {:.1} s", run.elapsed.as_secs_f64());
    run.assert_clean(19);
}
