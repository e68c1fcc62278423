//! Builds the eBPF programs (agent-ebpf/) for bpfel-unknown-none with
//! aya-build when the `ebpf` feature asks for them (the guests' and the
//! images' builds do), so that one `cargo build` produces everything; an
//! empty object otherwise, which the agent knows for "no probes in this
//! build" (it follows uevents alone). A plain `cargo build` or `cargo test`
//! needs no eBPF toolchain.

use std::path::PathBuf;

const INSTALL: &str = "the eBPF toolchain is missing. Run ./dev setup, or install it by hand:\n  \
    apt-get install -y llvm-22-dev libpolly-22-dev libzstd-dev\n  \
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22\n  \
    rustup component add rust-src";

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        println!("cargo:rerun-if-changed=build.rs");
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("mock-accel-ebpf");
        std::fs::write(out, [])?;
        return Ok(());
    }
    let linker = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false)
        || home_cargo_bin().is_some_and(|d| d.join("bpf-linker").is_file());
    if !linker {
        anyhow::bail!("the `ebpf` feature asks for the eBPF probes, and bpf-linker is not found: {INSTALL}");
    }
    if let Some(dir) = home_cargo_bin() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))?;
        // SAFETY: the build script is single-threaded here.
        unsafe { std::env::set_var("PATH", joined) };
    }
    // build-std on the stable toolchain (environment.md): -Z build-std=core.
    // SAFETY: as above.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build relays every line the inner cargo prints on stderr as a
    // `cargo:warning`: dozens of "Compiling ..." lines that read like
    // problems on a first build. Quiet, it prints only what is one (a
    // compiler warning or error).
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    // The inner cargo builds with --release: under a release build of the
    // agent, sharing the outer build directory (.cargo/config.toml's
    // build-dir) it would wait for the outer cargo's lock on it for ever.
    // Its own, shared by every clone as the outer one is.
    if let Some(dir) = home_cargo_bin().and_then(|bin| bin.parent().map(|home| home.join("build/mock-device-ebpf"))) {
        // SAFETY: as above.
        unsafe { std::env::set_var("CARGO_BUILD_BUILD_DIR", dir) };
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../agent-ebpf");
    let root = root.to_str().expect("a UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mock-accel-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
    .map_err(|e| anyhow::anyhow!("building the eBPF programs failed: {e:#}\n(if a tool is missing: {INSTALL})"))
}

fn home_cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"))
}
