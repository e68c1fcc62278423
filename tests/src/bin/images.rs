//! Writes the test node's container images as OCI archives (no engine
//! needed): `target/images/<name>.tar`, one per image of
//! `mock_device_testkit::oci::test_images`, each `ctr images import`-able.
//! Unchanged images leave their files untouched. `just images` runs this.

use std::path::PathBuf;

use mock_device_testkit::{oci, workspace_root};

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/images"));
    std::fs::create_dir_all(&out)?;
    for image in oci::test_images(&out)? {
        let path = out.join(format!("{}.tar", image.short_name()));
        let w = image.write(&path)?;
        println!(
            "{:<44} {}  {:>6.1} MB  {}",
            image.name,
            w.manifest_digest,
            w.size as f64 / 1e6,
            path.display()
        );
    }
    Ok(())
}
