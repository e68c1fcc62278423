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

    let (loader, per_kernel) = images[1..].split_last().unwrap();
    assert_eq!(
        loader.name,
        format!("{}:v{}", oci::MODULE_REPOSITORY, oci::driver_version().unwrap())
    );
    assert_eq!(loader.cmd, ["/usr/bin/mock-accel-load"]);
    let loader_files = files_of(loader);
    for module in per_kernel {
        let release = module.name.rsplit_once(":v").unwrap().1.split_once('-').unwrap().1;
        let files = files_of(module);
        let stage = final_stage("module.Containerfile", release);
        let copies: Vec<&String> = stage.iter().filter(|(o, _)| o == "COPY").map(|(_, a)| a).collect();
        assert!(!copies.is_empty());
        for args in copies {
            let dest = args.split_whitespace().last().unwrap();
            // A directory (a trailing /): each source file in it.
            let want: Vec<String> = match dest.strip_suffix('/') {
                Some(dir) => args
                    .split_whitespace()
                    .rev()
                    .skip(1)
                    .map(|src| format!("{dir}/{}", src.rsplit('/').next().unwrap()))
                    .collect(),
                None => vec![dest.to_string()],
            };
            for dest in want {
                assert!(files.contains(&dest), "{} lacks {dest}: {files:?}", module.name);
            }
        }
        // depmod's index beside it, and what KMM's loader runs on PATH.
        for f in ["modules.dep", "modules.alias"] {
            let want = format!("/opt/lib/modules/{release}/{f}");
            assert!(files.contains(&want), "{} lacks {want}", module.name);
        }
        for tool in ["/bin/modprobe", "/bin/sleep", "/bin/insmod", "/usr/bin/mock-accel-load"] {
            assert!(files.iter().any(|f| f == tool), "{} lacks {tool}", module.name);
        }
        // The loader's image holds every kernel's build.
        let ko = format!("/opt/lib/modules/{release}/extra/mock-accel.ko");
        assert!(loader_files.contains(&ko), "{} lacks {ko}", loader.name);
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

/// The chart's loader without KMM (`images/mock-accel-load`), run by the
/// image's own busybox `sh` with the image's applets on PATH, on a root of
/// files (the node's /sys, /proc, /lib/modules; the image's /opt and
/// /usr/local/src) and a recording `insmod`: each way it can go says what it did
/// or why it could not. The build against a node's headers is a real build
/// of the module against an installed guest kernel's headers (the host's
/// make and gcc standing for an image with a toolchain).
#[test]
fn the_module_loader_says_what_it_did_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for applet in oci::MODULE_IMAGE_APPLETS.iter().filter(|a| **a != "insmod") {
        std::os::unix::fs::symlink("/bin/busybox", bin.join(applet)).unwrap();
    }
    // insmod: records its arguments; fails with INSMOD_FAIL's message.
    let log = dir.path().join("insmod.log");
    std::fs::write(
        bin.join("insmod"),
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ -z \"${{INSMOD_FAIL:-}}\" ] || {{ echo \"insmod: can't insert '$1': $INSMOD_FAIL\" >&2; exit 1; }}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("insmod"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let kernel = mock_device_testkit::kernel::Kernel::all()
        .unwrap()
        .pop()
        .expect("a guest kernel");
    let kver = kernel.release.clone();
    let script = workspace_root().join("images/mock-accel-load");

    // One run on a fresh root made by `setup`: (exit code, stdout + stderr).
    let run = |setup: &dyn Fn(&Path), path: &str, env: &[(&str, &str)], args: &[&str]| -> (i32, String) {
        let root = tempfile::tempdir().unwrap();
        setup(root.path());
        let _ = std::fs::remove_file(&log);
        let out = Command::new("/bin/busybox")
            .arg("sh")
            .arg(&script)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("MOCK_ACCEL_LOAD_ROOT", root.path())
            .env("MOCK_ACCEL_LOAD_KERNEL", &kver)
            .env("MOCK_ACCEL_LOAD_INSMOD", bin.join("insmod"))
            .env("TMPDIR", dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let image_path = bin.display().to_string();
    let with_toolchain = format!("{}:/usr/bin:/bin", bin.display());
    let mk = |root: &Path, file: &str, text: &str| {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let shipped = |root: &Path| mk(root, &format!("opt/lib/modules/{kver}/extra/mock-accel.ko"), "ko");
    let other_kernel = |root: &Path| mk(root, "opt/lib/modules/5.10.0-99-amd64/extra/mock-accel.ko", "ko");
    let insmod_args = || std::fs::read_to_string(&log).unwrap_or_default();

    // 1. Loaded already: nothing, saying with what; parameters not applied.
    let (code, out) = run(
        &|r| mk(r, "sys/module/mock_accel/parameters/num_pfs", "4\n"),
        &image_path,
        &[],
        &["num_pfs=8"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("loaded already") && out.contains("num_pfs=4"), "{out}");
    assert!(out.contains("not applied to a loaded module"), "{out}");
    assert_eq!(insmod_args(), "", "no insmod when loaded");

    // 2. The build for this kernel in the image, with the parameters.
    let (code, out) = run(&|r| shipped(r), &image_path, &[], &["num_pfs=8", "max_vfs=16"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("loaded the build for {kver} shipped in this image")),
        "{out}"
    );
    assert!(
        insmod_args().ends_with(&format!(
            "/opt/lib/modules/{kver}/extra/mock-accel.ko num_pfs=8 max_vfs=16\n"
        )),
        "{}",
        insmod_args()
    );

    // 3. The kernel refuses: each reason in words.
    for (msg, says) in [
        ("Key was rejected by service", "accepts only signed modules"),
        ("Operation not permitted", "CAP_SYS_MODULE"),
        ("Invalid module format", "does not match the running kernel"),
        ("Invalid parameters", "refused the module's parameters"),
    ] {
        let (code, out) = run(&|r| shipped(r), &image_path, &[("INSMOD_FAIL", msg)], &[]);
        assert_eq!(code, 1, "{msg}: {out}");
        assert!(out.contains(says) && out.contains(msg), "{msg}: {out}");
    }

    // 4. Module loading disabled.
    let (code, out) = run(
        &|r| {
            shipped(r);
            mk(r, "proc/sys/kernel/modules_disabled", "1\n")
        },
        &image_path,
        &[],
        &[],
    );
    assert_eq!((code, out.contains("modules_disabled=1")), (1, true), "{out}");

    // 5. No build for this kernel and no headers: both said, with what the image has.
    let (code, out) = run(&|r| other_kernel(r), &image_path, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "no build for the running kernel {kver} (it has: 5.10.0-99-amd64 )"
        )),
        "{out}"
    );
    assert!(out.contains("no kernel headers"), "{out}");

    // 6. Headers there, no toolchain in the image.
    let headers = |r: &Path| {
        let dir = r.join(format!("lib/modules/{kver}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(format!("/lib/modules/{kver}/build"), dir.join("build")).unwrap();
        let src = r.join("usr/local/src/mock-accel");
        std::fs::create_dir_all(&src).unwrap();
        for f in ["Makefile", "main.c", "fn.c", "chr.c", "sysfs.c", "mock_accel.h"] {
            std::fs::copy(workspace_root().join("kmod").join(f), src.join(f)).unwrap();
        }
    };
    let (code, out) = run(&|r| headers(r), &image_path, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no make and C compiler"), "{out}");

    // 7. Headers and a toolchain: a real build against them, then insmod of it.
    let (code, out) = run(&|r| headers(r), &with_toolchain, &[], &["num_pfs=2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made against the node's headers"), "{out}");
    let args = insmod_args();
    let ko = args.split_whitespace().next().unwrap().to_string();
    assert!(args.ends_with(" num_pfs=2\n"), "{args}");
    let info = Command::new("/sbin/modinfo")
        .args(["-F", "vermagic", &ko])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&info.stdout).starts_with(&format!("{kver} ")),
        "the build's vermagic: {}",
        String::from_utf8_lossy(&info.stdout)
    );
}
