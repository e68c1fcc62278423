//! What the API holds of our slices and who owns them, as the watches show
//! it and our own writes correct it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::ResourceExt;
use kube::runtime::watcher;
use tracing::{info, warn};

pub(super) fn rv(s: &ResourceSlice) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// This node's Node uid (the slices' owner), as its watch shows it: a Node
/// deleted and created again has a new one, and slices owned by the old
/// one are garbage to the collector and to the controller.
#[derive(Default)]
pub(super) struct NodeUid {
    pub(super) uid: Option<String>,
    relisted: Option<Option<String>>,
}

impl NodeUid {
    /// Applies a watch event; says whether the uid changed.
    pub(super) fn apply(&mut self, node: &str, event: watcher::Event<Node>) -> bool {
        let before = self.uid.clone();
        match event {
            watcher::Event::Init => self.relisted = Some(None),
            watcher::Event::InitApply(n) => {
                if let Some(r) = self.relisted.as_mut() {
                    *r = n.uid();
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relisted.take() {
                    self.uid = r;
                }
            }
            watcher::Event::Apply(n) => self.uid = n.uid(),
            watcher::Event::Delete(_) => self.uid = None,
        }
        if self.uid == before {
            return false;
        }
        match (&before, &self.uid) {
            (None, Some(uid)) => info!(node, %uid, "this node's Node object is there"),
            (Some(old), Some(uid)) => {
                warn!(node, %old, %uid, "this node's Node object was deleted and created again: our slices move to the new one")
            }
            (Some(_), None) => {
                warn!(
                    node,
                    "this node's Node object is gone: nothing is published until it is back"
                )
            }
            (None, None) => {}
        }
        true
    }
}

/// What the API holds of our slices: the watch's view, corrected by our
/// own writes the watch has not shown yet.
#[derive(Default)]
pub(super) struct View {
    pub(super) watched: BTreeMap<String, ResourceSlice>,
    relist: Option<BTreeMap<String, ResourceSlice>>,
    pub(super) written: BTreeMap<String, ResourceSlice>,
    /// Deleted by us, with the delete's resourceVersion lower bound.
    pub(super) deleted: BTreeMap<String, u64>,
}

impl View {
    pub(super) fn apply(&mut self, event: watcher::Event<ResourceSlice>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(s) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(s.name_any(), s);
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.watched = r;
                }
                // The relist is the truth: what we wrote before it is in it, what
                // we write after comes as later events. A create it does not show
                // yet is answered 409 and re-read.
                self.written.clear();
                self.deleted.clear();
            }
            watcher::Event::Apply(s) => {
                let name = s.name_any();
                if self.written.get(&name).is_some_and(|w| rv(w) <= rv(&s)) {
                    self.written.remove(&name);
                }
                if self.deleted.get(&name).is_some_and(|d| *d < rv(&s)) {
                    self.deleted.remove(&name);
                }
                self.watched.insert(name, s);
            }
            watcher::Event::Delete(s) => {
                let name = s.name_any();
                if self.written.get(&name).is_some_and(|w| rv(w) <= rv(&s)) {
                    self.written.remove(&name);
                }
                self.deleted.remove(&name);
                self.watched.remove(&name);
            }
        }
    }

    pub(super) fn current(&self) -> BTreeMap<String, ResourceSlice> {
        let mut view = self.watched.clone();
        for (name, w) in &self.written {
            if view.get(name).is_none_or(|s| rv(s) < rv(w)) {
                view.insert(name.clone(), w.clone());
            }
        }
        for name in self.deleted.keys() {
            view.remove(name);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice(name: &str, rv: u64) -> ResourceSlice {
        ResourceSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            spec: Default::default(),
        }
    }

    #[test]
    fn the_view_trusts_our_writes_until_the_watch_catches_up() {
        let mut v = View::default();
        v.apply(watcher::Event::Init);
        v.apply(watcher::Event::InitApply(slice("a", 5)));
        v.apply(watcher::Event::InitDone);
        // We update a (rv 7): the watch has not shown it yet.
        v.written.insert("a".into(), slice("a", 7));
        assert_eq!(rv(&v.current()["a"]), 7);
        v.apply(watcher::Event::Apply(slice("a", 7)));
        assert!(v.written.is_empty());
        // A kubelet wipe after our write: gone from the view.
        v.written.insert("a".into(), slice("a", 8));
        v.apply(watcher::Event::Delete(slice("a", 9)));
        assert!(v.current().is_empty());
        // We delete b; the watch shows it later.
        v.apply(watcher::Event::Apply(slice("b", 10)));
        v.deleted.insert("b".into(), 11);
        assert!(!v.current().contains_key("b"));
    }

    #[test]
    fn a_relist_is_the_truth() {
        let mut v = View::default();
        v.written.insert("gone".into(), slice("gone", 3));
        v.deleted.insert("back".into(), 4);
        v.apply(watcher::Event::Init);
        v.apply(watcher::Event::InitApply(slice("back", 6)));
        v.apply(watcher::Event::InitDone);
        let names: Vec<String> = v.current().into_keys().collect();
        assert_eq!(names, ["back"], "deleted while the watch was down must not linger");
    }
}
