//! Label selectors (the grammar of apimachinery's `labels.Parse`) and field
//! selectors (`a=b,c!=d` over the fields a resource supports).

use serde_json::{Map, Value};

use super::resources::{ResourceType, field_value};
use super::validate::{is_label_value, is_qualified_name};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Equals,
    NotEquals,
    In,
    NotIn,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r.op {
            Op::Exists => get(&r.key).is_some(),
            Op::NotExists => get(&r.key).is_none(),
            Op::Equals | Op::In => get(&r.key).is_some_and(|v| r.values.iter().any(|x| x == v)),
            Op::NotEquals | Op::NotIn => get(&r.key).is_none_or(|v| r.values.iter().all(|x| x != v)),
            Op::Gt | Op::Lt => {
                let (Some(v), Ok(bound)) = (
                    get(&r.key).and_then(|v| v.parse::<i64>().ok()),
                    r.values[0].parse::<i64>(),
                ) else {
                    return false;
                };
                if r.op == Op::Gt { v > bound } else { v < bound }
            }
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {part:?}");
    let check_key = |key: &str| -> Result<String, String> {
        if is_qualified_name(key) {
            Ok(key.to_string())
        } else {
            Err(bad("invalid label key"))
        }
    };
    let check_value = |v: &str| -> Result<String, String> {
        if is_label_value(v) {
            Ok(v.to_string())
        } else {
            Err(bad("invalid label value"))
        }
    };

    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement {
            key: check_key(key.trim())?,
            op: Op::NotExists,
            values: vec![],
        });
    }
    for (token, op) in [(" notin ", Op::NotIn), (" in ", Op::In)] {
        if let Some((key, rest)) = part.split_once(token) {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesised set of values"))?;
            let values = inner
                .split(',')
                .map(|v| check_value(v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Requirement {
                key: check_key(key.trim())?,
                op,
                values,
            });
        }
    }
    for (token, op) in [
        ("!=", Op::NotEquals),
        ("==", Op::Equals),
        ("=", Op::Equals),
        (">", Op::Gt),
        ("<", Op::Lt),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            let value = value.trim();
            if matches!(op, Op::Gt | Op::Lt) && value.parse::<i64>().is_err() {
                return Err(bad("for 'Gt', 'Lt' operators, the value must be an integer"));
            }
            return Ok(Requirement {
                key: check_key(key.trim())?,
                op,
                values: vec![check_value(value)?],
            });
        }
    }
    Ok(Requirement {
        key: check_key(part)?,
        op: Op::Exists,
        values: vec![],
    })
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and checks each field against what the resource supports; the
    /// error is the real server's message.
    pub fn parse(text: &str, resource: &ResourceType) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{text}'; can't understand '{part}'"));
            };
            let field = field.trim();
            let supported = field == "metadata.name"
                || (field == "metadata.namespace" && resource.namespaced)
                || resource.field_selectors.contains(&field);
            if !supported {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, equal, value)| (field_value(obj, field) == *value) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors_follow_apimachinery() {
        let l = labels(json!({"driver": "mock-accel.example.com", "tier": "a", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("driver=mock-accel.example.com"));
        assert!(m("driver==mock-accel.example.com,tier"));
        assert!(!m("driver!=mock-accel.example.com"));
        assert!(m("tier in (a,b)"));
        assert!(!m("tier notin (a,b)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("missing!=x"));
        assert!(m("n>4") && !m("n<5"));
        assert!(LabelSelector::parse("tier in a").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("k=has space").is_err());
    }

    #[test]
    fn field_selectors_only_on_supported_fields() {
        let slices = &super::super::resources::RESOURCES[0];
        let obj = json!({"metadata": {"name": "s1"}, "spec": {"nodeName": "n1", "driver": "d"}});
        assert!(FieldSelector::parse("spec.nodeName=n1", slices).unwrap().matches(&obj));
        assert!(
            FieldSelector::parse("spec.nodeName!=n1,metadata.name=s1", slices)
                .map(|f| !f.matches(&obj))
                .unwrap()
        );
        assert_eq!(
            FieldSelector::parse("spec.pool.name=x", slices).unwrap_err(),
            "field label not supported: spec.pool.name"
        );
    }
}
