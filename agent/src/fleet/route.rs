//! A shared watch's events, per node: for each served node, what a watch
//! of its own would have given it — its objects' changes, a relist as its
//! whole state, an object leaving it as its deletion. Pure (no I/O); the
//! runner sends what [`Router::route`] returns to the nodes' pools.

use std::collections::{BTreeMap, BTreeSet};

use kube::Resource;
use kube::runtime::watcher;

/// Which nodes an object concerns (a slice: its node; a claim: the nodes
/// its allocation names).
pub type NodesOf<K> = Box<dyn Fn(&K) -> BTreeSet<String> + Send + Sync>;

pub struct Router<K> {
    nodes_of: NodesOf<K>,
    /// namespace/name → the object and the nodes it is on.
    objects: BTreeMap<String, (K, BTreeSet<String>)>,
    relist: Option<BTreeMap<String, (K, BTreeSet<String>)>>,
    /// The first list is in: a pool started now gets its state at once.
    pub synced: bool,
}

fn key<K: Resource>(k: &K) -> String {
    let m = k.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

impl<K: Resource + Clone> Router<K> {
    pub fn new(nodes_of: NodesOf<K>) -> Router<K> {
        Router {
            nodes_of,
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }

    /// A node's whole state, as its watch's relist: Init, its objects,
    /// InitDone.
    pub fn snapshot(&self, node: &str) -> Vec<watcher::Event<K>> {
        let mut out = vec![watcher::Event::Init];
        out.extend(self.on(node).into_iter().map(watcher::Event::InitApply));
        out.push(watcher::Event::InitDone);
        out
    }

    /// The objects on `node` now.
    pub fn on(&self, node: &str) -> Vec<K> {
        self.objects
            .values()
            .filter(|(_, nodes)| nodes.contains(node))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// What each node hears of `ev`: a relist ends as the whole state of
    /// every node in `served`; a change goes to the nodes the object is on
    /// now (Apply) and to those it left (Delete).
    pub fn route<'a>(
        &mut self,
        ev: watcher::Event<K>,
        served: impl Iterator<Item = &'a String>,
    ) -> Vec<(String, watcher::Event<K>)> {
        let mut out = Vec::new();
        match ev {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(k) => {
                let nodes = (self.nodes_of)(&k);
                if let Some(r) = self.relist.as_mut()
                    && !nodes.is_empty()
                {
                    r.insert(key(&k), (k, nodes));
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.objects = r;
                }
                self.synced = true;
                for node in served {
                    out.extend(self.snapshot(node).into_iter().map(|e| (node.clone(), e)));
                }
            }
            watcher::Event::Apply(k) => {
                let id = key(&k);
                let now = (self.nodes_of)(&k);
                let before = self.objects.remove(&id).map(|(_, n)| n).unwrap_or_default();
                for n in before.difference(&now) {
                    out.push((n.clone(), watcher::Event::Delete(k.clone())));
                }
                for n in &now {
                    out.push((n.clone(), watcher::Event::Apply(k.clone())));
                }
                if !now.is_empty() {
                    self.objects.insert(id, (k, now));
                }
            }
            watcher::Event::Delete(k) => {
                let before = self.objects.remove(&key(&k)).map(|(_, n)| n).unwrap_or_default();
                for n in before {
                    out.push((n, watcher::Event::Delete(k.clone())));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// An object on the nodes its data names (space-separated).
    fn obj(name: &str, nodes: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "data": {"nodes": nodes},
        }))
        .unwrap()
    }

    fn router() -> Router<ConfigMap> {
        Router::new(Box::new(|c: &ConfigMap| {
            c.data
                .as_ref()
                .and_then(|d| d.get("nodes"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        }))
    }

    fn said(out: &[(String, watcher::Event<ConfigMap>)]) -> Vec<String> {
        out.iter()
            .map(|(n, e)| {
                let what = match e {
                    watcher::Event::Init => "Init".to_string(),
                    watcher::Event::InitApply(c) => format!("InitApply {}", c.metadata.name.as_deref().unwrap()),
                    watcher::Event::InitDone => "InitDone".to_string(),
                    watcher::Event::Apply(c) => format!("Apply {}", c.metadata.name.as_deref().unwrap()),
                    watcher::Event::Delete(c) => format!("Delete {}", c.metadata.name.as_deref().unwrap()),
                };
                format!("{n}: {what}")
            })
            .collect()
    }

    #[test]
    fn each_node_hears_what_its_own_watch_would() {
        let mut r = router();
        let served: Vec<String> = vec!["a".into(), "b".into()];
        assert!(r.route(watcher::Event::Init, served.iter()).is_empty());
        for o in [obj("x", "a"), obj("y", "b"), obj("z", ""), obj("w", "c")] {
            assert!(r.route(watcher::Event::InitApply(o), served.iter()).is_empty());
        }
        assert!(!r.synced);
        // The relist's end: each served node's whole state.
        assert_eq!(
            said(&r.route(watcher::Event::InitDone, served.iter())),
            [
                "a: Init",
                "a: InitApply x",
                "a: InitDone",
                "b: Init",
                "b: InitApply y",
                "b: InitDone"
            ]
        );
        assert!(r.synced);
        // A node not served (c) keeps its objects for when it is.
        assert_eq!(r.snapshot("c").len(), 3);
        // A change on a node; an object moving from a to b: a hears it go.
        assert_eq!(
            said(&r.route(watcher::Event::Apply(obj("x", "a")), served.iter())),
            ["a: Apply x"]
        );
        assert_eq!(
            said(&r.route(watcher::Event::Apply(obj("x", "b")), served.iter())),
            ["a: Delete x", "b: Apply x"]
        );
        // On two nodes, then on none: both hear it go; nobody hears of it again.
        assert_eq!(
            said(&r.route(watcher::Event::Apply(obj("y", "a b")), served.iter())),
            ["a: Apply y", "b: Apply y"]
        );
        assert_eq!(
            said(&r.route(watcher::Event::Apply(obj("y", "")), served.iter())),
            ["a: Delete y", "b: Delete y"]
        );
        assert!(r.route(watcher::Event::Delete(obj("y", "")), served.iter()).is_empty());
        assert_eq!(
            said(&r.route(watcher::Event::Delete(obj("x", "b")), served.iter())),
            ["b: Delete x"]
        );
        assert!(r.on("a").is_empty() && r.on("b").is_empty());
        assert_eq!(r.on("c").len(), 1);
    }
}
