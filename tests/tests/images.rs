//! The test node's and the driver's images, written without an engine
//! (`oci::test_images`, `oci::driver_images`), are what real containerd 2.4 (built by `just kube`) imports: `ctr images
//! import` takes each archive, lists it under its name with the manifest
//! digest we computed, and unpacks it into a snapshot. Writing twice gives
//! the same bytes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_device_testkit::cluster::{Process, bin_dir};
use mock_device_testkit::oci::{self, Image};
use mock_device_testkit::workspace_root;

/// The driver's images with the agent `cargo build --workspace --bins`
/// built (`just test` does first) and the module built for every installed
/// kernel.
fn driver_images(dir: &Path) -> Vec<Image> {
    let agent = workspace_root().join("target/debug/mock-accel-agent");
    assert!(
        agent.is_file(),
        "{} is missing: run cargo build --workspace --bins",
        agent.display()
    );
    let images = oci::driver_images_for_installed_kernels(&agent, dir).unwrap();
    assert!(images.len() > 1, "no guest kernel: run ./dev setup");
    images
}

/// The last stage of a Containerfile: `(instruction, arguments)`, with
/// `${KERNEL_VERSION}` replaced.
fn final_stage(file: &str, kernel: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join("images").join(file)).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        if op == "FROM" {
            stage.clear();
        }
        stage.push((op.to_string(), rest.trim().replace("${KERNEL_VERSION}", kernel)));
    }
    stage
}

fn files_of(image: &Image) -> Vec<String> {
    image
        .layers
        .iter()
        .flat_map(|l| l.entries.keys().map(|k| format!("/{k}")))
        .collect()
}

/// One source of truth for what is in an image: what the Containerfiles
/// copy into their final stage, their user, entrypoint and port, is what
/// the engine-less images hold.
#[test]
fn the_containerfiles_describe_the_driver_images() {
    let dir = tempfile::tempdir().unwrap();
    let images = driver_images(dir.path());
    let agent = &images[0];
    assert_eq!(
        agent.name,
        format!("{}:{}", oci::DRIVER_REPOSITORY, oci::driver_version().unwrap())
    );
    let files = files_of(agent);
    let stage = final_stage("agent.Containerfile", "");
    for (op, args) in &stage {
        match op.as_str() {
            "COPY" => {
                let dest = args.split_whitespace().last().unwrap();
                assert!(files.iter().any(|f| f == dest), "agent image lacks {dest}: {files:?}");
            }
            "USER" => assert_eq!(agent.user.as_deref(), Some(args.as_str())),
            "EXPOSE" => assert_eq!(agent.exposed_ports, [format!("{args}/tcp")]),
            "ENTRYPOINT" => assert_eq!(serde_json::from_str::<Vec<String>>(args).unwrap(), agent.entrypoint),
            _ => {}
        }
    }
    for op in ["COPY", "USER", "EXPOSE", "ENTRYPOINT"] {
        assert!(
            stage.iter().any(|(o, _)| o == op),
            "agent.Containerfile's last stage has no {op}"
        );
    }

    for module in &images[1..] {
        let release = module.name.rsplit_once(":v").unwrap().1.split_once('-').unwrap().1;
        let files = files_of(module);
        let stage = final_stage("module.Containerfile", release);
        let copies: Vec<&String> = stage.iter().filter(|(o, _)| o == "COPY").map(|(_, a)| a).collect();
        assert!(!copies.is_empty());
        for args in copies {
            let dest = args.split_whitespace().last().unwrap();
            assert!(
                files.iter().any(|f| f == dest),
                "{} lacks {dest}: {files:?}",
                module.name
            );
        }
        // depmod's index beside it, and what KMM's loader runs on PATH.
        for f in ["modules.dep", "modules.alias"] {
            let want = format!("/opt/lib/modules/{release}/{f}");
            assert!(files.contains(&want), "{} lacks {want}", module.name);
        }
        for tool in ["/bin/modprobe", "/bin/sleep"] {
            assert!(files.iter().any(|f| f == tool), "{} lacks {tool}", module.name);
        }
    }
}

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
    let mut images = oci::test_images(dir.path()).unwrap();
    images.extend(driver_images(dir.path()));
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
