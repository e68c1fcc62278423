//! Objects, the global resourceVersion, and the event history watches are
//! served from. Every write goes through [`Store::put`] or
//! [`Store::remove`] under one lock, so the resourceVersion is global and
//! increasing and a watcher that subscribes under the lock misses nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// (resource index, namespace or "", name)
pub type Key = (usize, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `object` is the new state (for a delete: the last state,
/// carrying the delete's resourceVersion); `prev` the state before.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: Key,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// Why a past state cannot be served.
#[derive(Debug, PartialEq)]
pub enum TooOld {
    /// Older than the oldest event kept (compacted): 410 Gone.
    Expired { requested: u64, oldest: u64 },
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// States at or after this resourceVersion can be served.
    oldest: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new(history_limit: usize, watch_buffer: usize) -> Store {
        let (tx, _) = broadcast::channel(watch_buffer);
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            oldest: 1,
            tx,
        }
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// Current objects of a resource, in (namespace, name) order.
    pub fn list(&self, resource: usize, namespace: Option<&str>) -> Vec<Arc<Value>> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every object of every resource (for the garbage collector).
    pub fn all(&self) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects.iter()
    }

    /// The objects of a resource as they were at `rv`, rebuilt by undoing the
    /// later events.
    pub fn list_at(&self, resource: usize, namespace: Option<&str>, rv: u64) -> Result<Vec<Arc<Value>>, TooOld> {
        if rv >= self.rv {
            return Ok(self.list(resource, namespace));
        }
        if rv < self.oldest {
            return Err(TooOld::Expired {
                requested: rv,
                oldest: self.oldest,
            });
        }
        let mut state: BTreeMap<Key, Arc<Value>> = self
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == resource)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ev in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if ev.key.0 != resource {
                continue;
            }
            match &ev.prev {
                Some(prev) => state.insert(ev.key.clone(), prev.clone()),
                None => state.remove(&ev.key),
            };
        }
        Ok(state
            .into_iter()
            .filter(|((_, ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .collect())
    }

    /// Events after `rv`, for a watch that starts there.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, TooOld> {
        if rv < self.oldest {
            return Err(TooOld::Expired {
                requested: rv,
                oldest: self.oldest,
            });
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Stores a new or changed object, stamping the next resourceVersion.
    pub fn put(&mut self, key: Key, mut obj: Value) -> Arc<Value> {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let obj = Arc::new(obj);
        let prev = self.objects.insert(key.clone(), obj.clone());
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Event {
            rv,
            key,
            kind,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Removes an object; returns its last state with the delete's
    /// resourceVersion.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Value>> {
        let prev = self.objects.remove(key)?;
        let rv = self.next_rv();
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let last = Arc::new(last);
        self.record(Event {
            rv,
            key: key.clone(),
            kind: EventType::Deleted,
            object: last.clone(),
            prev: Some(prev),
        });
        Some(last)
    }

    /// Forgets the history: a list or watch from any earlier
    /// resourceVersion now gets 410 Gone, as after an etcd compaction.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        (0, String::new(), name.into())
    }

    #[test]
    fn past_states_are_rebuilt_until_compaction() {
        let mut s = Store::new(100, 16);
        s.put(key("a"), json!({"metadata": {"name": "a"}, "v": 1}));
        let rv_a = s.rv();
        s.put(key("b"), json!({"metadata": {"name": "b"}}));
        s.put(key("a"), json!({"metadata": {"name": "a"}, "v": 2}));
        s.remove(&key("b"));

        let now = s.list_at(0, None, s.rv()).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0]["v"], 2);
        let then = s.list_at(0, None, rv_a).unwrap();
        assert_eq!(then.len(), 1);
        assert_eq!(then[0]["v"], 1);
        assert_eq!(then[0]["metadata"]["resourceVersion"], rv_a.to_string());
        assert_eq!(s.events_since(rv_a).unwrap().len(), 3);

        s.compact();
        assert!(matches!(s.list_at(0, None, rv_a), Err(TooOld::Expired { .. })));
        assert!(matches!(s.events_since(rv_a), Err(TooOld::Expired { .. })));
        assert_eq!(s.events_since(s.rv()).unwrap().len(), 0);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Store::new(3, 16);
        for i in 0..10 {
            s.put(key(&format!("o{i}")), json!({"metadata": {}}));
        }
        assert!(s.events_since(2).is_err());
        assert_eq!(s.events_since(s.rv() - 2).unwrap().len(), 2);
    }
}
