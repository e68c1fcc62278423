//! Container images without a container engine: OCI image layouts written
//! as tar archives that `ctr images import` takes (and any OCI tool).
//!
//! An [`Image`] is a name, a process (entrypoint, env, user) and layers of
//! files given by content. The archive holds `oci-layout`, `index.json` (the
//! name in `io.containerd.image.name` and `org.opencontainers.image.ref.name`)
//! and the blobs by digest: manifest → config → layers (uncompressed tars,
//! so each layer's digest is also its `rootfs.diff_ids` entry).
//!
//! Deterministic: the same inputs give the same bytes, so the same digests
//! (entries sorted, times 0, owner 0:0, JSON keys sorted, no creation date).
//! The images the test node needs are described in [`test_images`], the
//! driver's own (the chart's: the agent, the KMM module per kernel) in
//! [`driver_images`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
    MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use crate::{Result, RigError};

/// One file system entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { mode: u32, data: Vec<u8> },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// A layer: entries by path (relative, no leading `/`).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub entries: BTreeMap<String, Entry>,
}

impl Layer {
    /// Adds a file and every directory above it (0755).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> &mut Self {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::File { mode, data });
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.parents(path);
        self.entries.insert(
            path.to_string(),
            Entry::Symlink {
                target: target.to_string(),
            },
        );
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::Dir { mode });
        self
    }

    fn parents(&mut self, path: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.entries.entry(at.clone()).or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// The layer as an uncompressed tar, byte for byte reproducible.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match entry {
                Entry::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice()).unwrap();
                }
                Entry::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty()).unwrap();
                }
                Entry::Symlink { target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }
}

/// An image: its reference, its process, its layers (lowest first).
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// e.g. `registry.k8s.io/pause:3.10` (what pods and containerd call it)
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    /// e.g. `8080/tcp`
    pub exposed_ports: Vec<String>,
    pub layers: Vec<Layer>,
}

/// What [`Image::write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:...` of the manifest: the image's identity.
    pub manifest_digest: String,
    /// `sha256:...` of each layer (= its diff_id, uncompressed).
    pub layer_digests: Vec<String>,
    pub size: u64,
}

fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!("sha256:{:x}", h.finalize())
}

/// JSON with sorted keys (through `serde_json::Value`, whose maps are
/// ordered): oci-spec keeps annotations in a HashMap.
fn canonical_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(&serde_json::to_value(v).unwrap()).unwrap()
}

impl Image {
    /// The last path segment of the name without its tag (`pause` for
    /// `localhost/mock-device/pause:1.0`): the archive's file name.
    pub fn short_name(&self) -> &str {
        let last = self.name.rsplit('/').next().unwrap_or(&self.name);
        last.split(':').next().unwrap_or(last)
    }

    /// The archive's files (path → bytes), and what they amount to.
    pub fn layout(&self) -> (BTreeMap<String, Vec<u8>>, Written) {
        let mut files = BTreeMap::new();
        let blob = |files: &mut BTreeMap<String, Vec<u8>>, data: Vec<u8>| -> (String, u64) {
            let digest = sha256(&data);
            let size = data.len() as u64;
            files.insert(format!("blobs/sha256/{}", &digest["sha256:".len()..]), data);
            (digest, size)
        };
        let mut layer_descriptors = Vec::new();
        let mut layer_digests = Vec::new();
        for layer in &self.layers {
            let (digest, size) = blob(&mut files, layer.tar());
            layer_descriptors.push(
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageLayer)
                    .digest(digest.parse::<Digest>().unwrap())
                    .size(size)
                    .build()
                    .unwrap(),
            );
            layer_digests.push(digest);
        }
        let mut process = ConfigBuilder::default();
        if !self.entrypoint.is_empty() {
            process = process.entrypoint(self.entrypoint.clone());
        }
        if !self.cmd.is_empty() {
            process = process.cmd(self.cmd.clone());
        }
        if !self.env.is_empty() {
            process = process.env(self.env.clone());
        }
        if let Some(u) = &self.user {
            process = process.user(u.clone());
        }
        if !self.exposed_ports.is_empty() {
            process = process.exposed_ports(self.exposed_ports.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .config(process.build().unwrap())
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(layer_digests.clone())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let (config_digest, config_size) = blob(&mut files, canonical_json(&config));
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageConfig)
                    .digest(config_digest.parse::<Digest>().unwrap())
                    .size(config_size)
                    .build()
                    .unwrap(),
            )
            .layers(layer_descriptors)
            .build()
            .unwrap();
        let (manifest_digest, manifest_size) = blob(&mut files, canonical_json(&manifest));
        let tag = self.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageManifest)
                    .digest(manifest_digest.parse::<Digest>().unwrap())
                    .size(manifest_size)
                    .annotations(
                        [
                            ("io.containerd.image.name".to_string(), self.name.clone()),
                            ("org.opencontainers.image.ref.name".to_string(), tag.to_string()),
                        ]
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                    )
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        files.insert("index.json".into(), canonical_json(&index));
        files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
        let size = files.values().map(|v| v.len() as u64).sum();
        (
            files,
            Written {
                manifest_digest,
                layer_digests,
                size,
            },
        )
    }

    /// Writes the archive to `path` (replacing it only when the bytes differ,
    /// so an unchanged image leaves its file untouched).
    pub fn write(&self, path: &Path) -> Result<Written> {
        let (files, written) = self.layout();
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &files {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        if fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
            let tmp = path.with_extension("tmp");
            let mut f = fs::File::create(&tmp).map_err(RigError::io(format!("creating {}", tmp.display())))?;
            f.write_all(&bytes).map_err(RigError::io("writing an image"))?;
            fs::rename(&tmp, path).map_err(RigError::io(format!("renaming to {}", path.display())))?;
        }
        Ok(written)
    }
}

/// The pause program (`images/pause/pause.c`), built static and stripped.
fn build_pause(out_dir: &Path) -> Result<Vec<u8>> {
    let src = crate::workspace_root().join("images/pause/pause.c");
    let bin = out_dir.join("pause.bin");
    let out = std::process::Command::new("gcc")
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(RigError::io("running gcc (apt-get install gcc libc6-dev)"))?;
    if !out.status.success() {
        return Err(RigError::Command {
            what: "gcc pause.c".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    fs::read(&bin).map_err(RigError::io("reading pause"))
}

/// Debian's busybox-static (`/bin/busybox`) and its version (`1.35.0`).
fn busybox() -> Result<(Vec<u8>, String, Vec<String>)> {
    let path = Path::new("/bin/busybox");
    let data = fs::read(path).map_err(|_| RigError::MissingTool {
        tool: "/bin/busybox".into(),
        hint: "apt-get install -y busybox-static (./dev setup does)",
    })?;
    let run = |args: &[&str]| {
        std::process::Command::new(path)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(RigError::io("running busybox"))
    };
    // "BusyBox v1.35.0 (Debian ...) multi-call binary."
    let banner = run(&["--help"])?;
    let version = banner
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix('v'))
        .unwrap_or("unknown")
        .to_string();
    let applets = run(&["--list"])?.lines().map(str::to_string).collect();
    Ok((data, version, applets))
}

/// The images the test node needs, described here and nowhere else:
/// - `localhost/mock-device/pause:1.0`: the pod sandbox (`images/pause/pause.c`);
/// - `localhost/mock-device/busybox:<version>`: test pods' image, Debian's
///   busybox-static with a link per applet under /bin, `sh` as its command.
pub fn test_images(out_dir: &Path) -> Result<Vec<Image>> {
    let mut pause = Layer::default();
    pause.file("pause", 0o755, build_pause(out_dir)?);
    let (bb, version, applets) = busybox()?;
    let mut rootfs = Layer::default();
    rootfs.file("bin/busybox", 0o755, bb);
    for a in applets.iter().filter(|a| a.as_str() != "busybox") {
        rootfs.symlink(&format!("bin/{a}"), "busybox");
    }
    for d in ["dev", "proc", "sys", "etc", "root", "var"] {
        rootfs.dir(d, 0o755);
    }
    rootfs.dir("tmp", 0o1777);
    rootfs.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
    );
    rootfs.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n".to_vec());
    Ok(vec![
        Image {
            name: "localhost/mock-device/pause:1.0".into(),
            entrypoint: vec!["/pause".into()],
            user: Some("65535:65535".into()),
            layers: vec![pause],
            ..Default::default()
        },
        Image {
            name: format!("localhost/mock-device/busybox:{version}"),
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            layers: vec![rootfs],
            ..Default::default()
        },
    ])
}

/// The driver's version, the chart's `appVersion` (chart/Chart.yaml): the
/// tag of its images.
pub fn driver_version() -> Result<String> {
    let path = crate::workspace_root().join("chart/Chart.yaml");
    let text = fs::read_to_string(&path).map_err(RigError::io(format!("reading {}", path.display())))?;
    text.lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| RigError::Command {
            what: "reading the chart's appVersion".into(),
            detail: format!("no appVersion in {}", path.display()),
        })
}

/// Where the driver's images live (the chart's defaults, chart/values.yaml).
pub const DRIVER_REPOSITORY: &str = "ghcr.io/fabiendupont/mock-accel-dra-driver";
pub const MODULE_REPOSITORY: &str = "ghcr.io/fabiendupont/mock-accel-module";
/// The busybox applets of the module images: what KMM's loader runs
/// (`modprobe`, `sleep`) and what `images/mock-accel-load` does.
pub const MODULE_IMAGE_APPLETS: &[&str] = &[
    "sh", "modprobe", "insmod", "sleep", "cat", "ls", "tr", "mktemp", "cp", "tail", "uname",
];

/// The chart's images, what `images/*.Containerfile` build with an engine
/// (a test checks that both describe the same files, user, entrypoint and
/// ports):
/// - `<DRIVER_REPOSITORY>:<appVersion>`: the agent (node agent and
///   controller; the eBPF object is inside the binary), the shared libraries
///   it links (glibc, libgcc_s, libudev, at their Debian paths), `nonroot`
///   (65532) as user, port 8080;
/// - `<MODULE_REPOSITORY>:v<appVersion>-<kernel release>` per built module:
///   the layout of KMM's ModuleLoader images (`/opt/lib/modules/<release>/
///   extra/mock-accel.ko` with depmod's index), busybox for `modprobe`,
///   `sleep` and `sh`, and the chart's loader (`/usr/bin/mock-accel-load`);
/// - `<MODULE_REPOSITORY>:v<appVersion>`: all of those builds in one image,
///   for the loader (kernelModule.loader), whose command it is.
pub fn driver_images(agent: &Path, modules: &[(String, std::path::PathBuf)]) -> Result<Vec<Image>> {
    let version = driver_version()?;
    let mut root = Layer::default();
    root.file("usr/bin/mock-accel-agent", 0o755, stripped(agent)?);
    for lib in crate::initramfs::shared_libraries(agent)? {
        let data = fs::read(&lib).map_err(RigError::io(format!("reading {}", lib.display())))?;
        root.file(lib.to_string_lossy().trim_start_matches('/'), 0o755, data);
    }
    root.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
    );
    root.file("etc/group", 0o644, b"root:x:0:\nnonroot:x:65532:\n".to_vec());
    root.dir("home/nonroot", 0o700);
    root.dir("tmp", 0o1777);
    let mut images = vec![Image {
        name: format!("{DRIVER_REPOSITORY}:{version}"),
        entrypoint: vec!["/usr/bin/mock-accel-agent".into()],
        user: Some("65532:65532".into()),
        exposed_ports: vec!["8080/tcp".into()],
        layers: vec![root],
        ..Default::default()
    }];
    if modules.is_empty() {
        return Ok(images);
    }
    let bb = busybox()?.0;
    let root = crate::workspace_root();
    let loader =
        fs::read(root.join("images/mock-accel-load")).map_err(RigError::io("reading images/mock-accel-load"))?;
    let mut tools = Layer::default();
    tools.file("bin/busybox", 0o755, bb);
    for applet in MODULE_IMAGE_APPLETS {
        tools.symlink(&format!("bin/{applet}"), "busybox");
    }
    tools.file("usr/bin/mock-accel-load", 0o755, loader);
    // The module's sources, for the loader's build against a node's headers
    // (where the image has a toolchain).
    let mut sources: Vec<_> = fs::read_dir(root.join("kmod"))
        .map_err(RigError::io("listing kmod/"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name == "Makefile" || name.ends_with(".c") || name.ends_with(".h")
        })
        .collect();
    sources.sort();
    for path in sources {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let data = fs::read(&path).map_err(RigError::io(format!("reading {}", path.display())))?;
        tools.file(&format!("usr/local/src/mock-accel/{name}"), 0o644, data);
    }
    tools.dir("tmp", 0o1777);
    let mut all = Vec::new();
    for (release, ko) in modules {
        // Debug information out (as Debian installs its modules): smaller,
        // and the same bytes whatever directory the module was built in.
        let scratch = tempfile::tempdir().map_err(RigError::io("creating a scratch directory"))?;
        let plain = scratch.path().join(ko.file_name().unwrap_or_default());
        fs::write(&plain, stripped(ko)?).map_err(RigError::io("writing the stripped module"))?;
        let mut tree = Layer::default();
        for (path, data) in crate::initramfs::module_tree(&[plain.as_path()], release, &[])? {
            tree.file(&format!("opt/lib/modules/{release}/{path}"), 0o644, data);
        }
        all.push(tree.clone());
        images.push(Image {
            name: format!("{MODULE_REPOSITORY}:v{version}-{release}"),
            cmd: vec!["sleep".into(), "infinity".into()],
            env: vec!["PATH=/bin:/usr/bin".into()],
            layers: vec![tools.clone(), tree],
            ..Default::default()
        });
    }
    // The loader's image: every build, one image for a cluster of mixed
    // kernels (the chart's kernelModule.loader; a DaemonSet's pods share one
    // image, so it cannot pick a tag per node as KMM does).
    let mut layers = vec![tools];
    layers.extend(all);
    images.push(Image {
        name: format!("{MODULE_REPOSITORY}:v{version}"),
        cmd: vec!["/usr/bin/mock-accel-load".into()],
        env: vec!["PATH=/bin:/usr/bin".into()],
        layers,
        ..Default::default()
    });
    Ok(images)
}

/// [`driver_images`] with the module built for every installed guest kernel
/// (in `out_dir/kmod-<release>`).
pub fn driver_images_for_installed_kernels(agent: &Path, out_dir: &Path) -> Result<Vec<Image>> {
    let mut modules = Vec::new();
    for kernel in crate::kernel::Kernel::all()? {
        let dir = out_dir.join(format!("kmod-{}", kernel.release));
        let ko = kernel.build_module(&crate::workspace_root().join("kmod"), &dir)?;
        modules.push((kernel.release, ko));
    }
    driver_images(agent, &modules)
}

/// A copy of a binary without its debug information (a debug build of the
/// agent is 150 MB with it).
fn stripped(binary: &Path) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(RigError::io("creating a scratch directory"))?;
    let out = dir.path().join("stripped");
    if !crate::initramfs::strip_debug(binary, &out)? {
        return Err(RigError::Command {
            what: format!("strip {}", binary.display()),
            detail: "strip --strip-debug failed".into(),
        });
    }
    fs::read(&out).map_err(RigError::io("reading the stripped binary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        let mut l = Layer::default();
        l.file("usr/bin/hello", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .symlink("bin/hi", "../usr/bin/hello")
            .dir("tmp", 0o1777);
        Image {
            name: "localhost/x:1".into(),
            entrypoint: vec!["/usr/bin/hello".into()],
            env: vec!["A=1".into()],
            layers: vec![l],
            ..Default::default()
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_digests() {
        let (a, wa) = sample().layout();
        let (b, wb) = sample().layout();
        assert_eq!(a, b);
        assert_eq!(wa, wb);
        let mut other = sample();
        other.env.push("B=2".into());
        assert_ne!(other.layout().1.manifest_digest, wa.manifest_digest);
    }

    #[test]
    fn index_manifest_config_and_layers_chain_by_digest() {
        let (files, w) = sample().layout();
        let blob = |d: &str| files[&format!("blobs/sha256/{}", &d["sha256:".len()..])].clone();
        let json = |d: &str| serde_json::from_slice::<serde_json::Value>(&blob(d)).unwrap();
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{name}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], w.manifest_digest.as_str());
        assert_eq!(m["annotations"]["io.containerd.image.name"], "localhost/x:1");
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "1");
        let manifest = json(&w.manifest_digest);
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let config = json(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(
            (&config["os"], &config["architecture"]),
            (&"linux".into(), &"amd64".into())
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/hello");
        assert_eq!(config["rootfs"]["diff_ids"][0], w.layer_digests[0].as_str());
        assert_eq!(manifest["layers"][0]["digest"], w.layer_digests[0].as_str());
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
        // The layer: parents first, modes and link kept, owner 0, time 0.
        let tar = blob(&w.layer_digests[0]);
        let mut ar = tar::Archive::new(tar.as_slice());
        let got: Vec<(String, u32, Option<String>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                assert_eq!((e.header().mtime().unwrap(), e.header().uid().unwrap()), (0, 0));
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("bin/".to_string(), 0o755, None),
                ("bin/hi".to_string(), 0o777, Some("../usr/bin/hello".to_string())),
                ("tmp/".to_string(), 0o1777, None),
                ("usr/".to_string(), 0o755, None),
                ("usr/bin/".to_string(), 0o755, None),
                ("usr/bin/hello".to_string(), 0o755, None),
            ]
        );
    }
}
