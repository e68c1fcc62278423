//! Helpers shared by the agent's integration tests and its benchmark
//! (each test crate uses some of them: hence the `allow(dead_code)`).

#![allow(dead_code)]

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mock_device_testkit::kubelet::Claim;
use serde_json::{Value, json};

/// Creates a claim in `default` with one request of `class` per device and,
/// as the scheduler would, allocates each request its `(driver, pool,
/// device)`; returns the kubelet's name for it. No devices: left pending.
pub async fn allocated_claim(client: &Client, name: &str, class: &str, devices: &[(&str, &str, &str)]) -> Claim {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let count = devices.len().max(1);
    let requests: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("r{i}"), "exactly": {"deviceClassName": class, "count": 1}}))
        .collect();
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"devices": {"requests": requests}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    if !devices.is_empty() {
        let results: Vec<Value> = devices
            .iter()
            .enumerate()
            .map(|(i, (driver, pool, device))| {
                json!({"request": format!("r{i}"), "driver": driver, "pool": pool, "device": device})
            })
            .collect();
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": results}}}})),
        )
        .await
        .unwrap();
    }
    Claim::new("default", name, &created.uid().unwrap())
}

/// A uevent as the kernel sends it for a class device, counted and turned
/// into a trigger as the agent's netlink reader would.
pub fn uevent(action: &str, name: &str) -> mock_accel_agent::backend::Trigger {
    use mock_accel_agent::backend::uevents as events;
    let packet = format!(
        "{action}@/devices/mock-accel/x/mock-accel/{name}\0ACTION={action}\0DEVPATH=/devices/mock-accel/x/mock-accel/{name}\0SUBSYSTEM=mock-accel\0SEQNUM=1\0"
    );
    events::trigger(
        events::parse(packet.as_bytes(), "kernel").unwrap(),
        "kernel",
        std::time::Instant::now(),
        false,
    )
    .unwrap()
}

/// Waits (10 s at most) for a registration socket in `registry` and
/// registers like the kubelet.
pub async fn kubelet(registry: &std::path::Path) -> anyhow::Result<mock_device_testkit::kubelet::Kubelet> {
    use mock_device_testkit::kubelet::{Kubelet, registration_sockets};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = String::from("no registration socket there");
    loop {
        if let Some(s) = registration_sockets(registry).ok().and_then(|v| v.into_iter().next()) {
            match Kubelet::register(&s).await {
                Ok(k) => return Ok(k),
                Err(e) => last = format!("{}: {e:#}", s.display()),
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no plugin registered in {} after 10 s (the last attempt: {last})",
            registry.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A child process killed (and reaped) when dropped: a failing test leaves
/// nothing running.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nobody listens on (for a process's admin port).
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Prints `what` with the p50, p99 and max of `v` in milliseconds (the
/// benchmarks' line format; nearest-rank percentiles).
pub fn report(what: &str, mut v: Vec<std::time::Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "{what:<46} n={:<4} p50={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The agent's logs in this test's output (shown when it fails): for the
/// tests whose failures depend on timing, where the agent's own account is
/// the only one. Once per process; `RUST_LOG` overrides the level.
pub fn agent_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mock_accel_agent=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
