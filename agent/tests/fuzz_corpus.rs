//! Every input kept in `fuzz/corpus/<target>/` (what `just fuzz` found
//! worth keeping, and the seeds) through the target's body again
//! (`mock_accel_agent::fuzz`, `mock_device_testkit::fuzz` for the test API
//! server's): a quick replay on every test run, on the stable toolchain, of
//! what libFuzzer explored.

use std::path::PathBuf;

fn targets() -> impl Iterator<Item = mock_accel_agent::fuzz::Target> {
    mock_accel_agent::fuzz::TARGETS
        .into_iter()
        .chain(mock_device_testkit::fuzz::TARGETS)
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn every_kept_input_replays_without_a_failure() {
    let mut total = 0;
    for (name, body) in targets() {
        let dir = fuzz_dir().join("corpus").join(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: no corpus in {}", dir.display());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| body(&data)) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name}: {} fails: {msg}", input.display());
            }
        }
        eprintln!("{name}: {} inputs", inputs.len());
        total += inputs.len();
    }
    eprintln!("{total} inputs replayed");
}

/// A target added to the agent's list has its libFuzzer binary, and the
/// other way round.
#[test]
fn each_target_has_its_fuzz_binary() {
    let mut files: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = targets().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(files, names);
}
