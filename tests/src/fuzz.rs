//! The test API server's fuzz targets' bodies (run by `fuzz/`, replayed by
//! `agent/tests/fuzz_corpus.rs`, as the agent's in `mock_accel_agent::fuzz`):
//! what a client sends it in a query or a body, parsed or refused with an
//! error, never a panic.

use serde_json::json;

use crate::apiserver::resources::{self, ResourceType};
use crate::apiserver::{quantity, select};

/// A target: its name (as `fuzz/fuzz_targets/<name>.rs` and its corpus
/// directory are called) and its body.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: [Target; 3] = [
    ("quantity", quantity),
    ("label_selector", label_selector),
    ("field_selector", field_selector),
];

/// A `resource.Quantity`: its canonical form parses, and is a fixed point
/// — but for a binary quantity that is no whole number of Ki: it prints as
/// bare digits, which parse as decimal and may canonicalise once more, as
/// apimachinery's do ("62.5Ki" → "64000" → "64k"); then that is one.
pub fn quantity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(c) = quantity::canonical(text) else { return };
    let again = quantity::canonical(&c).unwrap_or_else(|| panic!("{text:?} → {c:?}, which does not parse"));
    if again != c {
        let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().any(|u| text.ends_with(u));
        let digits = c.strip_prefix('-').unwrap_or(&c).bytes().all(|b| b.is_ascii_digit());
        assert!(binary && digits, "{text:?} → {c:?} → {again:?}");
        assert_eq!(
            quantity::canonical(&again).as_deref(),
            Some(again.as_str()),
            "{text:?} → {c:?} → {again:?}"
        );
    }
}

/// A `labelSelector`: parsed or refused; a parsed one can be matched
/// against labels (here: the object's own, empty and one of its keys).
pub fn label_selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = select::LabelSelector::parse(text) {
        for labels in [json!({}), json!({"a": "b", "driver": "mock-accel.example.com"})] {
            let _ = sel.matches(labels.as_object());
        }
    }
}

/// A `fieldSelector` on ResourceSlices: parsed or refused (an unsupported
/// field too); a parsed one matched against a slice.
pub fn field_selector(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let slices = resources::find("resource.k8s.io", "v1", "resourceslices").expect("ResourceSlices are served");
    let rt: &ResourceType = &resources::RESOURCES[slices];
    if let Ok(sel) = select::FieldSelector::parse(text, rt) {
        let _ = sel.matches(
            &json!({"metadata": {"name": "n"}, "spec": {"driver": "d", "nodeName": "a", "pool": {"name": "p"}}}),
        );
    }
}
