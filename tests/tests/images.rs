//! The test node's images, written without an engine (`oci::test_images`),
//! are what real containerd 2.4 (built by `just kube`) imports: `ctr images
//! import` takes each archive, lists it under its name with the manifest
//! digest we computed, and unpacks it into a snapshot. Writing twice gives
//! the same bytes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_device_testkit::cluster::{Process, bin_dir};
use mock_device_testkit::oci;

fn ctr(bin: &Path, sock: &Path, args: &[&str]) -> String {
    let out = Command::new(bin.join("ctr"))
        .arg(format!("--address={}", sock.display()))
        .args(["--namespace=k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containerd_imports_the_images_we_write() {
    let bin = bin_dir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let images = oci::test_images(dir.path()).unwrap();
    let mut written = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let path = dir.path().join(format!("{i}.tar"));
        let w = image.write(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert_eq!(image.write(&path).unwrap(), w);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "{} written twice differs",
            image.name
        );
        written.push((image.name.clone(), path, w));
    }

    // A containerd of our own: its root, state and socket in the temp dir;
    // the CRI plugins off (no kubelet here); imports unpack (through the
    // transfer service) into the native snapshotter.
    let sock = dir.path().join("containerd.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 3\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\", \"io.containerd.cri.v1.images\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = \"linux/amd64\"\n  snapshotter = \"native\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = sock.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin.join("containerd"));
    cmd.arg(format!("--config={}", config.display()));
    let mut containerd = Process::spawn("containerd", cmd, dir.path().join("containerd.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        containerd.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "containerd never listened:\n{}",
            containerd.problems()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    for (name, path, w) in &written {
        ctr(
            &bin,
            &sock,
            &["images", "import", "--snapshotter=native", path.to_str().unwrap()],
        );
        let listed = ctr(&bin, &sock, &["images", "ls"]);
        let line = listed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listed}"));
        assert!(
            line.contains(&w.manifest_digest),
            "{name}: {line} (we wrote {})",
            w.manifest_digest
        );
        // Unpacked: a snapshot per layer exists.
        let check = ctr(&bin, &sock, &["images", "check", &format!("name=={name}")]);
        assert!(check.contains("complete"), "{check}");
    }
    let snapshots = ctr(&bin, &sock, &["snapshots", "--snapshotter=native", "ls"]);
    assert!(snapshots.lines().count() > written.len(), "{snapshots}");
}
