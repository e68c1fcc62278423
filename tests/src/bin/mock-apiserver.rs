//! `mock-apiserver`: the test Kubernetes API server as a process, for the
//! demo and manual use (`kubectl --kubeconfig FILE get resourceslices`).
//! Test controls are under `/_mock/` (faults, latency, close-watches,
//! compact, kubelet-restart?node=N, requests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mock_device_testkit::apiserver::{ApiServer, Config};

#[derive(Parser)]
#[command(about = "A test Kubernetes API server for mock-device (HTTP, loopback)")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "MOCK_APISERVER_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long, env = "MOCK_APISERVER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the test API server listens on loopback only, not {}",
        args.listen
    );
    let server = ApiServer::start(Config {
        listen: args.listen,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        ..Config::default()
    })?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
    }
    println!("mock-apiserver listening on {}", server.url());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}
