//! Validation by the rules of the real API server (apimachinery's field
//! errors, `resource.k8s.io/v1` validation), with the same field paths,
//! reasons and messages, so a client sees the 422 a cluster would send.

use serde_json::{Map, Value, json};

/// One field error (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

#[derive(Default)]
pub struct Errors(pub Vec<Cause>);

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl Errors {
    fn push(&mut self, reason: &'static str, field: &str, message: String) {
        self.0.push(Cause {
            reason,
            field: field.to_string(),
            message,
        });
    }
    pub fn required(&mut self, field: &str, detail: &str) {
        let msg = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.push("FieldValueRequired", field, msg);
    }
    pub fn invalid(&mut self, field: &str, value: &Value, detail: &str) {
        self.push(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {}: {detail}", show(value)),
        );
    }
    pub fn too_many(&mut self, field: &str, actual: usize, max: usize) {
        self.push(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} items"),
        );
    }
    pub fn too_long(&mut self, field: &str, max: usize) {
        self.push(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        );
    }
    pub fn duplicate(&mut self, field: &str, value: &Value) {
        self.push(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {}", show(value)),
        );
    }
    pub fn not_supported(&mut self, field: &str, value: &Value, valid: &[&str]) {
        let list: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
        self.push(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        );
    }
    pub fn forbidden(&mut self, field: &str, detail: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {detail}"));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---- name rules (apimachinery/pkg/util/validation) ----

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const C_IDENTIFIER_MSG: &str = "a valid C identifier must start with alphabetic character or '_', followed by a string of alphanumeric characters or '_' (e.g. 'my_name',  or 'MY_NAME',  or 'MyName', regex used for validation is '[A-Za-z_][A-Za-z0-9_]*')";

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub fn is_c_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// `[prefix/]name`, name 1-63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let b = name.as_bytes();
    let name_ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    name_ok && prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p))
}

/// Empty, or a qualified name's name part.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || (is_qualified_name(s) && !s.contains('/'))
}

/// Semantic version 2.0.0 (`MAJOR.MINOR.PATCH[-pre][+build]`).
pub fn is_semver(s: &str) -> bool {
    let (core, build) = match s.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let numeric = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
    let ident = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(|p| {
            p.split('.')
                .all(|i| ident(i) && (!i.bytes().all(|c| c.is_ascii_digit()) || numeric(i)))
        })
        && build.is_none_or(|b| b.split('.').all(ident))
}

/// A `resource.Quantity` string ("16Gi", "100m", "1e3", "42").
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .bytes()
            .all(|c| c.is_ascii_digit())
        && !suffix[1..].trim_start_matches(['+', '-']).is_empty());
    number_ok && suffix_ok
}

// ---- metadata ----

/// Name rules by kind: namespaces are DNS labels, the rest DNS subdomains.
pub fn validate_meta(kind: &str, obj: &Value, namespaced: bool, errs: &mut Errors) {
    let meta = &obj["metadata"];
    match meta["name"].as_str() {
        None | Some("") => errs.required("metadata.name", "name or generateName is required"),
        Some(name) => {
            let ok = if kind == "Namespace" {
                is_dns_label(name)
            } else {
                is_dns_subdomain(name)
            };
            if !ok {
                let msg = if kind == "Namespace" {
                    DNS1123_LABEL_MSG
                } else {
                    DNS1123_SUBDOMAIN_MSG
                };
                errs.invalid("metadata.name", &meta["name"], msg);
            }
        }
    }
    if namespaced && let Some(ns) = meta["namespace"].as_str().filter(|ns| !is_dns_label(ns)) {
        errs.invalid("metadata.namespace", &Value::String(ns.into()), DNS1123_LABEL_MSG);
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            let field = "metadata.labels";
            if !is_qualified_name(k) {
                errs.invalid(field, &Value::String(k.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
            }
            match v.as_str() {
                Some(s) if is_label_value(s) => {}
                _ => errs.invalid(field, v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            }
        }
    }
    if let Some(ann) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                errs.invalid("metadata.annotations", &Value::String(k.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
            }
        }
        if total > 256 * 1024 {
            errs.too_long("metadata.annotations", 256 * 1024);
        }
    }
}

// ---- resource.k8s.io/v1 ----

pub const MAX_DEVICES: usize = 128;
pub const MAX_DEVICES_WITH_TAINTS_OR_COUNTERS: usize = 64;
pub const MAX_ATTRIBUTES_AND_CAPACITIES: usize = 32;
pub const MAX_ATTRIBUTE_STRING: usize = 64;
pub const MAX_SELECTORS: usize = 32;
pub const MAX_CONFIGS: usize = 32;
pub const MAX_REQUESTS: usize = 32;
pub const MAX_CEL_LENGTH: usize = 10 * 1024;
pub const MAX_OPAQUE_PARAMETERS: usize = 10 * 1024;
pub const MAX_RESULTS: usize = 32;
pub const MAX_RESERVED_FOR: usize = 256;

fn validate_driver_name(field: &str, value: &Value, errs: &mut Errors) {
    match value.as_str() {
        None | Some("") => errs.required(field, ""),
        Some(s) if s.len() > 63 => errs.too_long(field, 63),
        Some(s) if !is_dns_subdomain(s) => errs.invalid(field, value, DNS1123_SUBDOMAIN_MSG),
        _ => {}
    }
}

fn validate_pool_name(field: &str, value: &Value, errs: &mut Errors) {
    match value.as_str() {
        None | Some("") => errs.required(field, ""),
        Some(s) if s.len() > 253 => errs.too_long(field, 253),
        Some(s) => {
            if !s.split('/').all(is_dns_subdomain) {
                errs.invalid(
                    field,
                    value,
                    "a valid pool name must consist of one or more DNS sub-domains separated by slashes",
                );
            }
        }
    }
}

/// An attribute or capacity name: a C identifier (max 32), or
/// `<DNS subdomain (max 63)>/<C identifier (max 32)>`.
fn validate_device_qualified_name(field: &str, name: &str, errs: &mut Errors) {
    let (domain, id) = match name.split_once('/') {
        Some((d, i)) => (Some(d), i),
        None => (None, name),
    };
    let v = Value::String(name.to_string());
    if let Some(domain) = domain {
        if domain.is_empty() {
            errs.required(field, "the domain must not be empty");
        } else if domain.len() > 63 {
            errs.too_long(field, 63);
        } else if !is_dns_subdomain(domain) {
            errs.invalid(field, &v, DNS1123_SUBDOMAIN_MSG);
        }
    }
    if id.is_empty() {
        errs.required(field, "the name must not be empty");
    } else if id.len() > 32 {
        errs.too_long(field, 32);
    } else if !is_c_identifier(id) {
        errs.invalid(field, &v, C_IDENTIFIER_MSG);
    }
}

fn validate_attribute(field: &str, attr: &Value, errs: &mut Errors) {
    let set: Vec<&str> = ["int", "bool", "string", "version"]
        .into_iter()
        .filter(|k| attr.get(k).is_some_and(|v| !v.is_null()))
        .collect();
    match set.len() {
        0 => errs.required(field, "exactly one value must be specified"),
        1 => {}
        _ => errs.invalid(field, attr, "exactly one value must be specified"),
    }
    if let Some(v) = attr.get("int").filter(|v| !v.is_null() && !v.is_i64()) {
        errs.invalid(&format!("{field}.int"), v, "must be an integer");
    }
    if let Some(v) = attr.get("bool").filter(|v| !v.is_null() && !v.is_boolean()) {
        errs.invalid(&format!("{field}.bool"), v, "must be a boolean");
    }
    if let Some(v) = attr.get("string").filter(|v| !v.is_null()) {
        match v.as_str() {
            Some(s) if s.len() > MAX_ATTRIBUTE_STRING => {
                errs.too_long(&format!("{field}.string"), MAX_ATTRIBUTE_STRING)
            }
            Some(_) => {}
            None => errs.invalid(&format!("{field}.string"), v, "must be a string"),
        }
    }
    if let Some(v) = attr.get("version").filter(|v| !v.is_null()) {
        match v.as_str() {
            Some(s) if s.len() > MAX_ATTRIBUTE_STRING => {
                errs.too_long(&format!("{field}.version"), MAX_ATTRIBUTE_STRING)
            }
            Some(s) if is_semver(s) => {}
            _ => errs.invalid(
                &format!("{field}.version"),
                v,
                "must be a string compatible with semver.org spec 2.0.0",
            ),
        }
    }
}

fn validate_node_selector(field: &str, sel: &Value, errs: &mut Errors) {
    match sel["nodeSelectorTerms"].as_array() {
        Some(terms) if !terms.is_empty() => {
            for (i, term) in terms.iter().enumerate() {
                for key in ["matchExpressions", "matchFields"] {
                    for (j, req) in term[key].as_array().into_iter().flatten().enumerate() {
                        let f = format!("{field}.nodeSelectorTerms[{i}].{key}[{j}]");
                        if req["key"].as_str().is_none_or(str::is_empty) {
                            errs.required(&format!("{f}.key"), "");
                        }
                        let ops = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
                        if !req["operator"].as_str().is_some_and(|o| ops.contains(&o)) {
                            errs.not_supported(&format!("{f}.operator"), &req["operator"], &ops);
                        }
                    }
                }
            }
        }
        _ => errs.required(
            &format!("{field}.nodeSelectorTerms"),
            "must have at least one node selector term",
        ),
    }
}

/// Exactly one of the node selection fields of `obj` (a slice spec or, with
/// per-device node selection, a device).
fn node_selection(field: &str, obj: &Value, names: &[&str], errs: &mut Errors) {
    let set: Vec<&str> = names
        .iter()
        .copied()
        .filter(|k| match &obj[k] {
            Value::String(s) => !s.is_empty(),
            Value::Bool(b) => *b,
            Value::Object(_) => true,
            _ => false,
        })
        .collect();
    let wanted = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    match set.len() {
        0 => errs.required(field, &format!("exactly one of {wanted} is required")),
        1 => {}
        _ => errs.invalid(
            field,
            &Value::String(set.join(", ")),
            &format!("exactly one of {wanted} is required"),
        ),
    }
    if let Some(node) = obj["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty() && !is_dns_subdomain(n))
    {
        errs.invalid(
            &format!("{field}.nodeName"),
            &Value::String(node.into()),
            DNS1123_SUBDOMAIN_MSG,
        );
    }
    if obj["nodeSelector"].is_object() {
        validate_node_selector(&format!("{field}.nodeSelector"), &obj["nodeSelector"], errs);
    }
}

pub fn validate_resource_slice(obj: &Value, errs: &mut Errors) {
    let spec = &obj["spec"];
    if !spec.is_object() {
        errs.required("spec", "");
        return;
    }
    validate_driver_name("spec.driver", &spec["driver"], errs);
    let pool = &spec["pool"];
    validate_pool_name("spec.pool.name", &pool["name"], errs);
    if pool["generation"].as_i64().is_some_and(|g| g < 0) {
        errs.invalid(
            "spec.pool.generation",
            &pool["generation"],
            "must be greater than or equal to 0",
        );
    }
    if pool["resourceSliceCount"].as_i64().is_none_or(|c| c <= 0) {
        errs.invalid(
            "spec.pool.resourceSliceCount",
            &pool["resourceSliceCount"],
            "must be greater than zero",
        );
    }
    let per_device = spec["perDeviceNodeSelection"] == true;
    node_selection(
        "spec",
        spec,
        &["nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection"],
        errs,
    );

    let devices = spec["devices"].as_array().map(Vec::as_slice).unwrap_or_default();
    let uses_taints_or_counters = spec["sharedCounters"].as_array().is_some_and(|c| !c.is_empty())
        || devices.iter().any(|d| {
            d["taints"].as_array().is_some_and(|t| !t.is_empty())
                || d["consumesCounters"].as_array().is_some_and(|c| !c.is_empty())
        });
    let max = if uses_taints_or_counters {
        MAX_DEVICES_WITH_TAINTS_OR_COUNTERS
    } else {
        MAX_DEVICES
    };
    if devices.len() > max {
        errs.too_many("spec.devices", devices.len(), max);
    }
    let mut names = std::collections::HashSet::new();
    for (i, dev) in devices.iter().enumerate() {
        let f = format!("spec.devices[{i}]");
        match dev["name"].as_str() {
            None | Some("") => errs.required(&format!("{f}.name"), ""),
            Some(n) if !is_dns_label(n) => errs.invalid(&format!("{f}.name"), &dev["name"], DNS1123_LABEL_MSG),
            Some(n) => {
                // The real server names the device, not its name field
                // (found by the differential test against it).
                if !names.insert(n.to_string()) {
                    errs.duplicate(&f, &dev["name"]);
                }
            }
        }
        let attrs = dev["attributes"].as_object();
        let caps = dev["capacity"].as_object();
        let combined = attrs.map_or(0, Map::len) + caps.map_or(0, Map::len);
        if combined > MAX_ATTRIBUTES_AND_CAPACITIES {
            errs.invalid(
                &f,
                &Value::from(combined),
                &format!(
                    "the total number of attributes and capacities must not exceed {MAX_ATTRIBUTES_AND_CAPACITIES}"
                ),
            );
        }
        for (name, attr) in attrs.into_iter().flatten() {
            let af = format!("{f}.attributes[{name}]");
            validate_device_qualified_name(&af, name, errs);
            validate_attribute(&af, attr, errs);
        }
        for (name, cap) in caps.into_iter().flatten() {
            let cf = format!("{f}.capacity[{name}]");
            validate_device_qualified_name(&cf, name, errs);
            match cap["value"].as_str() {
                Some(q) if is_quantity(q) => {}
                _ => errs.invalid(
                    &format!("{cf}.value"),
                    &cap["value"],
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                ),
            }
        }
        for (j, taint) in dev["taints"].as_array().into_iter().flatten().enumerate() {
            let tf = format!("{f}.taints[{j}]");
            if !taint["key"].as_str().is_some_and(is_qualified_name) {
                errs.invalid(&format!("{tf}.key"), &taint["key"], "must be a qualified name");
            }
            let effects = ["NoExecute", "NoSchedule", "None"];
            if !taint["effect"].as_str().is_some_and(|e| effects.contains(&e)) {
                errs.not_supported(&format!("{tf}.effect"), &taint["effect"], &effects);
            }
        }
        let device_node_fields = ["nodeName", "nodeSelector", "allNodes"];
        if per_device {
            node_selection(&f, dev, &device_node_fields, errs);
        } else {
            for k in device_node_fields {
                if !dev[k].is_null() && dev[k] != false && dev[k] != "" {
                    errs.forbidden(
                        &format!("{f}.{k}"),
                        "`perDeviceNodeSelection` must be set when any device sets node selection",
                    );
                }
            }
        }
    }
}

fn validate_cel(field: &str, sel: &Value, errs: &mut Errors) {
    let cel = &sel["cel"];
    if !cel.is_object() {
        errs.required(&format!("{field}.cel"), "");
        return;
    }
    let f = format!("{field}.cel.expression");
    match cel["expression"].as_str() {
        None | Some("") => errs.required(&f, ""),
        Some(e) if e.len() > MAX_CEL_LENGTH => errs.too_long(&f, MAX_CEL_LENGTH),
        Some(e) => {
            if let Err(err) = cel::Program::compile(e) {
                let first = err.to_string().lines().next().unwrap_or("").to_string();
                errs.invalid(&f, &cel["expression"], &format!("compilation failed: {first}"));
            }
        }
    }
}

fn validate_selectors(field: &str, selectors: &Value, errs: &mut Errors) {
    let list = selectors.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.len() > MAX_SELECTORS {
        errs.too_many(field, list.len(), MAX_SELECTORS);
    }
    for (i, sel) in list.iter().enumerate() {
        validate_cel(&format!("{field}[{i}]"), sel, errs);
    }
}

fn validate_configs(field: &str, configs: &Value, errs: &mut Errors) {
    let list = configs.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.len() > MAX_CONFIGS {
        errs.too_many(field, list.len(), MAX_CONFIGS);
    }
    for (i, cfg) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let opaque = &cfg["opaque"];
        if !opaque.is_object() {
            errs.required(&format!("{f}.opaque"), "");
            continue;
        }
        validate_driver_name(&format!("{f}.opaque.driver"), &opaque["driver"], errs);
        let params = &opaque["parameters"];
        if !params.is_object() {
            errs.invalid(
                &format!("{f}.opaque.parameters"),
                params,
                "parameters must be a valid JSON object",
            );
        } else if params.to_string().len() > MAX_OPAQUE_PARAMETERS {
            errs.too_long(&format!("{f}.opaque.parameters"), MAX_OPAQUE_PARAMETERS);
        }
    }
}

pub fn validate_device_class(obj: &Value, errs: &mut Errors) {
    let spec = &obj["spec"];
    validate_selectors("spec.selectors", &spec["selectors"], errs);
    validate_configs("spec.config", &spec["config"], errs);
}

pub fn validate_resource_claim(obj: &Value, old: Option<&Value>, errs: &mut Errors) {
    let spec = &obj["spec"];
    if let Some(old) = old
        && old["spec"] != *spec
    {
        errs.invalid("spec", spec, "field is immutable");
    }
    let devices = &spec["devices"];
    let requests = devices["requests"].as_array().map(Vec::as_slice).unwrap_or_default();
    if requests.len() > MAX_REQUESTS {
        errs.too_many("spec.devices.requests", requests.len(), MAX_REQUESTS);
    }
    let mut names = std::collections::HashSet::new();
    for (i, req) in requests.iter().enumerate() {
        let f = format!("spec.devices.requests[{i}]");
        match req["name"].as_str() {
            Some(n) if is_dns_label(n) => {
                if !names.insert(n.to_string()) {
                    errs.duplicate(&f, &req["name"]);
                }
            }
            None | Some("") => errs.required(&format!("{f}.name"), ""),
            Some(_) => errs.invalid(&format!("{f}.name"), &req["name"], DNS1123_LABEL_MSG),
        }
        match (req["exactly"].is_object(), req["firstAvailable"].is_array()) {
            (true, false) => validate_exact_request(&format!("{f}.exactly"), &req["exactly"], errs),
            (false, true) => {
                let subs = req["firstAvailable"].as_array().unwrap();
                if subs.is_empty() || subs.len() > 8 {
                    errs.invalid(
                        &format!("{f}.firstAvailable"),
                        &Value::from(subs.len()),
                        "must have between 1 and 8 subrequests",
                    );
                }
                for (j, sub) in subs.iter().enumerate() {
                    let sf = format!("{f}.firstAvailable[{j}]");
                    if !sub["name"].as_str().is_some_and(is_dns_label) {
                        errs.invalid(&format!("{sf}.name"), &sub["name"], DNS1123_LABEL_MSG);
                    }
                    validate_exact_request(&sf, sub, errs);
                }
            }
            _ => errs.required(&f, "exactly one of `exactly` or `firstAvailable` is required"),
        }
    }
    validate_configs("spec.devices.config", &devices["config"], errs);
}

fn validate_exact_request(field: &str, req: &Value, errs: &mut Errors) {
    match req["deviceClassName"].as_str() {
        None | Some("") => errs.required(&format!("{field}.deviceClassName"), ""),
        Some(c) if !is_dns_subdomain(c) => errs.invalid(
            &format!("{field}.deviceClassName"),
            &req["deviceClassName"],
            DNS1123_SUBDOMAIN_MSG,
        ),
        _ => {}
    }
    let mode = req["allocationMode"].as_str().unwrap_or("ExactCount");
    match mode {
        "ExactCount" => {
            if req.get("count").is_some_and(|c| c.as_i64().is_none_or(|n| n <= 0)) {
                errs.invalid(&format!("{field}.count"), &req["count"], "must be greater than zero");
            }
        }
        "All" => {
            if req.get("count").is_some_and(|c| !c.is_null()) {
                errs.invalid(
                    &format!("{field}.count"),
                    &req["count"],
                    "must not be specified when allocationMode is 'All'",
                );
            }
        }
        _ => errs.not_supported(
            &format!("{field}.allocationMode"),
            &req["allocationMode"],
            &["All", "ExactCount"],
        ),
    }
    validate_selectors(&format!("{field}.selectors"), &req["selectors"], errs);
}

/// The status of a claim, on the status subresource.
pub fn validate_resource_claim_status(obj: &Value, old: &Value, errs: &mut Errors) {
    let status = &obj["status"];
    let old_alloc = &old["status"]["allocation"];
    let alloc = &status["allocation"];
    if old_alloc.is_object() && alloc.is_object() && old_alloc != alloc {
        errs.invalid("status.allocation", alloc, "field is immutable");
    }
    let request_names: Vec<&str> = obj["spec"]["devices"]["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    let results = alloc["devices"]["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if results.len() > MAX_RESULTS {
        errs.too_many("status.allocation.devices.results", results.len(), MAX_RESULTS);
    }
    for (i, r) in results.iter().enumerate() {
        let f = format!("status.allocation.devices.results[{i}]");
        let request = r["request"].as_str().unwrap_or("");
        let base = request.split('/').next().unwrap_or("");
        if !request_names.contains(&base) {
            errs.invalid(
                &format!("{f}.request"),
                &r["request"],
                "must be the name of a request in the claim or the name of a request and a subrequest separated by '/'",
            );
        }
        validate_driver_name(&format!("{f}.driver"), &r["driver"], errs);
        validate_pool_name(&format!("{f}.pool"), &r["pool"], errs);
        if !r["device"].as_str().is_some_and(is_dns_label) {
            errs.invalid(&format!("{f}.device"), &r["device"], DNS1123_LABEL_MSG);
        }
    }
    let reserved = status["reservedFor"].as_array().map(Vec::as_slice).unwrap_or_default();
    if reserved.len() > MAX_RESERVED_FOR {
        errs.too_many("status.reservedFor", reserved.len(), MAX_RESERVED_FOR);
    }
    validate_device_status(status, errs);
    if !reserved.is_empty() && !alloc.is_object() {
        errs.forbidden("status.reservedFor", "may not be specified when `allocated` is not set");
    }
    for (i, c) in reserved.iter().enumerate() {
        for k in ["resource", "name", "uid"] {
            if c[k].as_str().is_none_or(str::is_empty) {
                errs.required(&format!("status.reservedFor[{i}].{k}"), "");
            }
        }
    }
}

/// `status.devices` (KEP-4817 device status): each entry names a device
/// of the allocation, once; conditions as metav1.Condition.
fn validate_device_status(status: &Value, errs: &mut Errors) {
    let entries = status["devices"].as_array().map(Vec::as_slice).unwrap_or_default();
    let allocated: Vec<(&str, &str, &str)> = status["allocation"]["devices"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["driver"].as_str().unwrap_or(""),
                r["pool"].as_str().unwrap_or(""),
                r["device"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let mut seen = Vec::new();
    for (i, d) in entries.iter().enumerate() {
        let f = format!("status.devices[{i}]");
        let key = (
            d["driver"].as_str().unwrap_or(""),
            d["pool"].as_str().unwrap_or(""),
            d["device"].as_str().unwrap_or(""),
        );
        if seen.contains(&key) {
            errs.duplicate(&f, &json!({"driver": key.0, "pool": key.1, "device": key.2}));
        }
        seen.push(key);
        if !allocated.contains(&key) {
            errs.invalid(
                &f,
                &json!({"driver": key.0, "pool": key.1, "device": key.2}),
                "must be an allocated device in the claim",
            );
        }
        let conditions = d["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
        if conditions.len() > 8 {
            errs.too_many(&format!("{f}.conditions"), conditions.len(), 8);
        }
        for (j, c) in conditions.iter().enumerate() {
            let cf = format!("{f}.conditions[{j}]");
            for k in ["type", "reason", "lastTransitionTime"] {
                if c[k].as_str().is_none_or(str::is_empty) {
                    errs.required(&format!("{cf}.{k}"), "");
                }
            }
            if !["True", "False", "Unknown"].contains(&c["status"].as_str().unwrap_or("")) {
                errs.invalid(
                    &format!("{cf}.status"),
                    &c["status"],
                    "supported values: \"False\", \"True\", \"Unknown\"",
                );
            }
        }
    }
}

pub fn validate_lease(obj: &Value, errs: &mut Errors) {
    let d = &obj["spec"]["leaseDurationSeconds"];
    if !d.is_null() && d.as_i64().is_none_or(|n| n <= 0) {
        errs.invalid("spec.leaseDurationSeconds", d, "must be greater than 0");
    }
}

/// Every rule for an object of `kind` (and its previous state on update).
pub fn validate(kind: &str, namespaced: bool, obj: &Value, old: Option<&Value>) -> Errors {
    let mut errs = Errors::default();
    validate_meta(kind, obj, namespaced, &mut errs);
    match kind {
        "ResourceSlice" => validate_resource_slice(obj, &mut errs),
        "DeviceClass" => validate_device_class(obj, &mut errs),
        "ResourceClaim" => validate_resource_claim(obj, old, &mut errs),
        "Lease" => validate_lease(obj, &mut errs),
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns_label("mock0") && !is_dns_label("Mock0") && !is_dns_label("-a") && !is_dns_label(""));
        assert!(is_dns_subdomain("mock-accel.example.com") && !is_dns_subdomain("a..b"));
        assert!(is_c_identifier("pciAddress") && !is_c_identifier("pci-address") && !is_c_identifier("1a"));
        assert!(is_qualified_name("resource.kubernetes.io/pcieRoot") && !is_qualified_name("/x"));
        assert!(is_semver("1.4.2") && is_semver("1.0.0-rc.1+b.5") && !is_semver("1.4") && !is_semver("01.2.3"));
        assert!(is_quantity("16Gi") && is_quantity("100m") && is_quantity("1e3") && is_quantity("17179869184"));
        assert!(!is_quantity("16GB") && !is_quantity("") && !is_quantity("Gi"));
    }

    fn slice(devices: Vec<Value>) -> Value {
        json!({"metadata": {"name": "n1-mock"}, "spec": {
            "driver": "mock-accel.example.com", "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
            "devices": devices}})
    }

    fn causes(v: &Value) -> Vec<(String, String)> {
        validate("ResourceSlice", false, v, None)
            .0
            .into_iter()
            .map(|c| (c.field, c.message))
            .collect()
    }

    #[test]
    fn a_good_slice_passes() {
        let dev = json!({"name": "mock0", "attributes": {"uuid": {"string": "x"}, "fw": {"version": "1.4.2"},
            "resource.kubernetes.io/pcieRoot": {"string": "pci0000:1a"}}, "capacity": {"memory": {"value": "16Gi"}}});
        assert_eq!(causes(&slice(vec![dev])), vec![]);
    }

    #[test]
    fn slice_rules() {
        let many: Vec<Value> = (0..129).map(|i| json!({"name": format!("d{i}")})).collect();
        assert_eq!(
            causes(&slice(many)),
            vec![(
                "spec.devices".into(),
                "Too many: 129: must have at most 128 items".into()
            )]
        );

        let mut two = slice(vec![]);
        two["spec"]["allNodes"] = json!(true);
        assert_eq!(causes(&two)[0].0, "spec");
        assert!(
            causes(&two)[0].1.contains("exactly one of `nodeName`"),
            "{:?}",
            causes(&two)
        );

        let bad = slice(vec![
            json!({"name": "d0", "attributes": {"bad-name": {"string": "x"}}}),
            json!({"name": "d0", "attributes": {"x": {"string": "x", "int": 1}}}),
        ]);
        let c = causes(&bad);
        assert!(
            c.iter()
                .any(|(f, m)| f == "spec.devices[0].attributes[bad-name]" && m.contains("C identifier")),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|(f, m)| f == "spec.devices[1]" && m.starts_with("Duplicate value")),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|(f, m)| f == "spec.devices[1].attributes[x]" && m.contains("exactly one value")),
            "{c:?}"
        );

        let long = slice(vec![
            json!({"name": "d0", "attributes": {"s": {"string": "x".repeat(65)}}}),
        ]);
        assert_eq!(
            causes(&long),
            vec![(
                "spec.devices[0].attributes[s].string".into(),
                "Too long: may not be more than 64 bytes".into()
            )]
        );
    }

    #[test]
    fn device_class_cel_must_compile() {
        let good = json!({"metadata": {"name": "c"}, "spec": {"selectors": [{"cel": {"expression": "device.driver == 'x'"}}]}});
        assert!(validate("DeviceClass", false, &good, None).is_empty());
        let bad =
            json!({"metadata": {"name": "c"}, "spec": {"selectors": [{"cel": {"expression": "device.driver == "}}]}});
        let errs = validate("DeviceClass", false, &bad, None);
        assert_eq!(errs.0[0].field, "spec.selectors[0].cel.expression");
        assert!(errs.0[0].message.contains("compilation failed"), "{:?}", errs.0);
    }
}
