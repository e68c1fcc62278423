//! The guest kernel: find Debian's installed kernels (or the sanitizing
//! kernel `tests/debug-kernel/build.sh` builds) and build the module against
//! their headers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, RigError, require_tool, workspace_root};

/// The name (`MOCK_GUEST_KERNEL=sanitizing`) of the sanitizing kernel.
pub const SANITIZING: &str = "sanitizing";

/// An installed kernel that can boot as a guest and build modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `/boot/vmlinuz-<release>`.
    pub image: PathBuf,
    /// `/lib/modules/<release>/build`: the headers' build directory (the
    /// sanitizing kernel's own build tree).
    pub build_dir: PathBuf,
    /// Built with KASAN, lockdep, kmemleak, UBSAN, debugobjects and list
    /// debugging (`tests/debug-kernel/`).
    pub sanitizing: bool,
}

impl Kernel {
    /// The newest kernel in `/boot` that has headers, or the one named by
    /// `MOCK_GUEST_KERNEL` (a release string, or `sanitizing`). Never
    /// hard-coded.
    pub fn find() -> Result<Kernel> {
        if std::env::var("MOCK_GUEST_KERNEL").is_ok_and(|name| name == SANITIZING) {
            return Self::sanitizing();
        }
        Self::find_in(Path::new("/boot"), Path::new("/lib/modules"))
    }

    /// The sanitizing kernel built by `just debug-kernel`
    /// (`tests/debug-kernel/build.sh`, linked as `target/debug-kernel`).
    pub fn sanitizing() -> Result<Kernel> {
        Self::sanitizing_in(&workspace_root().join("target/debug-kernel"))
    }

    fn sanitizing_in(dir: &Path) -> Result<Kernel> {
        let missing = || RigError::NoSanitizingKernel {
            dir: dir.display().to_string(),
        };
        let release = fs::read_to_string(dir.join("release")).map_err(|_| missing())?;
        let kernel = Kernel {
            release: release.trim().to_string(),
            image: dir.join("bzImage"),
            build_dir: dir.join("build"),
            sanitizing: true,
        };
        if kernel.release.is_empty() || !kernel.image.is_file() || !kernel.build_dir.join("Makefile").is_file() {
            return Err(missing());
        }
        Ok(kernel)
    }

    /// [`Kernel::find`] over other directories (for tests of the search).
    pub fn find_in(boot: &Path, modules: &Path) -> Result<Kernel> {
        let wanted = std::env::var("MOCK_GUEST_KERNEL").ok().filter(|s| !s.is_empty());
        let mut found: Vec<Kernel> = Self::all_in(boot, modules)?
            .into_iter()
            .filter(|k| wanted.as_deref().is_none_or(|w| w == k.release))
            .collect();
        found.pop().ok_or_else(|| RigError::NoKernel {
            detail: match wanted {
                Some(w) => format!(" (MOCK_GUEST_KERNEL={w} has no image or no headers)"),
                None => String::new(),
            },
        })
    }

    /// Every installed kernel that has headers, oldest first: the module's
    /// guest tests run on each (`./dev setup` installs Debian's 6.1 and
    /// 6.12).
    pub fn all() -> Result<Vec<Kernel>> {
        Self::all_in(Path::new("/boot"), Path::new("/lib/modules"))
    }

    fn all_in(boot: &Path, modules: &Path) -> Result<Vec<Kernel>> {
        let entries = fs::read_dir(boot).map_err(|e| RigError::NoKernel {
            detail: format!(" ({}: {e})", boot.display()),
        })?;
        let mut found: Vec<Kernel> = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let release = name.strip_prefix("vmlinuz-")?.to_string();
                let build_dir = modules.join(&release).join("build");
                build_dir.join("Makefile").is_file().then(|| Kernel {
                    image: boot.join(&name),
                    release,
                    build_dir,
                    sanitizing: false,
                })
            })
            .collect();
        found.sort_by_key(|k| version_key(&k.release));
        Ok(found)
    }

    /// Builds `kmod/` against this kernel in a fresh copy under `out_dir`
    /// (so parallel test binaries never share object files) and returns the
    /// path of `mock-accel.ko` there. The build is reproducible, so a
    /// module built from the same sources against the same headers is
    /// kept (`target/kmod-cache/`) and copied instead of built again (about
    /// 5 s a build; every guest test builds one).
    pub fn build_module(&self, kmod_src: &Path, out_dir: &Path) -> Result<PathBuf> {
        let cache = workspace_root().join("target/kmod-cache");
        let cached = cache.join(format!("{}-{}.ko", self.release, self.module_key(kmod_src)?));
        let ko = out_dir.join("mock-accel.ko");
        fs::create_dir_all(out_dir).map_err(RigError::io(format!("creating {}", out_dir.display())))?;
        if fs::copy(&cached, &ko).is_ok() {
            return Ok(ko);
        }
        let (ko, _log) = self.build_module_with(kmod_src, out_dir, &[])?;
        // Into the cache atomically: parallel tests may build it at once.
        let _ = fs::create_dir_all(&cache);
        let tmp = cache.join(format!(".{}-{}.tmp", self.release, std::process::id()));
        if fs::copy(&ko, &tmp).is_ok() {
            let _ = fs::rename(&tmp, &cached);
        }
        Ok(ko)
    }

    /// What a module build depends on: the sources (`Makefile`, `*.c`,
    /// `*.h`), this kernel's symbol versions and headers' configuration.
    fn module_key(&self, kmod_src: &Path) -> Result<String> {
        use sha2::{Digest, Sha256};
        // (Bumped when build_module_with's make arguments change.)
        let mut h = Sha256::new_with_prefix(b"mock-accel build: prefix map, fixed timestamp");
        let mut names: Vec<_> = fs::read_dir(kmod_src)
            .map_err(RigError::io(format!("reading {}", kmod_src.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                n == "Makefile" || (n.ends_with(".c") && !n.ends_with(".mod.c")) || n.ends_with(".h")
            })
            .collect();
        names.sort();
        let build = [self.build_dir.join("Module.symvers"), self.build_dir.join(".config")];
        for p in names.iter().chain(build.iter()) {
            h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
            h.update(fs::read(p).unwrap_or_default());
        }
        h.update(self.build_dir.as_os_str().as_encoded_bytes());
        Ok(h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// [`Kernel::build_module`] with extra Kbuild arguments (`W=1`, `C=2`),
    /// returning the build log too.
    pub fn build_module_with(&self, kmod_src: &Path, out_dir: &Path, make_args: &[&str]) -> Result<(PathBuf, String)> {
        require_tool("make", "install it with `apt-get install -y make gcc`")?;
        fs::create_dir_all(out_dir).map_err(RigError::io(format!("creating {}", out_dir.display())))?;
        let sources = fs::read_dir(kmod_src).map_err(RigError::io(format!("reading {}", kmod_src.display())))?;
        for entry in sources {
            let entry = entry.map_err(RigError::io("listing kmod/"))?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str == "Makefile"
                || (name_str.ends_with(".c") && !name_str.ends_with(".mod.c"))
                || name_str.ends_with(".h")
            {
                fs::copy(entry.path(), out_dir.join(&name)).map_err(RigError::io(format!("copying {name_str}")))?;
            }
        }
        // A reproducible module: the same sources give the same bytes
        // wherever they are built, so a saved guest that carries it is
        // found again (`crate::snapshot`). The build directory's path left
        // out (debug information, `__FILE__`); a build timestamp set, which
        // keeps pahole from encoding the module's BTF in parallel, in an
        // order that changes from build to build (scripts/Makefile.btf).
        let output = Command::new("make")
            .arg("-C")
            .arg(&self.build_dir)
            .arg(format!("M={}", out_dir.display()))
            .arg(format!("KCFLAGS=-ffile-prefix-map={}/=", out_dir.display()))
            .arg("KBUILD_BUILD_TIMESTAMP=mock-device")
            .args(make_args)
            .arg("modules")
            .output()
            .map_err(RigError::io("running make"))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let ko = out_dir.join("mock-accel.ko");
        if !output.status.success() || !ko.is_file() {
            return Err(RigError::ModuleBuild {
                status: output.status.to_string(),
                output: log,
            });
        }
        Ok((ko, log))
    }
}

/// Orders `6.1.0-56-amd64` after `6.1.0-9-amd64`: numbers compare as numbers.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(releases: &[(&str, bool)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (release, headers) in releases {
            let boot = root.path().join("boot");
            fs::create_dir_all(&boot).unwrap();
            fs::write(boot.join(format!("vmlinuz-{release}")), b"").unwrap();
            if *headers {
                let build = root.path().join("modules").join(release).join("build");
                fs::create_dir_all(&build).unwrap();
                fs::write(build.join("Makefile"), b"").unwrap();
            }
        }
        root
    }

    #[test]
    fn picks_the_newest_kernel_with_headers() {
        let root = fake_tree(&[
            ("6.1.0-9-amd64", true),
            ("6.1.0-56-amd64", true),
            ("6.1.0-60-amd64", false),
        ]);
        let k = Kernel::find_in(&root.path().join("boot"), &root.path().join("modules")).unwrap();
        assert_eq!(k.release, "6.1.0-56-amd64");
        assert!(k.image.ends_with("vmlinuz-6.1.0-56-amd64"));
    }

    #[test]
    fn the_sanitizing_kernel_is_found_only_when_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let err = Kernel::sanitizing_in(dir).unwrap_err().to_string();
        assert!(err.contains("just debug-kernel"), "{err}");
        fs::write(dir.join("release"), "6.12.107-mock-debug\n").unwrap();
        fs::write(dir.join("bzImage"), b"").unwrap();
        assert!(Kernel::sanitizing_in(dir).is_err(), "no build tree yet");
        fs::create_dir_all(dir.join("build")).unwrap();
        fs::write(dir.join("build/Makefile"), b"").unwrap();
        let k = Kernel::sanitizing_in(dir).unwrap();
        assert_eq!(k.release, "6.12.107-mock-debug");
        assert!(k.sanitizing);
    }

    #[test]
    fn no_kernel_says_what_to_install() {
        let root = fake_tree(&[("6.1.0-60-amd64", false)]);
        let err = Kernel::find_in(&root.path().join("boot"), &root.path().join("modules")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("linux-headers-amd64"), "{text}");
    }
}
