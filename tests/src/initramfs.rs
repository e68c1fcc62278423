//! An initramfs (newc cpio archive) for the guest: busybox, the init
//! script, the module installed under `/lib/modules/<ver>/` with `depmod`,
//! and host binaries with the shared libraries `ldd` lists for them.
//!
//! The kernel accepts several archives back to back, so a payload built
//! once can be reused with a small per-run archive appended.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, RigError, require_tool};

/// Directory mode in the archive.
const DIR: u32 = 0o040755;
/// Mode of executables.
pub const EXEC: u32 = 0o100755;
/// Mode of plain files.
pub const FILE: u32 = 0o100644;
/// Mode of symbolic links (the entry's data is the target).
const SYMLINK: u32 = 0o120777;

enum Content {
    Dir,
    Data(Vec<u8>),
    HostFile(PathBuf),
}

/// Files to put in the guest's root, by absolute destination path.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, (u32, Content)>,
    /// Stripped copies of binaries live here until the archive is written.
    scratch: Option<tempfile::TempDir>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, dest: &str, mode: u32, content: Content) -> &mut Self {
        let dest = dest.trim_start_matches('/').to_string();
        let mut parent = Path::new(&dest).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert((DIR, Content::Dir));
            parent = dir.parent();
        }
        self.entries.insert(dest, (mode, content));
        self
    }

    /// An empty directory.
    pub fn dir(&mut self, dest: &str) -> &mut Self {
        self.add(dest, DIR, Content::Dir)
    }

    /// A file with the given contents.
    pub fn data(&mut self, dest: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.add(dest, mode, Content::Data(data.into()))
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, dest: &str, target: &str) -> &mut Self {
        self.add(dest, SYMLINK, Content::Data(target.as_bytes().to_vec()))
    }

    /// A copy of a host file (read when the archive is written).
    pub fn host_file(&mut self, dest: &str, mode: u32, src: &Path) -> &mut Self {
        self.add(dest, mode, Content::HostFile(src.to_path_buf()))
    }

    /// A host executable and every shared library `ldd` lists for it, at the
    /// same paths as on the host (so the dynamic loader finds them).
    /// Debug information is stripped from a copy (a debug build of the agent
    /// is 150 MB with it, 35 MB without), when `strip` is there.
    pub fn binary(&mut self, dest: &str, src: &Path) -> Result<&mut Self> {
        for lib in shared_libraries(src)? {
            let dest_lib = lib.to_string_lossy().into_owned();
            self.host_file(&dest_lib, EXEC, &lib);
        }
        let stripped = self.stripped_copy(src)?;
        Ok(self.host_file(dest, EXEC, stripped.as_deref().unwrap_or(src)))
    }

    fn stripped_copy(&mut self, src: &Path) -> Result<Option<PathBuf>> {
        if require_tool("strip", "").is_err() {
            return Ok(None);
        }
        if self.scratch.is_none() {
            self.scratch = Some(tempfile::tempdir().map_err(RigError::io("creating a scratch directory"))?);
        }
        let dir = self.scratch.as_ref().expect("just set").path();
        let out = dir.join(format!(
            "{}-{}",
            self.entries.len(),
            src.file_name().unwrap_or_default().to_string_lossy()
        ));
        Ok(strip_debug(src, &out)?.then_some(out))
    }

    /// Installs a module as `/lib/modules/<release>/extra/<name>.ko` and the
    /// `modules.*` files that the host's `depmod` writes for it, so that
    /// `modprobe <name>` works in the guest.
    pub fn module(&mut self, ko: &Path, release: &str) -> Result<&mut Self> {
        self.modules(&[ko], release, &[])
    }

    /// Installs our modules under `extra/`, the kernel's own modules named
    /// in `in_tree` (e.g. `net/bridge/bridge.ko`, relative to
    /// `/lib/modules/<release>/kernel/`, copied from the host's tree) and one
    /// set of `modules.*` files from the host's `depmod` for all of them.
    pub fn modules(&mut self, ours: &[&Path], release: &str, in_tree: &[&str]) -> Result<&mut Self> {
        for (path, data) in module_tree(ours, release, in_tree)? {
            self.data(&format!("lib/modules/{release}/{path}"), FILE, data);
        }
        Ok(self)
    }

    /// Writes the archive (uncompressed newc; the kernel takes it as is).
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<W> {
        for (ino, (name, (mode, content))) in self.entries.iter().enumerate() {
            let data = match content {
                Content::Dir => Vec::new(),
                Content::Data(data) => data.clone(),
                Content::HostFile(src) => fs::read(src).map_err(RigError::io(format!("reading {}", src.display())))?,
            };
            let size = u32::try_from(data.len()).map_err(|_| RigError::Command {
                what: "packing the initramfs".into(),
                detail: format!("{name} is larger than 4 GiB"),
            })?;
            let mut writer = cpio::newc::Builder::new(name)
                .ino(ino as u32 + 1)
                .mode(*mode)
                .nlink(if *mode == DIR { 2 } else { 1 })
                .write(out, size);
            writer
                .write_all(&data)
                .map_err(RigError::io(format!("packing {name}")))?;
            out = writer.finish().map_err(RigError::io(format!("packing {name}")))?;
        }
        cpio::newc::trailer(out).map_err(RigError::io("ending the archive"))
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.write_to(Vec::new())
    }
}

/// Writes `src` without its debug information to `out` (`strip
/// --strip-debug`); whether strip succeeded.
pub fn strip_debug(src: &Path, out: &Path) -> Result<bool> {
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .map_err(RigError::io("running strip (package binutils)"))?;
    Ok(status.success())
}

/// A module tree for `release` as `depmod` makes it: our modules under
/// `extra/`, the kernel's own modules named in `in_tree` (paths under
/// `kernel/`) and the `modules.*` index files, as (path relative to
/// `lib/modules/<release>/`, contents). The guest's initramfs installs it
/// under `/lib/modules`, the KMM module image under `/opt/lib/modules`.
pub fn module_tree(ours: &[&Path], release: &str, in_tree: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    // depmod lives in /usr/sbin, which a non-root PATH may lack.
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map_or_else(
            || require_tool("depmod", "install it with `apt-get install -y kmod`"),
            Ok,
        )?;
    let staging = tempfile::tempdir().map_err(RigError::io("creating a depmod staging root"))?;
    let moddir = staging.path().join("lib/modules").join(release);
    let mut installed = Vec::new();
    for ko in ours {
        let name = ko.file_name().expect("a .ko path has a file name").to_string_lossy();
        installed.push((format!("extra/{name}"), ko.to_path_buf()));
    }
    let host_tree = Path::new("/lib/modules").join(release).join("kernel");
    // Debian's 6.12 ships its modules xz-compressed (`.ko.xz`); the
    // guest's busybox loads plain ones: unpacked here.
    let mut packed = Vec::new();
    for rel in in_tree {
        let src = host_tree.join(rel);
        let xz = host_tree.join(format!("{rel}.xz"));
        if src.is_file() {
            installed.push((format!("kernel/{rel}"), src));
        } else if xz.is_file() {
            packed.push((format!("kernel/{rel}"), xz));
        } else {
            return Err(RigError::Command {
                what: "installing the guest's kernel modules".into(),
                detail: format!("{} is missing (package linux-image-{release})", src.display()),
            });
        }
    }
    for (dest, src) in &installed {
        let to = moddir.join(dest);
        fs::create_dir_all(to.parent().expect("has a parent")).map_err(RigError::io("creating the staging tree"))?;
        fs::copy(src, &to).map_err(RigError::io(format!("copying {}", src.display())))?;
    }
    for (dest, src) in packed {
        let to = moddir.join(&dest);
        fs::create_dir_all(to.parent().expect("has a parent")).map_err(RigError::io("creating the staging tree"))?;
        let xz = require_tool("xz", "install it with `apt-get install -y xz-utils`")?;
        let out = Command::new(xz)
            .arg("-dc")
            .arg(&src)
            .output()
            .map_err(RigError::io("running xz"))?;
        if !out.status.success() {
            return Err(RigError::Command {
                what: format!("unpacking {}", src.display()),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        fs::write(&to, &out.stdout).map_err(RigError::io(format!("writing {}", to.display())))?;
        installed.push((dest, to));
    }
    let out = Command::new(depmod)
        .arg("-b")
        .arg(staging.path())
        .arg(release)
        .output()
        .map_err(RigError::io("running depmod"))?;
    if !out.status.success() {
        return Err(RigError::Command {
            what: "depmod".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut tree = Vec::new();
    for entry in fs::read_dir(&moddir).map_err(RigError::io("reading the staging tree"))? {
        let entry = entry.map_err(RigError::io("reading the staging tree"))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with("modules.") {
            let data = fs::read(entry.path()).map_err(RigError::io(format!("reading {file}")))?;
            tree.push((file, data));
        }
    }
    for (dest, src) in installed {
        let data = fs::read(&src).map_err(RigError::io(format!("reading {}", src.display())))?;
        tree.push((dest, data));
    }
    tree.sort();
    Ok(tree)
}

/// Absolute paths of the shared libraries (and loader) `ldd` lists for a
/// binary; none for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(RigError::io("running ldd (package libc-bin)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing.
        return Ok(Vec::new());
    }
    parse_ldd(&text).map_err(|missing| RigError::Command {
        what: format!("ldd {}", binary.display()),
        detail: format!("library not found: {missing}"),
    })
}

/// Parses ldd's output; `Err` names a library that was not found.
fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(), "libfoo.so.1");
    }

    #[test]
    fn archive_has_parents_and_reads_back() {
        let mut fs = Initramfs::new();
        fs.data("/a/b/c.txt", FILE, "hello").data("/init", EXEC, "#!/bin/sh\n");
        let bytes = fs.to_bytes().unwrap();

        let mut names = Vec::new();
        let mut rest: &[u8] = &bytes;
        loop {
            let reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            names.push((
                reader.entry().name().to_string(),
                reader.entry().mode(),
                reader.entry().file_size(),
            ));
            rest = reader.finish().unwrap();
        }
        assert_eq!(
            names,
            vec![
                ("a".to_string(), DIR, 0),
                ("a/b".to_string(), DIR, 0),
                ("a/b/c.txt".to_string(), FILE, 5),
                ("init".to_string(), EXEC, 10),
            ]
        );
    }

    #[test]
    fn host_binaries_bring_their_libraries() {
        let ls = Path::new("/bin/ls");
        let libs = shared_libraries(ls).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        assert!(libs.iter().all(|l| l.is_file()), "{libs:?}");
    }
}
