//! The Grafana dashboards' queries (`dashboards/*.json`) as a test runs them
//! against a real Prometheus: every `expr` of every panel, with Grafana's
//! variables filled in, and what counts as "returns data". Used on the host
//! (agent/tests/prometheus.rs) and in the guest (`guest-tool dashboards`).

use std::path::Path;

use serde_json::Value;

/// The dashboards this project ships.
pub const FILES: [&str; 2] = ["node.json", "fleet.json"];

/// One panel target.
#[derive(Debug, Clone)]
pub struct Query {
    pub file: String,
    pub title: String,
    pub expr: String,
}

impl Query {
    /// The expression as Grafana sends it: `$__rate_interval` and the
    /// `$node` variable (a regex matcher: `.*` is "All") filled in.
    pub fn promql(&self, rate_interval: &str, node: &str) -> String {
        self.expr
            .replace("$__rate_interval", rate_interval)
            .replace("$node", node)
    }
}

/// Every target of the dashboards in DIR (`FILES`), in panel order.
pub fn queries(dir: &Path) -> Result<Vec<Query>, String> {
    let mut out = Vec::new();
    for file in FILES {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let d: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let panels = d["panels"]
            .as_array()
            .ok_or_else(|| format!("{}: no panels", path.display()))?;
        for p in panels {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .ok_or_else(|| format!("{file} / {title}: a target without expr"))?;
                out.push(Query {
                    file: file.to_string(),
                    title: title.to_string(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Judges Prometheus's answer to an instant query (`/api/v1/query`): the
/// number of series if it holds data, else why not. An empty vector is no
/// data; so is a vector of NaN only (a quantile over a histogram that saw
/// nothing in the window).
pub fn judge(answer: &Value) -> Result<usize, String> {
    if answer["status"] != "success" {
        return Err(format!("does not run: {answer}"));
    }
    let result = answer["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("not a vector: {answer}"))?;
    if result.is_empty() {
        return Err("no data".into());
    }
    if result.iter().all(|r| r["value"][1] == "NaN") {
        return Err(format!("only NaN: {}", Value::Array(result.clone())));
    }
    Ok(result.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_shipped_query_is_found_with_its_panel() {
        let q = queries(&crate::workspace_root().join("dashboards")).unwrap();
        assert!(q.len() > 20, "{q:?}");
        assert!(q.iter().any(|q| q.file == "fleet.json"));
        let node = q.iter().find(|q| q.expr.contains("$node")).unwrap();
        let promql = node.promql("1m", ".*");
        assert!(!promql.contains('$'), "{promql}");
        assert!(promql.contains("node=~\".*\""), "{promql}");
    }

    #[test]
    fn empty_nan_and_errors_are_not_data() {
        let vector = |r: Value| json!({"status": "success", "data": {"resultType": "vector", "result": r}});
        assert_eq!(judge(&vector(json!([{"metric": {}, "value": [1, "0"]}]))), Ok(1));
        assert_eq!(judge(&vector(json!([]))), Err("no data".into()));
        assert!(
            judge(&vector(json!([{"metric": {}, "value": [1, "NaN"]}])))
                .unwrap_err()
                .starts_with("only NaN")
        );
        assert_eq!(
            judge(&vector(
                json!([{"metric": {}, "value": [1, "NaN"]}, {"metric": {"a": "b"}, "value": [1, "2"]}])
            )),
            Ok(2)
        );
        assert!(judge(&json!({"status": "error", "error": "parse error"})).is_err());
    }
}
