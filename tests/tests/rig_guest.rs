//! The rig itself: its children die with it, however it dies; the
//! accelerator it picks is the one a probe showed to work.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_device_testkit::accel::{self, Probe};
use mock_device_testkit::cluster::ControlPlane;
use mock_device_testkit::guest::Guest;
use mock_device_testkit::process::{alive, descendants};

/// Issue 31 §5: a test binary SIGKILLed mid-guest, with a guest (QEMU) and
/// the real control plane (etcd, kube-apiserver) running: nothing of it is
/// left. This test is the victim's subreaper (orphans come to it, not to
/// init), so it sees every process the victim started, wherever it went.
#[test]
fn a_killed_test_leaves_nothing_running() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    let mut victim = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "victim_runs_a_guest_and_a_control_plane",
            "--ignored",
            "--nocapture",
        ])
        .env("MOCK_RIG_VICTIM", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wanted = ["qemu-system-x86", "etcd", "kube-apiserver"];
    let deadline = Instant::now() + Duration::from_secs(240);
    let seen = loop {
        let d = descendants(victim.id());
        if wanted.iter().all(|w| d.iter().any(|(_, name, _)| name.starts_with(w))) {
            break d;
        }
        if let Some(status) = victim.try_wait().unwrap() {
            panic!("the victim ended ({status}) before it had a guest and a control plane running: {d:?}");
        }
        assert!(
            Instant::now() < deadline,
            "after 240 s the victim had not started all of {wanted:?}: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    victim.kill().unwrap();
    victim.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Reap what came to us (only these: other tests' children are theirs).
        for (pid, _, _) in &seen {
            // SAFETY: waitpid on one pid, no status wanted.
            unsafe { libc::waitpid(*pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        let left: Vec<_> = seen.iter().filter(|(p, _, s)| alive(*p, *s)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "15 s after the test binary was SIGKILLed these are still running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The victim of [`a_killed_test_leaves_nothing_running`]: the real control
/// plane and a guest that waits, until it is killed. Only when asked.
#[test]
#[ignore = "run by a_killed_test_leaves_nothing_running"]
fn victim_runs_a_guest_and_a_control_plane() {
    if std::env::var_os("MOCK_RIG_VICTIM").is_none() {
        return;
    }
    let _cp = ControlPlane::start().unwrap();
    let guest = Guest::with_module(&[]).unwrap();
    let _ = guest.run("echo waiting to be killed; sleep 600");
    panic!("the guest ended before the victim was killed");
}

/// Issue 31 §2: the probe, run for real on this machine: KVM only if its
/// guest reached userspace within the limit; otherwise a reason. What it
/// costs is printed (`--nocapture`).
#[test]
fn the_kvm_probe_decides_from_a_real_boot() {
    let t = Instant::now();
    let probe = accel::probe_now().unwrap();
    let cost = t.elapsed();
    eprintln!("KVM probe: {probe:?} in {:.2} s", cost.as_secs_f64());
    assert!(
        cost <= accel::PROBE_LIMIT + Duration::from_secs(10),
        "the probe is time-boxed: {cost:?}"
    );
    let choice = accel::decide(accel::Forced::Auto, &accel::KvmDevice::look(), || probe.clone());
    eprintln!("would choose {} ({})", choice.accel.as_str(), choice.why);
    match (&probe, choice.accel) {
        (Probe::Booted(t), accel::Accel::Kvm) => assert!(*t <= accel::PROBE_LIMIT),
        (Probe::Booted(_), other) => {
            // Only without a usable /dev/kvm (the probe ran anyway here).
            assert!(!Path::new("/dev/kvm").exists(), "booted under KVM yet {other:?}")
        }
        (_, accel::Accel::Tcg) => assert!(!choice.why.is_empty()),
        (p, a) => panic!("{p:?} gave {a:?}"),
    }
}
