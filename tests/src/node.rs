//! A real Kubernetes node in the guest: the kernel with the module, and the
//! real components built by `just kube` (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet v1.37.2), containerd 2.4
//! with Debian's runc and the CNI plugins, the test images, and the agent.
//!
//! Everything runs inside the guest and talks over its loopback and a dummy
//! interface that carries the node's address ([`NODE_IP`]): the guest has
//! no network device, so no packet leaves it. The host only builds the
//! payload: binaries, the kernel modules containerd and the CNI bridge need
//! (overlay, bridge, veth, dummy), the images as OCI archives, and this
//! run's certificates, kubeconfigs and configuration files. The guest's
//! `/guest/node.sh` (`tests/scenarios/node.sh`) starts the node from them:
//! a scenario sources it and calls `node_up`.
//!
//! Why in the guest and not the control plane on the host: the kubelet
//! needs cgroup v2 (the host has v1) and the API server must reach the
//! kubelet at the node's address for `kubectl exec`, which a host process
//! could only do through a forwarded port the kubelet refuses as its node
//! address (loopback). Measured boot-to-Ready is in the issue notes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cluster::{Ca, apiserver_args, bin_dir, control_plane_pki, etcd_args, kubeconfig_text};
use crate::guest::Guest;
use crate::initramfs::{EXEC, FILE, Initramfs};
use crate::kernel::Kernel;
use crate::{Result, RigError, require_tool, workspace_root};

/// The node's name (the guest's hostname).
pub const NODE_NAME: &str = "mock-guest";
/// The node's address, on a dummy interface inside the guest.
pub const NODE_IP: &str = "10.99.0.2";
/// The API server's port inside the guest.
pub const API_PORT: u16 = 6443;
/// Where the configuration lives in the guest.
const ETC: &str = "/etc/kubernetes";
const PKI: &str = "/etc/kubernetes/pki";

/// The kernel's own modules the node needs: overlayfs for containerd's
/// snapshotter, bridge and veth for the CNI bridge plugin, dummy for the
/// node's address.
const KERNEL_MODULES: [&str; 6] = [
    "fs/overlayfs/overlay.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
    "drivers/net/veth.ko",
    "drivers/net/dummy.ko",
];

/// The guest-side script that starts the node (`node_up`) and reads its
/// logs (`node_logs`).
pub const NODE_SH: &str = include_str!("../scenarios/node.sh");

/// A guest that becomes a one-node cluster when its scenario calls
/// `node_up`; `binaries` go to `/usr/local/bin/<name>` (the agent, our
/// tools, kubectl).
pub fn guest(binaries: &[(&str, &Path)]) -> Result<Guest> {
    let kube = bin_dir()?;
    let runc = require_tool("runc", "install it with `apt-get install -y runc` (or run ./dev setup)")?;
    let kernel = Kernel::find()?;
    let build = tempfile::tempdir().map_err(RigError::io("creating a build directory"))?;
    let ko = kernel.build_module(&workspace_root().join("kmod"), build.path())?;

    let mut p = Initramfs::new();
    p.modules(&[&ko], &kernel.release, &KERNEL_MODULES)?;
    for (name, path) in binaries {
        p.binary(&format!("/usr/local/bin/{name}"), path)?;
    }
    // The multi-call binary under each component's name.
    p.host_file("/usr/local/bin/kube", EXEC, &kube.join("kube"));
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
    ] {
        p.symlink(&format!("/usr/local/bin/{name}"), "kube");
    }
    for name in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        p.host_file(&format!("/usr/local/bin/{name}"), EXEC, &kube.join(name));
    }
    p.binary("/usr/sbin/runc", &runc)?;
    for plugin in ["bridge", "host-local", "loopback"] {
        p.host_file(&format!("/opt/cni/bin/{plugin}"), EXEC, &kube.join("cni").join(plugin));
    }

    // The images, as `ctr images import` takes them.
    // (Written to the build directory, read when the payload is packed.)
    let mut images = Vec::new();
    for image in crate::oci::test_images(build.path())? {
        let short = image.short_name().to_string();
        let path = build.path().join(format!("{short}.tar"));
        image.write(&path)?;
        p.host_file(&format!("/guest/images/{short}.tar"), FILE, &path);
        images.push((short, image.name));
    }

    for (path, text) in files(&Ca::new(), &images) {
        p.data(&path, FILE, text);
    }
    // The chart's DeviceClasses, rendered by Helm with its defaults.
    let classes = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": crate::render_chart(&serde_json::json!({}))["mock-device/templates/deviceclasses.yaml"],
    });
    p.data("/guest/deviceclasses.json", FILE, classes.to_string());
    p.data("/guest/node.sh", FILE, NODE_SH);

    let mut guest = Guest::new(kernel, p)?;
    guest.memory_mib = 4096;
    guest.cpus = 2;
    Ok(guest)
}

/// This run's certificates, kubeconfigs and configuration files, by path in
/// the guest.
fn files(ca: &Ca, images: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = control_plane_pki(ca, &[NODE_IP, NODE_NAME])
        .into_iter()
        .map(|(name, text)| (format!("{PKI}/{name}"), text))
        .collect();
    let kubelet_serving = ca.server(&[NODE_NAME, NODE_IP]);
    out.push((format!("{PKI}/kubelet.crt"), kubelet_serving.cert));
    out.push((format!("{PKI}/kubelet.key"), kubelet_serving.key));

    let server = format!("https://127.0.0.1:{API_PORT}");
    let node_user = format!("system:node:{NODE_NAME}");
    for (file, user, groups) in [
        ("admin.conf", "mock-device-admin", &["system:masters"][..]),
        ("kubelet.conf", node_user.as_str(), &["system:nodes"][..]),
        ("controller-manager.conf", "system:kube-controller-manager", &[][..]),
        ("scheduler.conf", "system:kube-scheduler", &[][..]),
    ] {
        out.push((
            format!("{ETC}/{file}"),
            kubeconfig_text(&server, &ca.pem.cert, &ca.client(user, groups)),
        ));
    }

    out.push((format!("{ETC}/scheduler.yaml"), SCHEDULER_CONFIG.replace("@ETC@", ETC)));
    out.push((format!("{ETC}/kubelet.yaml"), KUBELET_CONFIG.replace("@PKI@", PKI)));
    out.push(("/etc/containerd/config.toml".into(), CONTAINERD_CONFIG.into()));
    out.push(("/etc/cni/net.d/10-mock.conflist".into(), CNI_CONFIG.into()));
    out.push((
        "/etc/hosts".into(),
        format!("127.0.0.1 localhost\n{NODE_IP} {NODE_NAME}\n"),
    ));
    // A machine ID of this run (cAdvisor reads it): from the CA, unique per run.
    let id = Sha256::digest(ca.pem.cert.as_bytes());
    out.push(("/etc/machine-id".into(), format!("{}\n", &hex(&id)[..32])));

    // The command lines, from the same functions as the host's control plane.
    // No argument has a space in it: the guest's shell splits them on spaces.
    let quote = |args: Vec<String>| {
        debug_assert!(args.iter().all(|a| !a.contains(' ')));
        args.join(" ")
    };
    let image = |short: &str| {
        images
            .iter()
            .find(|(s, _)| s == short)
            .map(|(_, name)| name.clone())
            .unwrap_or_default()
    };
    let env = format!(
        "PAUSE_IMAGE={}\nBUSYBOX_IMAGE={}\nNODE_NAME={NODE_NAME}\nNODE_IP={NODE_IP}\nKUBECONFIG={ETC}/admin.conf\nexport KUBECONFIG\n\
         ETCD_ARGS=\"{}\"\nAPISERVER_ARGS=\"{}\"\n\
         CONTROLLER_MANAGER_ARGS=\"{}\"\nSCHEDULER_ARGS=\"--config={ETC}/scheduler.yaml --v=1\"\n\
         KUBELET_ARGS=\"--config={ETC}/kubelet.yaml --kubeconfig={ETC}/kubelet.conf \
         --hostname-override={NODE_NAME} --node-ip={NODE_IP} --v=1\"\n",
        image("pause"),
        image("busybox"),
        quote(etcd_args(
            "/var/lib/etcd",
            "http://127.0.0.1:2379",
            "http://127.0.0.1:2380"
        )),
        quote(apiserver_args(PKI, "http://127.0.0.1:2379", API_PORT)),
        quote(controller_manager_args()),
    );
    out.push(("/guest/node.env".into(), env));
    out
}

/// kube-controller-manager's flags: every default controller (the
/// ResourceClaim controller among them), its own credentials per controller,
/// the CA for the certificate signer and the service-account token key.
fn controller_manager_args() -> Vec<String> {
    vec![
        format!("--kubeconfig={ETC}/controller-manager.conf"),
        format!("--authentication-kubeconfig={ETC}/controller-manager.conf"),
        format!("--authorization-kubeconfig={ETC}/controller-manager.conf"),
        format!("--service-account-private-key-file={PKI}/sa.key"),
        format!("--root-ca-file={PKI}/ca.crt"),
        format!("--cluster-signing-cert-file={PKI}/ca.crt"),
        format!("--cluster-signing-key-file={PKI}/ca.key"),
        "--use-service-account-credentials=true".into(),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const SCHEDULER_CONFIG: &str = "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: @ETC@/scheduler.conf
leaderElection:
  leaderElect: false
";

/// The kubelet: cgroupfs (no systemd in the guest), certificates from the
/// run's CA (the API server checks them for exec), no DNS, eviction and
/// image GC thresholds a small guest does not cross.
const KUBELET_CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: @PKI@/ca.crt
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
tlsCertFile: @PKI@/kubelet.crt
tlsPrivateKeyFile: @PKI@/kubelet.key
failSwapOn: false
resolvConf: \"\"
clusterDomain: cluster.local
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
";

/// containerd 2.4: CRI with CDI on (the default, stated), the pinned pause
/// image, runc without pivot_root (the guest's root is an initramfs, which
/// pivot_root refuses), the CNI bridge.
const CONTAINERD_CONFIG: &str = r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/mock-device/pause:1.0"

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = true
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        NoPivotRoot = true
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
"#;

const CNI_CONFIG: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "mock",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
"#;

/// Where the guest's scenario scripts are.
pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests/scenarios").join(name)
}
