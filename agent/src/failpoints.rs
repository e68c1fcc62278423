//! Test-only faults: points where a test can make the agent die as by
//! SIGKILL (no destructor, no flush, no reply), to show that what it was
//! doing is completed or undone after a restart (tests/scenarios/faults.sh).
//!
//! They exist only in builds with `fail/failpoints` (the test builds, where
//! the agent is a dev-dependency's user; release builds get empty macros),
//! and act only when the `FAILPOINTS` environment variable names them
//! (`NAME=return;…`, fail-rs's syntax): [`from_env`] refuses a `FAILPOINTS`
//! a build without them would silently ignore.

use anyhow::{Context, bail};

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

/// Whether this build evaluates failpoints at all.
fn compiled_in() -> bool {
    const PROBE: &str = "failpoints/compiled-in";
    if fail::cfg(PROBE, "return").is_err() {
        return false;
    }
    fn probe() -> bool {
        fail::fail_point!(PROBE, |_| true);
        false
    }
    let hit = probe();
    fail::remove(PROBE);
    hit
}

/// Sets up the failpoints `FAILPOINTS` names; an error when it is malformed
/// or this build has none (a test must not think it injected a fault).
pub fn from_env() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    if !compiled_in() {
        bail!("FAILPOINTS is set ({spec:?}) but this build has no failpoints (a test build has them)");
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
