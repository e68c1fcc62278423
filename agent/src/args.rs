//! The command line, compatible with the seed's driver and chart; every
//! flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    NodeAgent,
    Controller,
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
    about = "mock-device DRA driver: node agent",
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
    /// The kubelet plugin directory of this driver.
    #[arg(
        long,
        env = "PLUGIN_SOCKET",
        default_value = "/var/lib/kubelet/plugins/mock-accel.example.com"
    )]
    pub plugin_socket: PathBuf,
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
    /// Where the module's class devices are.
    #[arg(long, env = "SYSFS_ROOT", default_value = "/sys/class/mock-accel")]
    pub sysfs_root: PathBuf,
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
    /// Most devices per ResourceSlice (1-128).
    #[arg(long, env = "MAX_DEVICES_PER_SLICE", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub max_devices_per_slice: u16,
}

/// "30s", "1m30s", "250ms", or "0" (off).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 30s, 5m, 0 to turn off)"))
}

impl Args {
    pub fn rescan(&self) -> Option<Duration> {
        (!self.rescan_interval.is_zero()).then_some(self.rescan_interval)
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
    }
}
