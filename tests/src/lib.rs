//! Test rig for mock-device.
//!
//! The `mock-accel` kernel module cannot be loaded on the build machine, so
//! its tests (and, later, the agent's) run in a real Debian kernel booted
//! under QEMU with software emulation:
//!
//! - [`kernel`] finds the installed guest kernel and builds the module against
//!   its headers;
//! - [`initramfs`] packs busybox, the module (installed and `depmod`ed) and
//!   any host binary with its shared libraries into a cpio archive;
//! - [`guest`] boots it, runs a scenario script inside and returns the
//!   script's output, its exit status and the guest's kernel log; under KVM
//!   where a probe shows it works, else TCG ([`accel`]); a node guest is
//!   booted and set up once, saved, and resumed per scenario ([`snapshot`]);
//! - [`process`] starts the rig's children so that they die with it;
//! - [`relay`] runs a node guest's kubectl calls with the host's kubectl;
//! - [`apiserver`] is a test Kubernetes API server held to the real one's
//!   rules, for the agent's tests and the demo;
//! - [`kubelet`] plays the kubelet towards the agent's plugin sockets;
//! - [`cluster`] runs the real control plane (etcd, kube-apiserver v1.37.2,
//!   built by `just kube`) on loopback: the referee for the test API server;
//! - [`oci`] writes container images as OCI archives without an engine;
//! - [`dashboards`] the Grafana dashboards' queries and what counts as data.

pub mod accel;
pub mod apiserver;
pub mod behaviour;
pub mod cluster;
pub mod dashboards;
#[doc(hidden)]
pub mod fuzz;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod kubelet;
pub mod node;
pub mod oci;
pub mod process;
pub mod relay;
pub mod snapshot;

use std::path::PathBuf;

/// The root of the workspace (the directory holding `kmod/` and `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Why the rig could not do what was asked. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("{tool} not found: {hint}")]
    MissingTool { tool: String, hint: &'static str },
    #[error(
        "no guest kernel: need /boot/vmlinuz-<ver> with headers in /lib/modules/<ver>/build{detail}. \
         Install them with `apt-get install -y linux-image-amd64 linux-headers-amd64` (or run ./dev setup)"
    )]
    NoKernel { detail: String },
    #[error("no sanitizing guest kernel in {dir}: build it with `just debug-kernel` (tests/debug-kernel/build.sh)")]
    NoSanitizingKernel { dir: String },
    #[error("building the module failed (exit {status}):\n{output}")]
    ModuleBuild { status: String, output: String },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error(
        "guest timed out after {seconds} s (raise MOCK_GUEST_TIMEOUT if the machine is slow)\n\
         --- scenario output ---\n{output}\n--- console tail ---\n{console}"
    )]
    Timeout {
        seconds: u64,
        output: String,
        console: String,
        /// The first line of a kernel panic in which the module has no frame.
        crash_elsewhere: Option<String>,
    },
    #[error(
        "guest ended without reporting the scenario's exit status\n\
         --- scenario output ---\n{output}\n--- console tail ---\n{console}"
    )]
    NoExitStatus {
        output: String,
        console: String,
        /// The first line of a kernel panic in which the module has no frame.
        crash_elsewhere: Option<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RigError {
    /// When the guest's kernel panicked in code where the module has no
    /// frame: the crash's first line (see `guest::crash_elsewhere`).
    pub fn guest_crash_elsewhere(&self) -> Option<&str> {
        match self {
            RigError::Timeout { crash_elsewhere, .. } | RigError::NoExitStatus { crash_elsewhere, .. } => {
                crash_elsewhere.as_deref()
            }
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RigError {
        let context = context.into();
        move |source| RigError::Io { context, source }
    }
}

pub type Result<T, E = RigError> = std::result::Result<T, E>;

/// A command installed from PyPI (kubectl, kubernetes-validate, just):
/// the Python scripts directory first (setup installs there, and its
/// kubectl is the version the tests want), then PATH.
pub fn python_tool(tool: &str) -> Option<PathBuf> {
    let scripts = std::process::Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    scripts
        .map(|dir| dir.join(tool))
        .filter(|p| p.is_file())
        .or_else(|| require_tool(tool, "").ok())
}

/// Finds `tool` on PATH, or says which Debian package provides it.
pub fn require_tool(tool: &str, hint: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| RigError::MissingTool {
            tool: tool.to_string(),
            hint,
        })
}

/// The chart rendered by real Helm (helm-python-sdk) with these values, as
/// release `mock-device` in namespace `mock-device`: template path → its
/// objects (NOTES.txt left out).
pub fn render_chart(values: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let script = r#"
import json, sys, yaml
import helm_python as helm
out = helm.Chart.load(sys.argv[1]).render(json.loads(sys.argv[2]), name="mock-device", namespace="mock-device")
print(json.dumps({p: [d for d in yaml.safe_load_all(t) if d] for p, t in out.items() if not p.endswith("NOTES.txt")}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(workspace_root().join("chart"))
        .arg(values.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "rendering the chart (helm-python-sdk: ./dev setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One plain HTTP/1.1 GET on loopback (an agent's admin port): the status
/// code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Runs the real `promtool check metrics` on a /metrics text; panics with
/// its complaints.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
        .expect("promtool not found: install it with `apt-get install -y prometheus` (or run ./dev setup)");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
