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
