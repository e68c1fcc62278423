//! Test-only faults: points where a test can make the agent die as by
//! SIGKILL (no destructor, no flush, no reply), to show that what it was
//! doing is completed or undone after a restart (tests/scenarios/faults.sh).
//!
//! They exist only in builds with the agent's `failpoints` feature (the
//! test builds ask for it; release builds get empty macros), and act only
//! when the `FAILPOINTS` environment variable names them (`NAME=return;…`,
//! fail-rs's syntax): [`from_env`] refuses a `FAILPOINTS` a build without
//! them would silently ignore.

use anyhow::{Context, bail};

/// The crash points a prepare reaches, in order (an atomic write: the
/// checkpoint's record, then the CDI spec): the one list, which the fault
/// scenarios read (`mock-accel-agent --print-failpoints`).
pub const PREPARE: &[&str] = &[
    "prepare/recorded",
    "prepare/status-written",
    "atomic-write/before-rename",
    "prepare/applied",
    "prepare/completed",
];

/// The crash points an unprepare reaches, in order.
pub const UNPREPARE: &[&str] = &[
    "unprepare/spec-removed",
    "unprepare/released",
    "atomic-write/before-rename",
    "unprepare/saved",
];

/// Dies here, at once and by SIGKILL, when the failpoint `name` is set.
pub fn crash(name: &str) {
    let _ = name; // unused where the build has no failpoints
    fail::fail_point!(name, |_| {
        tracing::warn!(failpoint = name, "failpoint: SIGKILL");
        // SAFETY: kill(2) on our own pid; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    });
}

/// The value a test gave the failpoint `name` (`return(VALUE)`), if any.
pub fn value<T: std::str::FromStr>(name: &str) -> Option<T> {
    let _ = name; // unused where the build has no failpoints
    fail::fail_point!(name, |v: Option<String>| v.and_then(|v| v.parse().ok()));
    None
}

/// Whether a test made the failpoint `name` fail (`return`).
pub fn fails(name: &str) -> bool {
    let _ = name; // unused where the build has no failpoints
    fail::fail_point!(name, |_| true);
    false
}

/// Whether this build evaluates failpoints at all.
pub const COMPILED_IN: bool = cfg!(feature = "failpoints");

/// Sets up the failpoints `FAILPOINTS` names; an error when it is malformed
/// or this build has none (a test must not think it injected a fault).
pub fn from_env() -> anyhow::Result<()> {
    match std::env::var("FAILPOINTS") {
        Ok(spec) => set(&spec, COMPILED_IN),
        Err(_) => Ok(()),
    }
}

/// Sets the failpoints of `spec` (`NAME=ACTIONS;…`) in a build that has
/// them (`compiled_in`).
fn set(spec: &str, compiled_in: bool) -> anyhow::Result<()> {
    if !compiled_in {
        bail!(
            "FAILPOINTS is set ({spec:?}) but this build has no failpoints (build the agent with \
             `--features failpoints`, as the test builds do)"
        );
    }
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .with_context(|| format!("FAILPOINTS: {item:?} is not NAME=ACTIONS"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| anyhow::anyhow!("FAILPOINTS: {name}: {e}"))?;
        tracing::warn!(failpoint = name.trim(), actions = actions.trim(), "failpoint set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every crash point the code has is in the lists, and every listed one
    /// is in the code.
    #[test]
    fn the_lists_name_every_crash_point() {
        let sources = [
            include_str!("plugin/driver.rs"),
            include_str!("plugin/apply.rs"),
            include_str!("plugin/cdi.rs"),
        ]
        .concat();
        let used: std::collections::BTreeSet<&str> = sources
            .split("crate::failpoints::crash(\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        let listed: std::collections::BTreeSet<&str> = PREPARE.iter().chain(UNPREPARE).copied().collect();
        assert_eq!(used, listed);
    }

    #[test]
    fn a_build_without_failpoints_refuses_them_and_bad_ones_are_refused() {
        let e = set("prepare/recorded=return", false).unwrap_err().to_string();
        assert!(e.contains("--features failpoints"), "{e}");
        let e = set("prepare/recorded", true).unwrap_err().to_string();
        assert!(e.contains("is not NAME=ACTIONS"), "{e}");
        let e = set("test/x=explode(1)", true).unwrap_err().to_string();
        assert!(e.contains("FAILPOINTS: test/x"), "{e}");
        set(" ; test/y=off ;", true).unwrap();
        fail::remove("test/y");
    }
}
