//! The command line, compatible with the seed's driver and chart; every
//! flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::slices::TaintEffect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    NodeAgent,
    Controller,
    /// Publish the pools of many nodes without agents (kwok's), each from
    /// its own sim, from one process (`--fleet-node-selector`).
    Fleet,
    /// List this driver's ResourceSlices and fail when none has a device
    /// (the chart's `helm test`).
    Check,
}

/// Where the devices come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Devices {
    /// The mock-accel kernel module, through its sysfs files.
    Kernel,
    /// A user-space model of the module, per node, driven through a control
    /// socket (`mock-accel-agent ctl`): no module, no privileges.
    Sim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-accel-agent",
    version,
    about = "mock-device DRA driver: node agent (publishes devices, serves the kubelet) or controller (fleet view, clean-up)",
    args_override_self = true
)]
pub struct Args {
    /// What to run.
    #[arg(long, env = "MODE", value_enum, default_value = "node-agent")]
    pub mode: Mode,
    /// The DRA driver name.
    #[arg(long, env = "DRIVER_NAME", default_value = "mock-accel.example.com")]
    pub driver_name: String,
    /// This node's name (the pool name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The kubelet plugin directory of this driver: the DRA socket
    /// (`dra.sock`), the checkpoint and the lock live there. A path ending in
    /// `.sock` is taken as the socket itself, in its parent directory.
    #[arg(
        long,
        env = "PLUGIN_SOCKET",
        default_value = "/var/lib/kubelet/plugins/mock-accel.example.com"
    )]
    pub plugin_socket: PathBuf,
    /// Serve the kubelet (registration, DRA prepare/unprepare, health). Off:
    /// publish ResourceSlices only (e.g. to test a scheduler without kubelet).
    #[arg(long, env = "KUBELET_PLUGIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub kubelet_plugin: bool,
    /// The kubelet's plugin registry directory (plugin watcher).
    #[arg(long, env = "REGISTRY_DIR", default_value = "/var/lib/kubelet/plugins_registry")]
    pub registry_dir: PathBuf,
    /// Where CDI specs are written (the container runtime's CDI directory).
    #[arg(long, env = "CDI_ROOT", default_value = "/var/run/cdi")]
    pub cdi_root: PathBuf,
    /// This pod's UID: set by the chart for rolling updates; both socket
    /// names then carry it and calls are serialised across pods (flock).
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// The kernel's boot ID (a reboot empties /var/run/cdi and resets the
    /// module; the checkpoint notices through it).
    #[arg(
        long,
        env = "BOOT_ID_PATH",
        default_value = "/proc/sys/kernel/random/boot_id",
        hide = true
    )]
    pub boot_id_path: PathBuf,
    /// Prints the crash points (`failpoints.rs`) a prepare and an unprepare
    /// reach, in order, one line each, and exits (the fault scenarios read
    /// them from here).
    #[arg(long, hide = true)]
    pub print_failpoints: bool,
    /// Safety-net rescan period ("30s", "5m"); 0 turns it off. Uevents drive
    /// publishing; this only catches what they could not.
    #[arg(long, env = "RESCAN_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub rescan_interval: Duration,
    /// Log verbosity 0-10 (klog style): 0-2 info, 3-5 debug, 6+ trace.
    #[arg(long = "v", env = "VERBOSITY", default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=10))]
    pub verbosity: u8,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where the devices come from.
    #[arg(long, env = "DEVICES", value_enum, default_value = "kernel")]
    pub devices: Devices,
    /// Where the module's class devices are (`--devices=kernel`).
    #[arg(long, env = "SYSFS_ROOT", default_value = "/sys/class/mock-accel")]
    pub sysfs_root: PathBuf,
    /// `--devices=sim`: the state directory (devices, identity files, the
    /// control socket). Somewhere that outlives the agent's pod but not the
    /// node's boot (a tmpfs on the node); a state of another boot is dropped.
    #[arg(long, env = "SIM_DIR", default_value = "/run/mock-accel-sim")]
    pub sim_dir: PathBuf,
    /// `--devices=sim`: PFs made at start (the module's num_pfs, 0-64).
    #[arg(long, env = "SIM_PFS", default_value_t = 4)]
    pub sim_pfs: u32,
    /// `--devices=sim`: NUMA nodes the PFs spread over (numa_nodes, 1-8).
    #[arg(long, env = "SIM_NUMA_NODES", default_value_t = 2)]
    pub sim_numa_nodes: u32,
    /// `--devices=sim`: VFs a PF may have (max_vfs, 0-64).
    #[arg(long, env = "SIM_MAX_VFS", default_value_t = 8)]
    pub sim_max_vfs: u32,
    /// `--devices=sim`: memory of a PF in MiB (memory_mib).
    #[arg(long, env = "SIM_MEMORY_MIB", default_value_t = 16384)]
    pub sim_memory_mib: u64,
    /// `--devices=sim`: 0, every device local; else fabric-attached, an
    /// attach taking this many milliseconds (fabric_attach_ms, up to 60000).
    #[arg(long, env = "SIM_FABRIC_ATTACH_MS", default_value_t = 0)]
    pub sim_fabric_attach_ms: u32,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,
    /// Listen to kernel uevents (off only for tests on a fake sysfs tree).
    #[arg(long, env = "UEVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub uevents: bool,
    /// Load the eBPF probes on the module's probe/remove (needs CAP_BPF and
    /// CAP_PERFMON, or root; without them the agent goes on with uevents).
    #[arg(long, env = "EBPF", default_value_t = true, action = clap::ArgAction::Set)]
    pub ebpf: bool,
    /// The namespace of this pod: the agents' heartbeat Leases and the
    /// controller's leader Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mock-device")]
    pub namespace: String,
    /// Node agent: heartbeat Lease renewal period (valid for four); 0 turns
    /// it off (the controller then never takes the agent for gone).
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Controller: how long a node agent may be gone (heartbeat expired), or
    /// a slice left behind by a newer pool generation, before the slices go.
    #[arg(long, env = "AGENT_GRACE_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub agent_grace_period: Duration,
    /// Controller: how long the leader Lease holds without renewal.
    #[arg(long, env = "LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// Controller: a leader that cannot renew for this long steps down.
    #[arg(long, env = "LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Controller: how often candidates try to take, and the leader renews, the Lease.
    #[arg(long, env = "LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// How long one Kubernetes API request (not a watch) may take before it
    /// is abandoned and retried: a request hung on a dead connection must
    /// not hold a lock, the leader Lease or the heartbeat.
    #[arg(long, env = "API_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// Most devices per ResourceSlice (1-128).
    #[arg(long, env = "MAX_DEVICES_PER_SLICE", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub max_devices_per_slice: u16,
    /// Publish PF/VF exclusion as shared counters (partitionable devices,
    /// KEP-4815; beta and on in Kubernetes 1.36+), so the scheduler never
    /// gives a PF and one of its VFs at once. A cluster that drops the
    /// fields is noticed and the slices go out without them.
    #[arg(long, env = "SHARED_COUNTERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub shared_counters: bool,
    /// Publish device health as device taints (KEP-5055; GA in 1.37): a
    /// failed device carries `<driver>/health=failed` with this effect
    /// (NoSchedule: not allocated to claims that do not tolerate it;
    /// NoExecute: pods using it are evicted too), a degraded one an
    /// informational taint (effect None); off: none. A cluster that drops
    /// taints is noticed and the slices go out without them.
    #[arg(long, env = "HEALTH_TAINTS", default_value = "NoSchedule", value_enum)]
    pub health_taints: TaintEffect,
    /// Publish PFs shared by memory (consumable capacity, KEP-5075; beta
    /// and on in 1.36+): several claims may hold a PF at once, each asking
    /// `capacity.requests.memory` (whole GiB; all of it when unnamed), and
    /// each container sees its share in `MOCK_ACCEL_MEMORY`. A cluster that
    /// drops the fields is noticed and PFs go out exclusive again.
    #[arg(long, env = "CONSUMABLE_CAPACITY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub consumable_capacity: bool,
    /// Publish list-typed attributes (KEP-5491, DRAListTypeAttributes;
    /// alpha, off by default in 1.36/1.37): `capabilityList`, the device's
    /// capabilities as a list of strings, beside the scalar `capabilities`
    /// (kept for selectors and clusters that use it), for selectors like
    /// `device.attributes["<driver>"].capabilityList.includes("sriov")`.
    /// Slices then hold at most 64 devices. A cluster that drops or refuses
    /// the field is noticed and the devices go out without it.
    #[arg(long, env = "LIST_ATTRIBUTES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub list_attributes: bool,
    /// Publish compatibility groups (KEP-5963, DRADeviceCompatibilityGroups;
    /// alpha, off by default in 1.37) on the counter consumptions: `pf` for
    /// a PF (used whole or in memory shares), `sriov` for its VFs, so the
    /// scheduler never co-allocates two modes of one physical device. Needs
    /// shared counters. A cluster that drops the field is noticed and the
    /// devices go out without it (the counters still keep the modes apart).
    /// The scheduler's gate must be on too: with it off, it skips a pool
    /// with groups entirely.
    #[arg(long, env = "COMPATIBILITY_GROUPS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub compatibility_groups: bool,
    /// Host memory, in MiB, that each pod using one of the devices needs
    /// beside it (pinned buffers, the runtime's queues): published on every
    /// device as `nodeAllocatableResources.memory.overhead.perPod` (KEP-5517,
    /// DRANodeAllocatableResources; alpha, off by default in 1.37), which
    /// the scheduler counts against the node's allocatable memory and the
    /// kubelet adds to the pod's cgroup. 0: none. A cluster that drops the
    /// field is noticed and the devices go out without it.
    #[arg(long, env = "HOST_MEMORY_OVERHEAD_MIB", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub host_memory_overhead_mib: u32,
    /// Device metadata for containers (KEP-5304): each prepared request's
    /// devices and their attributes in a file under the plugin directory
    /// (`dra-device-metadata/`), mounted read-only into the containers at
    /// `/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json`
    /// (`resourceclaimtemplates/<pod claim name>/…` for a claim from a
    /// template), a JSON stream of `metadata.resource.k8s.io/v1beta1` then
    /// `v1alpha1`. Needs nothing of the cluster (CDI mounts).
    #[arg(long, env = "DEVICE_METADATA", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub device_metadata: bool,
    /// Apply the DeviceScenarios (hot-plug and faults declared through the
    /// API, the driver's group) that name this node, and report them in
    /// their status. Off: the agent neither watches nor needs them.
    #[arg(long, env = "SCENARIOS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub scenarios: bool,
    /// Many nodes on one kernel (kind): publish and prepare only the PFs
    /// this node owns (the module's `owner`, kmod/ABI.md), never an
    /// unowned one. Off (one node per kernel): unowned PFs are this
    /// node's too; another node's never are.
    #[arg(long, env = "SHARED_KERNEL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub shared_kernel: bool,
    /// With --shared-kernel: at each load of the module, take unowned PFs
    /// (lowest ids first) until this node owns this many (3 nodes with 4
    /// each split 12 PFs with no per-node setting). 0: take none (PFs come
    /// with an owner: `new_device "ID NUMA NODE"`, a DeviceScenario).
    #[arg(long, env = "TAKE_PFS", default_value_t = 0)]
    pub take_pfs: u32,
    /// With --shared-kernel: take exactly these PF ids instead (comma-separated).
    #[arg(long, env = "TAKE_PF_IDS", value_delimiter = ',', conflicts_with = "take_pfs")]
    pub take_pf_ids: Vec<u32>,
    /// `--mode=fleet`: the Nodes served (a label selector; kwok's nodes
    /// carry `type=kwok`). Each gets the sim's devices (`--sim-*`), its
    /// state in `--sim-dir/<node>`.
    #[arg(long, env = "FLEET_NODE_SELECTOR", default_value = "type=kwok")]
    pub fleet_node_selector: String,
    /// `--mode=fleet`: most nodes served at once (memory grows with them);
    /// more selected wait, said and counted, until served ones leave.
    #[arg(long, env = "FLEET_MAX_NODES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fleet_max_nodes: u32,
    /// `--mode=fleet`: VFs each PF of a node gets when its devices are
    /// first made (up to --sim-max-vfs); DeviceScenarios change them after.
    #[arg(long, env = "FLEET_VFS", default_value_t = 0)]
    pub fleet_vfs: u32,
}

/// "30s", "1m30s", "250ms", or "0" (off).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 30s, 5m, 0 to turn off)"))
}

impl Args {
    /// The host memory overhead per pod, in bytes (None: none).
    pub fn host_overhead(&self) -> Option<u64> {
        (self.host_memory_overhead_mib > 0).then(|| u64::from(self.host_memory_overhead_mib) << 20)
    }

    /// The plugin directory and the DRA socket path in it.
    pub fn plugin_paths(&self) -> (PathBuf, PathBuf) {
        let p = &self.plugin_socket;
        let uid = self.pod_uid.as_deref().filter(|u| !u.is_empty());
        if p.extension().is_some_and(|e| e == "sock") {
            let dir = p.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            return (dir, p.clone());
        }
        let name = match uid {
            Some(uid) => format!("dra-{uid}.sock"),
            None => "dra.sock".to_string(),
        };
        (p.clone(), p.join(name))
    }

    /// The registration socket: `<driver>-reg.sock`, or `<driver>-<uid>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        let name = match self.pod_uid.as_deref().filter(|u| !u.is_empty()) {
            Some(uid) => format!("{}-{uid}-reg.sock", self.driver_name),
            None => format!("{}-reg.sock", self.driver_name),
        };
        self.registry_dir.join(name)
    }

    /// The sim's parameters (`--sim-*`), as the module's.
    pub fn sim_params(&self) -> crate::backend::Params {
        crate::backend::Params {
            num_pfs: self.sim_pfs,
            numa_nodes: self.sim_numa_nodes,
            max_vfs: self.sim_max_vfs,
            memory_mib: self.sim_memory_mib,
            fabric_attach_ms: self.sim_fabric_attach_ms,
        }
    }

    pub fn rescan(&self) -> Option<Duration> {
        (!self.rescan_interval.is_zero()).then_some(self.rescan_interval)
    }

    /// The leader-election timings, checked as client-go checks them.
    pub fn leader_timing(&self) -> Result<crate::controller::leader::Timing, String> {
        let t = crate::controller::leader::Timing {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        };
        if t.retry_period.is_zero() || t.lease_duration < Duration::from_secs(1) {
            return Err("--leader-elect-retry-period must be > 0 and --leader-elect-lease-duration at least 1s".into());
        }
        if t.lease_duration <= t.renew_deadline {
            return Err("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline".into());
        }
        if t.renew_deadline.as_secs_f64() <= 1.2 * t.retry_period.as_secs_f64() {
            return Err("--leader-elect-renew-deadline must be greater than 1.2 x --leader-elect-retry-period".into());
        }
        Ok(t)
    }

    /// The tracing filter for `--v`.
    pub fn log_filter(&self) -> &'static str {
        match self.verbosity {
            0..=2 => "info",
            3..=5 => "info,mock_accel_agent=debug",
            _ => "debug,mock_accel_agent=trace",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_flags_parse() {
        let a = Args::try_parse_from([
            "agent",
            "--mode=node-agent",
            "--driver-name=x.example.com",
            "--plugin-socket=/p",
            "--rescan-interval=45s",
            "--v=10",
        ])
        .unwrap();
        assert_eq!(a.mode, Mode::NodeAgent);
        assert_eq!(a.rescan(), Some(Duration::from_secs(45)));
        assert_eq!(a.log_filter(), "debug,mock_accel_agent=trace");
        let off = Args::try_parse_from(["agent", "--rescan-interval=0"]).unwrap();
        assert_eq!(off.rescan(), None);
        assert!(Args::try_parse_from(["agent", "--v=11"]).is_err());
        assert!(Args::try_parse_from(["agent", "--rescan-interval=soon"]).is_err());
        assert!(Args::try_parse_from(["agent", "--mode=other"]).is_err());
        let c = Args::try_parse_from(["agent", "--mode=controller"]).unwrap();
        assert_eq!(c.mode, Mode::Controller);
        assert!(c.leader_timing().is_ok());
        let bad = Args::try_parse_from([
            "agent",
            "--leader-elect-lease-duration=5s",
            "--leader-elect-renew-deadline=10s",
        ])
        .unwrap();
        assert!(bad.leader_timing().unwrap_err().contains("greater than"));
        let bad = Args::try_parse_from([
            "agent",
            "--leader-elect-renew-deadline=2s",
            "--leader-elect-retry-period=2s",
        ])
        .unwrap();
        assert!(bad.leader_timing().is_err());
    }

    #[test]
    fn socket_names() {
        let a = Args::try_parse_from(["agent"]).unwrap();
        let dir = PathBuf::from("/var/lib/kubelet/plugins/mock-accel.example.com");
        assert_eq!(a.plugin_paths(), (dir.clone(), dir.join("dra.sock")));
        assert_eq!(
            a.registration_socket(),
            PathBuf::from("/var/lib/kubelet/plugins_registry/mock-accel.example.com-reg.sock")
        );
        let r = Args::try_parse_from(["agent", "--pod-uid=1234-ab"]).unwrap();
        assert_eq!(r.plugin_paths().1, dir.join("dra-1234-ab.sock"));
        assert_eq!(
            r.registration_socket(),
            PathBuf::from("/var/lib/kubelet/plugins_registry/mock-accel.example.com-1234-ab-reg.sock")
        );
        let s = Args::try_parse_from(["agent", "--plugin-socket=/p/x/plugin.sock"]).unwrap();
        assert_eq!(
            s.plugin_paths(),
            (PathBuf::from("/p/x"), PathBuf::from("/p/x/plugin.sock"))
        );
    }
}
