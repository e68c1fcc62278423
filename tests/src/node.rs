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
use crate::guest::{Guest, KubectlRelay};
use crate::initramfs::{EXEC, FILE, Initramfs};
use crate::kernel::Kernel;
use crate::{Result, RigError, require_tool, workspace_root};

/// The node's name (the guest's hostname).
pub const NODE_NAME: &str = "mock-guest";
/// The node's address, on a dummy interface inside the guest.
pub const NODE_IP: &str = "10.99.0.2";
/// The node's OCI registry, at the node's address.
pub const REGISTRY_HOST: &str = "registry.mock.test";
pub const REGISTRY: &str = "registry.mock.test:5000";
/// The API server's port inside the guest.
pub const API_PORT: u16 = 6443;
/// The nodes that share the guest's kernel with it, kind's way
/// (`tests/scenarios/shared_nodes.sh`): each a kubelet, containerd and
/// kube-proxy of its own in mount, network and UTS namespaces of its own,
/// bridged to the guest at this address. Their credentials are made with
/// the node's ([`secrets`]); nothing of them runs until a scenario starts it.
pub const SHARED_NODES: [(&str, &str); 2] = [("mock-guest-b", "10.99.1.2"), ("mock-guest-c", "10.99.1.3")];
/// Where the configuration lives in the guest.
const ETC: &str = "/etc/kubernetes";
const PKI: &str = "/etc/kubernetes/pki";

/// The kernel's own modules the node needs: overlayfs for containerd's
/// snapshotter, bridge and veth for the CNI bridge plugin, dummy for the
/// node's address; nf_tables with what kube-proxy's nftables mode uses
/// (conntrack, NAT, masquerade, fib, numgen, reject, limit) and
/// br_netfilter, so that a pod reaching a Service whose endpoint is on the
/// same bridge gets its replies un-NATed (each with the modules it needs,
/// as modules.dep lists them for Debian's 6.1 and 6.12, and crc32c, which
/// libcrc32c asks the crypto API for: a soft dependency busybox's modprobe
/// does not follow).
const KERNEL_MODULES: [&str; 31] = [
    "fs/overlayfs/overlay.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
    "net/bridge/br_netfilter.ko",
    "drivers/net/veth.ko",
    "drivers/net/dummy.ko",
    "crypto/crc32c_generic.ko",
    "lib/libcrc32c.ko",
    "net/netfilter/nfnetlink.ko",
    "net/netfilter/nf_tables.ko",
    "net/ipv4/netfilter/nf_defrag_ipv4.ko",
    "net/ipv6/netfilter/nf_defrag_ipv6.ko",
    "net/netfilter/nf_conntrack.ko",
    "net/netfilter/nf_nat.ko",
    "net/netfilter/nft_ct.ko",
    "net/netfilter/nft_nat.ko",
    "net/netfilter/nft_chain_nat.ko",
    "net/netfilter/nft_masq.ko",
    "net/netfilter/nft_numgen.ko",
    "net/netfilter/nft_limit.ko",
    "net/netfilter/nft_fib.ko",
    "net/ipv4/netfilter/nft_fib_ipv4.ko",
    "net/ipv6/netfilter/nft_fib_ipv6.ko",
    "net/netfilter/nft_fib_inet.ko",
    "net/ipv4/netfilter/nf_reject_ipv4.ko",
    "net/ipv6/netfilter/nf_reject_ipv6.ko",
    "net/netfilter/nft_reject.ko",
    "net/netfilter/nft_reject_inet.ko",
    "net/ipv4/netfilter/nft_reject_ipv4.ko",
    "net/ipv6/netfilter/nft_reject_ipv6.ko",
];

/// The virtio network device's driver and what it needs, where they are
/// modules (Debian's 6.1 has virtio itself as modules, 6.12 builds it in):
/// the node reaches the host's kubectl relay through it.
const NIC_MODULES: [&str; 8] = [
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// The guest-side script that starts the node (`node_up`) and reads its
/// logs (`node_logs`).
pub const NODE_SH: &str = include_str!("../scenarios/node.sh");
/// Prometheus against the chart's Services (sourced by helm.sh).
pub const MONITORING_SH: &str = include_str!("../scenarios/monitoring.sh");

/// A guest that becomes a one-node cluster: `binaries` go to
/// `/usr/local/bin/<name>` (the agent, our tools, kubectl; `guest-tool` among
/// them: it makes the node's certificates), and the driver as its users
/// install it: the driver's image made from `agent`
/// ([`crate::oci::driver_images`], in `/guest/driver-images/`, for the
/// scenario to push to the registry), the OCI registry
/// (`/usr/local/bin/registry`, distribution's, serving [`REGISTRY`] over TLS
/// with a certificate of the node's CA, which the guest trusts), the Helm
/// CLI (`/usr/local/bin/helm`) and the chart packaged by it
/// (`/guest/mock-device-<version>.tgz`); a stand-in for a release of the
/// seed chart too (`/guest/seed/mock-device-0.2.0.tgz`, from
/// `tests/chart/seed-0.2.0`) for the upgrade, Prometheus and the dashboards.
///
/// Its `kubectl` is the host's, through a relay (`kubectl` among the
/// binaries is the real one the relay runs on the host; in the guest it is
/// `/usr/local/bin/kubectl.real`, for `kubectl config`): [`crate::relay`].
///
/// Its scenarios start from a saved node ([`crate::snapshot`]): booted,
/// [`SETUP`] run (the node Ready, the registry serving the chart and the
/// driver's image), saved once; resumed for each scenario, whose `node_up`
/// then finds the node as the setup left it.
pub fn guest(binaries: &[(&str, &Path)], agent: &Path) -> Result<Guest> {
    if !binaries.iter().any(|(name, _)| *name == "guest-tool") {
        return Err(RigError::Command {
            what: "the node guest".into(),
            detail: "guest-tool is not among its binaries (it makes the node's certificates)".into(),
        });
    }
    build(binaries, agent)
}

/// What the saved node ran before it was saved: the node up, the registry
/// serving the chart and the driver's image.
pub const SETUP: &str =
    ". /guest/lib.sh\n. /guest/node.sh\nnode_up || exit 1\nregistry_up || exit 1\nfinish || exit 1\nnode_saved\n";

/// The agent the driver's image carries, given the agent the rest of the
/// run uses. A build the caller picked (not `<target>/debug/`: `just
/// bench-cluster` runs `target/release/guest`) is taken as it is. Given the
/// debug build, the first up-to-date one (no file its dep-info lists, nor
/// the eBPF program's sources, newer than it) of: the guests' image build
/// (`<target>/guest-image/`, the release profile at opt-level 1: `just
/// agent-image`, which `just test` and `just vm-demo` run), the release
/// build (`<target>/release/`), else the debug build itself. Users run
/// release images; on the emulated node the debug agent's image (62 MB,
/// the release one 25 MB) took containerd 109 s to pull from the guest's
/// registry, once per scenario, and the demo's run took 357 s with it
/// against 181 with the release agent.
pub fn image_agent(agent: &Path) -> PathBuf {
    let debug = agent.parent().filter(|p| p.ends_with("debug"));
    let (Some(target), Some(name)) = (debug.and_then(Path::parent), agent.file_name()) else {
        return agent.to_path_buf();
    };
    for dir in [IMAGE_PROFILE, "release"] {
        let built = target.join(dir).join(name);
        if up_to_date(&built) {
            return built;
        }
    }
    eprintln!(
        "the driver's image carries the debug agent ({}): no up-to-date build of the agent in \
         {IMAGE_PROFILE}/ or release/ (just agent-image)",
        agent.display()
    );
    agent.to_path_buf()
}

/// The Cargo profile the guests' image agent is built with (Cargo.toml).
const IMAGE_PROFILE: &str = "guest-image";

/// `binary` is newer than every file its dep-info (`<binary>.d`, cargo's)
/// lists and than the eBPF program's sources (built by the agent's build
/// script, so not listed).
fn up_to_date(binary: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(binary) else { return false };
    let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else {
        return false;
    };
    let listed = dep_info.split_once(": ").map(|(_, deps)| deps).unwrap_or_default();
    let ebpf = workspace_root().join("agent-ebpf");
    let ebpf_sources = std::fs::read_dir(ebpf.join("src"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([ebpf.join("Cargo.toml")]);
    listed
        .split_whitespace()
        .map(PathBuf::from)
        .chain(ebpf_sources)
        .all(|f| modified(&f).is_some_and(|m| m <= built))
}

fn build(binaries: &[(&str, &Path)], agent: &Path) -> Result<Guest> {
    let kube = bin_dir()?;
    let runc = require_tool("runc", "install it with `apt-get install -y runc` (or run ./dev setup)")?;
    let kernel = Kernel::find()?;
    let build = tempfile::tempdir().map_err(RigError::io("creating a build directory"))?;
    let ko = kernel.build_module(&workspace_root().join("kmod"), build.path())?;

    let mut p = Initramfs::new();
    let mut modules: Vec<&str> = KERNEL_MODULES.to_vec();
    // The network device's driver (a module, and what it needs, in Debian's
    // kernels; built in where it is absent).
    let tree = Path::new("/lib/modules").join(&kernel.release).join("kernel");
    modules.extend(
        NIC_MODULES
            .iter()
            .filter(|m| tree.join(m).is_file() || tree.join(format!("{m}.xz")).is_file()),
    );
    p.modules(&[&ko], &kernel.release, &modules)?;
    let mut relay = None;
    for (name, path) in binaries {
        if *name == "kubectl" {
            // The guest's kubectl relays to the host's (crate::relay): the
            // real one stays for `kubectl config`.
            p.binary(crate::relay::GUEST_REAL_KUBECTL, path)?;
            relay = Some(KubectlRelay {
                kubectl: path.to_path_buf(),
                api_port: API_PORT,
            });
            continue;
        }
        p.binary(&format!("/usr/local/bin/{name}"), path)?;
    }
    if relay.is_some() {
        let tools = binaries
            .iter()
            .find(|(n, _)| *n == "guest-tool")
            .and_then(|(_, p)| p.parent())
            .expect("guest-tool is among the binaries");
        let shim = tools.join("kubectl-relay");
        if !shim.is_file() {
            return Err(RigError::MissingTool {
                tool: shim.display().to_string(),
                hint: "build it with `cargo build --workspace --bins` (just test does)",
            });
        }
        p.binary("/usr/local/bin/kubectl", &shim)?;
    }
    // The multi-call binary under each component's name.
    p.host_file("/usr/local/bin/kube", EXEC, &kube.join("kube"));
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    ] {
        p.symlink(&format!("/usr/local/bin/{name}"), "kube");
    }
    for name in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        p.host_file(&format!("/usr/local/bin/{name}"), EXEC, &kube.join(name));
    }
    p.binary("/usr/sbin/runc", &runc)?;
    let nft = require_tool(
        "nft",
        "install it with `apt-get install -y nftables` (or run ./dev setup)",
    )?;
    p.binary("/usr/sbin/nft", &nft)?;
    for plugin in ["bridge", "host-local", "loopback"] {
        p.host_file(&format!("/opt/cni/bin/{plugin}"), EXEC, &kube.join("cni").join(plugin));
    }

    // The images, as `ctr images import` takes them.
    // (Written to the build directory, read when the payload is packed.)
    // With the module images: the node kernel's build, and another
    // installed kernel's (an image without the node's build, for the
    // chart's loader to refuse: helm.sh).
    let mut builds = vec![(kernel.release.clone(), ko.clone())];
    if let Some(other) = Kernel::all()?.into_iter().find(|k| k.release != kernel.release) {
        let dir = build.path().join(format!("kmod-{}", other.release));
        builds.push((
            other.release.clone(),
            other.build_module(&workspace_root().join("kmod"), &dir)?,
        ));
    }
    let mut images = Vec::new();
    for image in crate::oci::driver_images(agent, &builds)? {
        add_image(&mut p, build.path(), &image, "/guest/driver-images")?;
    }
    p.host_file("/usr/local/bin/registry", EXEC, &kube.join("registry"));
    p.data("/etc/registry/config.yml", FILE, REGISTRY_CONFIG.replace("@PKI@", PKI));
    let helm = kube.join("helm");
    p.host_file("/usr/local/bin/helm", EXEC, &helm);
    let root = workspace_root();
    for (chart, dir) in [("chart", "/guest"), ("tests/chart/seed-0.2.0", "/guest/seed")] {
        let tgz = helm_package(&helm, &root.join(chart), build.path())?;
        let name = tgz.file_name().unwrap_or_default().to_string_lossy().into_owned();
        p.host_file(&format!("{dir}/{name}"), FILE, &tgz);
    }
    // Prometheus with Kubernetes service discovery (built by `just
    // kube`: Debian's has none), to scrape the chart's metrics Services
    // it finds through the API, and the dashboards whose queries it must
    // answer.
    p.host_file("/usr/local/bin/prometheus", EXEC, &kube.join("prometheus"));
    for file in crate::dashboards::FILES {
        p.host_file(
            &format!("/guest/dashboards/{file}"),
            FILE,
            &root.join("dashboards").join(file),
        );
    }
    for image in crate::oci::test_images(build.path())? {
        let short = add_image(&mut p, build.path(), &image, "/guest/images")?;
        images.push((short, image.name));
    }

    for (path, text) in files(&images) {
        p.data(&path, FILE, text);
    }
    // The chart's DeviceClasses, rendered by Helm with its defaults.
    let classes = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": crate::render_chart(&serde_json::json!({}))["mock-device/templates/deviceclasses.yaml"],
    });
    p.data("/guest/deviceclasses.json", FILE, classes.to_string());
    p.data("/guest/node.sh", FILE, NODE_SH);
    p.data("/guest/monitoring.sh", FILE, MONITORING_SH);

    let mut guest = Guest::new(kernel, p)?;
    guest.memory_mib = 4096;
    guest.cpus = 2;
    guest.kubectl_relay = relay;
    guest.snapshot_setup = Some(SETUP.to_string());
    Ok(guest)
}

/// `image` as `ctr images import` takes it, at `<guest_dir>/<short name>.tar`
/// (written to `build`, read when the payload is packed): its short name.
fn add_image(p: &mut Initramfs, build: &Path, image: &crate::oci::Image, guest_dir: &str) -> Result<String> {
    // The module images share a repository: their tags tell them apart.
    let short = match image.name.rsplit_once(':') {
        Some((repo, tag)) if repo == crate::oci::MODULE_REPOSITORY => format!("{}-{tag}", image.short_name()),
        _ => image.short_name().to_string(),
    };
    let name = format!("{}-{short}.tar", guest_dir.trim_start_matches('/').replace('/', "-"));
    let path = build.join(name);
    image.write(&path)?;
    p.host_file(&format!("{guest_dir}/{short}.tar"), FILE, &path);
    Ok(short)
}

/// `helm package CHART` into `out`: the archive's path.
fn helm_package(helm: &Path, chart: &Path, out: &Path) -> Result<PathBuf> {
    let run = std::process::Command::new(helm)
        .arg("package")
        .arg(chart)
        .arg("-d")
        .arg(out)
        .env("HELM_CACHE_HOME", out.join("helm-cache"))
        .env("HELM_CONFIG_HOME", out.join("helm-config"))
        .output()
        .map_err(RigError::io(format!("running {}", helm.display())))?;
    // "Successfully packaged chart and saved it to: <path>"
    let said = String::from_utf8_lossy(&run.stdout);
    let tgz = said
        .rsplit_once(": ")
        .map(|(_, path)| PathBuf::from(path.trim()))
        .filter(|p| p.is_file());
    let Some(tgz) = tgz.filter(|_| run.status.success()) else {
        return Err(RigError::Command {
            what: format!("helm package {}", chart.display()),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            ),
        });
    };
    Ok(tgz)
}

/// The node's keys, certificates and kubeconfigs, and its machine ID, by
/// path in the guest: made anew by each node that boots (`guest-tool
/// node-secrets`, from `node_up`), so that nothing random from the host is
/// part of the saved node's inputs ([`crate::snapshot`]). One CA signs the
/// control plane's certificates, the kubelet's serving certificate, every
/// client certificate and the registry's; the guest trusts only it.
pub fn secrets() -> Vec<(String, String)> {
    let ca = Ca::new();
    let mut out: Vec<(String, String)> = control_plane_pki(&ca, &[NODE_IP, NODE_NAME])
        .into_iter()
        .map(|(name, text)| (format!("{PKI}/{name}"), text))
        .collect();
    let kubelet_serving = ca.server(&[NODE_NAME, NODE_IP]);
    out.push((format!("{PKI}/kubelet.crt"), kubelet_serving.cert));
    out.push((format!("{PKI}/kubelet.key"), kubelet_serving.key));
    let registry = ca.server(&[REGISTRY_HOST, NODE_IP]);
    out.push((format!("{PKI}/registry.crt"), registry.cert));
    out.push((format!("{PKI}/registry.key"), registry.key));

    let server = format!("https://127.0.0.1:{API_PORT}");
    let node_user = format!("system:node:{NODE_NAME}");
    for (file, user, groups) in [
        ("admin.conf", "mock-device-admin", &["system:masters"][..]),
        ("kubelet.conf", node_user.as_str(), &["system:nodes"][..]),
        ("controller-manager.conf", "system:kube-controller-manager", &[][..]),
        ("scheduler.conf", "system:kube-scheduler", &[][..]),
        ("kube-proxy.conf", "system:kube-proxy", &[][..]),
    ] {
        out.push((
            format!("{ETC}/{file}"),
            kubeconfig_text(&server, &ca.pem.cert, &ca.client(user, groups)),
        ));
    }
    // The nodes sharing the kernel: a kubelet's client and serving
    // certificates each (NodeRestriction holds each to its own Node), the
    // API server at the node's address (their loopback is their own).
    let remote = format!("https://{NODE_IP}:{API_PORT}");
    for (name, ip) in SHARED_NODES {
        let dir = format!("{ETC}/nodes/{name}");
        let user = format!("system:node:{name}");
        out.push((
            format!("{dir}/kubelet.conf"),
            kubeconfig_text(&remote, &ca.pem.cert, &ca.client(&user, &["system:nodes"])),
        ));
        let serving = ca.server(&[name, ip]);
        out.push((format!("{dir}/kubelet.crt"), serving.cert));
        out.push((format!("{dir}/kubelet.key"), serving.key));
        out.push((
            format!("{dir}/kube-proxy.conf"),
            kubeconfig_text(&remote, &ca.pem.cert, &ca.client("system:kube-proxy", &[])),
        ));
    }
    // The node's CA is the only one the guest trusts (Go's clients, Helm's
    // and containerd's among them, read this file): the registry's TLS.
    out.push(("/etc/ssl/certs/ca-certificates.crt".into(), ca.pem.cert.clone()));
    // A machine ID of this node (cAdvisor reads it): from the CA, unique.
    let id = Sha256::digest(ca.pem.cert.as_bytes());
    out.push(("/etc/machine-id".into(), format!("{}\n", &hex(&id)[..32])));
    out
}

/// The node's configuration files, by path in the guest (its secrets are
/// [`secrets`]).
fn files(images: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    out.push((format!("{ETC}/scheduler.yaml"), SCHEDULER_CONFIG.replace("@ETC@", ETC)));
    out.push((format!("{ETC}/kubelet.yaml"), KUBELET_CONFIG.replace("@PKI@", PKI)));
    out.push((format!("{ETC}/admission.yaml"), ADMISSION_CONFIG.into()));
    out.push((
        format!("{ETC}/kube-proxy.yaml"),
        KUBE_PROXY_CONFIG.replace("@ETC@", ETC).replace("@NODE@", NODE_NAME),
    ));
    out.push(("/etc/containerd/config.toml".into(), CONTAINERD_CONFIG.into()));
    out.push(("/etc/cni/net.d/10-mock.conflist".into(), CNI_CONFIG.into()));
    // (the API server reaches a kubelet by its node's hostname first:
    // the shared nodes' are here as kind's are in Docker's DNS)
    let shared: String = SHARED_NODES.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
    out.push((
        "/etc/hosts".into(),
        format!("127.0.0.1 localhost\n{NODE_IP} {NODE_NAME} {REGISTRY_HOST}\n{shared}"),
    ));
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
        "PAUSE_IMAGE={}\nBUSYBOX_IMAGE={}\nNODE_NAME={NODE_NAME}\nNODE_IP={NODE_IP}\nREGISTRY={REGISTRY}\nSHARED_NODES=\"{}\"\nKUBECONFIG={ETC}/admin.conf\nexport KUBECONFIG\n\
         ETCD_ARGS=\"{}\"\nAPISERVER_ARGS=\"{}\"\n\
         CONTROLLER_MANAGER_ARGS=\"{}\"\nSCHEDULER_ARGS=\"--config={ETC}/scheduler.yaml --v=1\"\n\
         KUBE_PROXY_ARGS=\"--config={ETC}/kube-proxy.yaml --v=1\"\n\
         KUBELET_ARGS=\"--config={ETC}/kubelet.yaml --kubeconfig={ETC}/kubelet.conf \
         --hostname-override={NODE_NAME} --node-ip={NODE_IP} --v=1\"\n",
        image("pause"),
        image("busybox"),
        SHARED_NODES.map(|(name, ip)| format!("{name}={ip}")).join(" "),
        quote(etcd_args(
            "/var/lib/etcd",
            "http://127.0.0.1:2379",
            "http://127.0.0.1:2380"
        )),
        quote(node_apiserver_args()),
        quote(controller_manager_args()),
    );
    out.push(("/guest/node.env".into(), env));
    out
}

/// kube-apiserver's flags as on the host's control plane, but serving on
/// every address and advertising the node's: its endpoint reconciler then
/// makes the `kubernetes` Service's endpoints, which kube-proxy routes pods
/// to (the in-cluster configuration of the chart's pods). Pod Security is
/// enforced as hardened clusters do ([`ADMISSION_CONFIG`]).
fn node_apiserver_args() -> Vec<String> {
    let mut args: Vec<String> = apiserver_args(PKI, "http://127.0.0.1:2379", API_PORT)
        .into_iter()
        .filter(|a| {
            !a.starts_with("--bind-address=")
                && !a.starts_with("--advertise-address=")
                && !a.starts_with("--endpoint-reconciler-type=")
        })
        .collect();
    args.push("--bind-address=0.0.0.0".into());
    args.push(format!("--advertise-address={NODE_IP}"));
    args.push(format!("--admission-control-config-file={ETC}/admission.yaml"));
    args
}

/// kube-controller-manager's flags: the default controllers (the
/// ResourceClaim and device-taint eviction controllers among them) but
/// those of what no scenario has (autoscalers, volumes, CronJobs,
/// StatefulSets, disruption budgets, certificate requests, TTLs): their
/// informers cost the emulated node's idle CPU (measured on one boot: the
/// controller-manager at 19% of a vCPU with all, 12% without these). Its
/// own credentials per controller, the CA and the service-account token key.
fn controller_manager_args() -> Vec<String> {
    let off = [
        "horizontal-pod-autoscaler",
        "cronjob",
        "disruption",
        "statefulset",
        "replicationcontroller",
        "persistentvolume-binder",
        "persistentvolume-attach-detach",
        "persistentvolume-expander",
        "persistentvolumeclaim-protection",
        "persistentvolume-protection",
        "ephemeral-volume",
        "volumeattributesclass-protection",
        "ttl",
        "ttl-after-finished",
        "endpointslice-mirroring",
        "storageversion-garbage-collector",
        "legacy-serviceaccount-token-cleaner",
        "validatingadmissionpolicy-status",
        "certificatesigningrequest-signing",
        "certificatesigningrequest-approving",
        "certificatesigningrequest-cleaner",
        "podcertificaterequest-cleaner",
        "selinux-warning",
    ];
    let controllers: Vec<String> = std::iter::once("*".to_string())
        .chain(off.iter().map(|c| format!("-{c}-controller")))
        .collect();
    vec![
        format!("--controllers={}", controllers.join(",")),
        format!("--kubeconfig={ETC}/controller-manager.conf"),
        format!("--authentication-kubeconfig={ETC}/controller-manager.conf"),
        format!("--authorization-kubeconfig={ETC}/controller-manager.conf"),
        format!("--service-account-private-key-file={PKI}/sa.key"),
        format!("--root-ca-file={PKI}/ca.crt"),
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

/// Admission as hardened and managed clusters configure it: Pod Security
/// enforcing `baseline` in every namespace that does not say otherwise
/// (kube-system aside): a pod with hostPath volumes or privileged
/// containers is refused where its namespace has no
/// `pod-security.kubernetes.io/enforce` label allowing it; and, as GKE does,
/// the critical priority classes limited to namespaces with a ResourceQuota
/// covering them.
const ADMISSION_CONFIG: &str = "apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ResourceQuota
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: ResourceQuotaConfiguration
    limitedResources:
    - resource: pods
      matchScopes:
      - scopeName: PriorityClass
        operator: In
        values: [system-node-critical, system-cluster-critical]
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
      warn: baseline
      warn-version: latest
    exemptions:
      namespaces: [kube-system]
";

/// distribution's registry: TLS with a certificate of the run's CA, images
/// kept on the guest's tmpfs, deletes allowed (a test may replace a tag).
const REGISTRY_CONFIG: &str = "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  tls:
    certificate: @PKI@/registry.crt
    key: @PKI@/registry.key
";

/// kube-proxy in nftables mode (the pods' Services: the API server's
/// `kubernetes` Service first); conntrack's sysctls left as the kernel has
/// them; its metrics and health on loopback.
const KUBE_PROXY_CONFIG: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: @ETC@/kube-proxy.conf
hostnameOverride: @NODE@
clusterCIDR: 10.88.0.0/16
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_up_to_date_until_a_file_it_lists_is_newer() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("main.rs");
        let bin = dir.path().join("mock-accel-agent");
        std::fs::write(&src, "fn main() {}").unwrap();
        std::fs::write(&bin, "").unwrap();
        let touch = |p: &Path, t: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        let now = SystemTime::now() + Duration::from_secs(3600);
        touch(&bin, now);
        touch(&src, now - Duration::from_secs(60));
        assert!(!up_to_date(&bin), "no dep-info: not known to be up to date");
        std::fs::write(
            bin.with_extension("d"),
            format!("{}: {}\n", bin.display(), src.display()),
        )
        .unwrap();
        assert!(up_to_date(&bin));
        touch(&src, now + Duration::from_secs(60));
        assert!(!up_to_date(&bin), "a source newer than the binary");
        touch(&src, now - Duration::from_secs(60));
        std::fs::remove_file(&src).unwrap();
        assert!(!up_to_date(&bin), "a listed file gone");
    }
}
