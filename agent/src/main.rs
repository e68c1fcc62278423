//! `mock-accel-agent`: see the library.

use clap::Parser;
use mock_accel_agent::backend::sim::control;
use mock_accel_agent::{Agent, Args, Mode, Options, check, failpoints, init_tracing};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `mock-accel-agent ctl ...`: the sim's control client.
    if std::env::args().nth(1).as_deref() == Some("ctl") {
        let ctl = control::Ctl::parse_from(std::env::args().skip(1));
        std::process::exit(if control::ctl(ctl).await? { 0 } else { 1 });
    }
    let args = Args::parse();
    if args.print_failpoints {
        println!("prepare: {}", failpoints::PREPARE.join(" "));
        println!("unprepare: {}", failpoints::UNPREPARE.join(" "));
        return Ok(());
    }
    init_tracing(&args);
    failpoints::from_env()?;
    if args.mode == Mode::Check {
        return check::run(&args).await;
    }
    let mut agent = Agent::start(Options {
        args,
        api: None,
        injected: None,
    })
    .await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        r = agent.wait() => return r,
    }
    agent.stop().await
}
