//! The resource types the test API server serves, with what the real
//! server knows of each: names, scope, subresources, field selectors and
//! the columns `kubectl get` prints.

use serde_json::Value;

/// A column of the server-side table printing (`kubectl get`).
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub cell: fn(&Value) -> Value,
}

pub struct ResourceType {
    /// API group ("" for the core group).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `status` subresource: the main endpoint ignores status changes.
    pub status_subresource: bool,
    /// `metadata.generation` is set at create and bumped on spec changes.
    pub generation: bool,
    /// Field selectors beyond `metadata.name` / `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    /// Columns after NAME (AGE is among them where the real server has it).
    pub columns: &'static [Column],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `resourceslices.resource.k8s.io`, as error messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `ResourceSlice.resource.k8s.io`, as Invalid errors name it.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// The verbs of every resource here.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn s(v: &Value, path: &[&str]) -> Value {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Value::String(String::new()),
        }
    }
    match cur {
        Value::Null => Value::String(String::new()),
        other => other.clone(),
    }
}

fn age(v: &Value) -> Value {
    let created = v["metadata"]["creationTimestamp"].as_str().unwrap_or("");
    Value::String(crate::apiserver::time::human_age(created))
}

fn claim_state(v: &Value) -> Value {
    let status = &v["status"];
    let mut state = if status["allocation"].is_object() {
        "allocated"
    } else {
        "pending"
    }
    .to_string();
    if status["reservedFor"].as_array().is_some_and(|r| !r.is_empty()) {
        state.push_str(",reserved");
    }
    if v["metadata"]["deletionTimestamp"].is_string() {
        state.push_str(",deleted");
    }
    Value::String(state)
}

fn node_status(v: &Value) -> Value {
    let ready = v["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or("Unknown").to_string());
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if v["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    Value::String(status)
}

fn node_roles(v: &Value) -> Value {
    let mut roles: Vec<&str> = v["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    Value::String(if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    })
}

fn event_object(v: &Value) -> Value {
    let o = &v["involvedObject"];
    Value::String(format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("").to_lowercase(),
        o["name"].as_str().unwrap_or("")
    ))
}

fn event_last_seen(v: &Value) -> Value {
    let t = ["lastTimestamp", "eventTime"]
        .iter()
        .find_map(|k| v[k].as_str())
        .or_else(|| v["metadata"]["creationTimestamp"].as_str())
        .unwrap_or("");
    Value::String(crate::apiserver::time::human_age(t))
}

/// A plain string column.
const fn text(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description: "",
        cell,
    }
}

const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    cell: age,
};

pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "resource.k8s.io",
        version: "v1",
        kind: "ResourceSlice",
        plural: "resourceslices",
        singular: "resourceslice",
        namespaced: false,
        short_names: &[],
        status_subresource: false,
        generation: true,
        field_selectors: &["spec.nodeName", "spec.driver"],
        columns: &[
            text("Node", |v| s(v, &["spec", "nodeName"])),
            text("Driver", |v| s(v, &["spec", "driver"])),
            text("Pool", |v| s(v, &["spec", "pool", "name"])),
            AGE,
        ],
    },
    ResourceType {
        group: "resource.k8s.io",
        version: "v1",
        kind: "ResourceClaim",
        plural: "resourceclaims",
        singular: "resourceclaim",
        namespaced: true,
        short_names: &[],
        status_subresource: true,
        generation: true,
        field_selectors: &[],
        columns: &[text("State", claim_state), AGE],
    },
    ResourceType {
        group: "resource.k8s.io",
        version: "v1",
        kind: "DeviceClass",
        plural: "deviceclasses",
        singular: "deviceclass",
        namespaced: false,
        short_names: &[],
        status_subresource: false,
        generation: true,
        field_selectors: &[],
        columns: &[AGE],
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        status_subresource: true,
        generation: false,
        field_selectors: &["spec.unschedulable"],
        columns: &[
            text("Status", node_status),
            text("Roles", node_roles),
            AGE,
            text("Version", |v| s(v, &["status", "nodeInfo", "kubeletVersion"])),
        ],
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        status_subresource: true,
        generation: false,
        field_selectors: &["status.phase"],
        columns: &[text("Status", |v| s(v, &["status", "phase"])), AGE],
    },
    ResourceType {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        status_subresource: false,
        generation: false,
        field_selectors: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        columns: &[
            text("Last Seen", event_last_seen),
            text("Type", |v| s(v, &["type"])),
            text("Reason", |v| s(v, &["reason"])),
            text("Object", event_object),
            text("Message", |v| s(v, &["message"])),
        ],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        status_subresource: false,
        generation: false,
        field_selectors: &[],
        columns: &[text("Holder", |v| s(v, &["spec", "holderIdentity"])), AGE],
    },
];

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The groups served, in discovery order, each with its one version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The value a field selector compares: a dotted path into the object
/// (missing fields compare as the empty string, booleans as "true"/"false").
pub fn field_value(obj: &Value, field: &str) -> String {
    let mut cur = obj;
    for part in field.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
