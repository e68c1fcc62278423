//! The chart's DeviceClasses, rendered by real Helm, select exactly the
//! devices they name: their CEL runs (the `cel` interpreter) against the
//! devices the agent publishes, shaped as the scheduler presents them
//! (`device.driver`, `device.attributes[domain].name`, unqualified
//! attribute names in the driver's domain).

use std::collections::BTreeMap;

use mock_accel_agent::backend::sysfs::{scan, write_fake_tree};
use mock_accel_agent::slices;
use serde_json::{Value, json};

const DRIVER: &str = "mock-accel.example.com";

/// `(class name, CEL expression)` of the chart rendered with `set` values.
fn rendered_classes(values: Value) -> Vec<(String, String)> {
    mock_device_testkit::render_chart(&values)["mock-device/templates/deviceclasses.yaml"]
        .iter()
        .map(|c| {
            (
                c["metadata"]["name"].as_str().unwrap().to_string(),
                c["spec"]["selectors"][0]["cel"]["expression"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// A published device as CEL sees it.
fn cel_device(driver: &str, d: &k8s_openapi::api::resource::v1::Device) -> Value {
    let mut attributes: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (name, a) in d.attributes.iter().flatten() {
        let (domain, short) = match name.split_once('/') {
            Some((domain, short)) => (domain.to_string(), short.to_string()),
            None => (driver.to_string(), name.clone()),
        };
        let v = match (&a.string, a.int, a.bool, &a.version) {
            (Some(s), ..) => json!(s),
            (_, Some(i), ..) => json!(i),
            (_, _, Some(b), _) => json!(b),
            (.., Some(v)) => json!(v),
            _ => Value::Null,
        };
        attributes.entry(domain).or_default().insert(short, v);
    }
    json!({"driver": driver, "attributes": attributes, "allowMultipleAllocations": false})
}

fn selects(expr: &str, device: &Value) -> bool {
    let program = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
    let mut ctx = cel::Context::default();
    ctx.add_variable("device", cel::to_value(device).unwrap()).unwrap();
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => b,
        // A missing attribute is an evaluation error: not selected.
        Err(_) => false,
        Ok(other) => panic!("{expr}: not a bool: {other:?}"),
    }
}

#[test]
fn each_device_class_selects_its_type_of_this_drivers_devices_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys/class/mock-accel");
    write_fake_tree(&root, 2, 3).unwrap();
    let inv = scan(&root).unwrap();
    let devices: Vec<_> = inv.ordered().into_iter().map(slices::device).collect();
    assert_eq!(devices.len(), 8);
    let pfs: Vec<&str> = devices
        .iter()
        .filter(|d| !d.name.contains("-vf"))
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(pfs, ["mock0", "mock1"]);

    for (values, driver) in [
        (json!({}), DRIVER),
        (json!({"draDriver": {"name": "accel.test.io"}}), "accel.test.io"),
    ] {
        let classes = rendered_classes(values);
        assert_eq!(
            classes.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["mock-accel-pf", "mock-accel-vf"]
        );
        for (class, expr) in &classes {
            let picked: Vec<&str> = devices
                .iter()
                .filter(|d| selects(expr, &cel_device(driver, d)))
                .map(|d| d.name.as_str())
                .collect();
            let want: Vec<&str> = devices
                .iter()
                .filter(|d| d.name.contains("-vf") == (class == "mock-accel-vf"))
                .map(|d| d.name.as_str())
                .collect();
            assert_eq!(picked, want, "{class}: {expr}");
            // Another driver's identical devices: never.
            assert!(
                devices
                    .iter()
                    .all(|d| !selects(expr, &cel_device("gpu.example.com", d))),
                "{class} selects another driver's devices: {expr}"
            );
        }
    }
}
