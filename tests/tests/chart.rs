//! The Helm chart with real Helm and the official Kubernetes schemas:
//! `tests/chart/check_chart.py` (helm-python-sdk, kubernetes-validate).

use std::process::Command;

#[test]
fn the_chart_renders_valid_objects_for_every_seed_command() {
    let root = mock_device_testkit::workspace_root();
    let out = Command::new("python3")
        .arg(root.join("tests/chart/check_chart.py"))
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "chart checks failed (needs `pip install helm-python-sdk kubernetes-validate`: ./dev setup):\n{text}"
    );
}

fn helm(args: &[&str]) -> String {
    let bin = mock_device_testkit::cluster::bin_dir().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin.join("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("mock-device-helm-cache"))
        .output()
        .expect("running helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?} failed:\n{text}");
    text
}

/// The Helm CLI the seed's users type (v4.3.1, built by `just kube`):
/// `helm lint --strict` is clean, `helm package` makes the 1.0.0 archive,
/// and `helm template` of that archive with the seed's standard install
/// flags renders the driver.
#[test]
fn the_helm_cli_lints_packages_and_renders_the_chart() {
    let root = mock_device_testkit::workspace_root();
    let chart = root.join("chart");
    let chart = chart.to_str().unwrap();
    assert!(helm(&["version", "--short"]).starts_with("v4.3.1"));
    let lint = helm(&["lint", "--strict", chart]);
    assert!(lint.contains("1 chart(s) linted, 0 chart(s) failed"), "{lint}");
    let dir = tempfile::tempdir().unwrap();
    let packaged = helm(&["package", chart, "-d", dir.path().to_str().unwrap()]);
    let tgz = dir.path().join("mock-device-1.0.0.tgz");
    assert!(tgz.is_file(), "{packaged}");
    let rendered = helm(&[
        "template",
        "mock-device",
        tgz.to_str().unwrap(),
        "--version",
        "1.0.0",
        "--namespace",
        "mock-device",
        "--create-namespace",
    ]);
    for kind in [
        "DaemonSet",
        "Deployment",
        "DeviceClass",
        "ServiceAccount",
        "ClusterRole",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "helm template renders no {kind}:\n{rendered}"
        );
    }
    assert!(rendered.contains("image: \"ghcr.io/fabiendupont/mock-accel-dra-driver:1.0.0\""));
}
