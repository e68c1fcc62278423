//! Writes container images as OCI archives (no engine needed), each `ctr
//! images import`-able, into `target/images` (or `--out`):
//! - the test node's (`oci::test_images`): `pause.tar`, `busybox.tar`;
//! - the driver's, the chart's defaults (`oci::driver_images`):
//!   `mock-accel-dra-driver.tar` (the agent given by `--agent`) and
//!   `mock-accel-module-<kernel>.tar`, the KMM module image of the module
//!   built for each installed guest kernel.
//!
//! Unchanged images leave their files untouched. `just images` runs this
//! with the release build of the agent.

use std::path::PathBuf;

use clap::Parser;
use mock_device_testkit::{oci, workspace_root};

#[derive(Parser)]
#[command(about = "Write the test node's and the driver's container images as OCI archives")]
struct Args {
    /// Where the archives go.
    #[arg(long, default_value_os_t = workspace_root().join("target/images"))]
    out: PathBuf,
    /// The agent binary of the driver image.
    #[arg(long, default_value_os_t = workspace_root().join("target/release/mock-accel-agent"))]
    agent: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = args.out;
    std::fs::create_dir_all(&out)?;
    anyhow::ensure!(
        args.agent.is_file(),
        "{} is missing: build it with `cargo build --release -p mock-accel-agent` (just images does)",
        args.agent.display()
    );
    let mut images = oci::test_images(&out)?;
    images.extend(oci::driver_images_for_installed_kernels(&args.agent, &out)?);
    for image in images {
        let file = match image.name.rsplit_once(":v") {
            Some((_, kernel_tag)) if image.name.starts_with(oci::MODULE_REPOSITORY) => {
                format!("{}-{}.tar", image.short_name(), kernel_tag)
            }
            _ => format!("{}.tar", image.short_name()),
        };
        let path = out.join(file);
        let w = image.write(&path)?;
        println!(
            "{:<72} {}  {:>6.1} MB  {}",
            image.name,
            &w.manifest_digest[..19],
            w.size as f64 / 1e6,
            path.display()
        );
    }
    Ok(())
}
