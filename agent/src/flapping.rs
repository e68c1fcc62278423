//! Flap damping of the health the slices publish. A function whose health
//! changed [`CHANGES`] times within [`WINDOW`] is flapping: it is published
//! at the worst health it had while flapping until it has been stable for
//! `WINDOW`. So a flapping device costs the API server a write or two, not
//! one per change, and the scheduler does not hand out a device that fails
//! every other second. A single failure or recovery is published at once.
//! Only the slices are damped: prepare reads the module itself (which
//! refuses a failed device), the kubelet's health stream reports each change.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;
use tokio::time::Instant;
use tracing::info;

use crate::inventory::{Health, Inventory};
use crate::metrics as m;

/// How long a flapping function must stay stable to be published as it is.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Changes within [`WINDOW`] that make a function flapping.
pub const CHANGES: usize = 4;

#[derive(Debug)]
struct Track {
    last: Health,
    /// The changes within the window: when, and the health it changed to.
    changes: VecDeque<(Instant, Health)>,
    /// The worst health seen while flapping (None: not flapping).
    held: Option<Health>,
}

/// Health changes per function, and what to publish.
#[derive(Debug, Default)]
pub struct Damper {
    tracks: BTreeMap<String, Track>,
}

impl Damper {
    /// The inventory to publish at `now` (health held where a function
    /// flaps), and when the earliest hold may end (plan again then).
    pub fn apply(&mut self, inv: &Arc<Inventory>, now: Instant) -> (Arc<Inventory>, Option<Instant>) {
        self.tracks.retain(|name, _| inv.functions.contains_key(name));
        let mut held = BTreeMap::new();
        let mut next = None;
        for (name, f) in &inv.functions {
            let t = self.tracks.entry(name.clone()).or_insert_with(|| Track {
                last: f.health,
                changes: VecDeque::new(),
                held: None,
            });
            if f.health != t.last {
                t.changes.push_back((now, f.health));
                t.last = f.health;
            }
            while t.changes.front().is_some_and(|(c, _)| now.duration_since(*c) >= WINDOW) {
                t.changes.pop_front();
            }
            let flapping = t.held.is_some() || t.changes.len() >= CHANGES;
            // Held until the last change is WINDOW old.
            let until = t.changes.back().map(|(c, _)| *c + WINDOW).filter(|u| *u > now);
            match (flapping, until) {
                (true, Some(until)) => {
                    let worst = t.changes.iter().map(|(_, h)| *h).chain(t.held).chain([f.health]).max();
                    if t.held.is_none() {
                        info!(device = %f.name, changes = t.changes.len(), window = ?WINDOW, "health is flapping: published at its worst until stable");
                    }
                    t.held = worst;
                    if let Some(w) = worst.filter(|w| *w != f.health) {
                        held.insert(name.clone(), w);
                    }
                    next = [next, Some(until)].into_iter().flatten().min();
                }
                _ => {
                    if t.held.take().is_some() {
                        info!(device = %f.name, health = ?f.health, "health stable again: published as it is");
                    }
                }
            }
        }
        gauge!(m::HEALTH_FLAPPING).set(self.tracks.values().filter(|t| t.held.is_some()).count() as f64);
        if held.is_empty() {
            return (inv.clone(), next);
        }
        let mut damped = (**inv).clone();
        for (name, h) in held {
            if let Some(f) = damped.functions.get_mut(&name) {
                f.health = h;
            }
        }
        (Arc::new(damped), next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::testing::function;

    fn inv(health: Health) -> Arc<Inventory> {
        let mut f = function("mock0");
        f.health = health;
        Arc::new(Inventory {
            functions: [("mock0".to_string(), f)].into(),
            skipped: vec![],
            scanned: true,
        })
    }

    fn published(d: &mut Damper, h: Health, at: Instant) -> (Health, Option<Instant>) {
        let (i, next) = d.apply(&inv(h), at);
        (i.functions["mock0"].health, next)
    }

    #[test]
    fn a_single_failure_and_recovery_go_out_at_once() {
        let mut d = Damper::default();
        let t = Instant::now();
        assert_eq!(published(&mut d, Health::Ok, t), (Health::Ok, None));
        assert_eq!(
            published(&mut d, Health::Failed, t + Duration::from_secs(1)).0,
            Health::Failed
        );
        assert_eq!(published(&mut d, Health::Ok, t + Duration::from_secs(2)).0, Health::Ok);
    }

    #[test]
    fn a_flapping_function_is_held_at_its_worst_until_stable() {
        let mut d = Damper::default();
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        published(&mut d, Health::Ok, t);
        assert_eq!(published(&mut d, Health::Failed, ms(100)).0, Health::Failed);
        assert_eq!(published(&mut d, Health::Ok, ms(200)).0, Health::Ok);
        assert_eq!(published(&mut d, Health::Degraded, ms(300)).0, Health::Degraded);
        // The fourth change: flapping; held at the worst of the window.
        let (h, next) = published(&mut d, Health::Ok, ms(400));
        assert_eq!(h, Health::Failed);
        assert_eq!(next, Some(ms(400) + WINDOW));
        assert_eq!(published(&mut d, Health::Failed, ms(500)).0, Health::Failed);
        assert_eq!(
            published(&mut d, Health::Ok, ms(600)),
            (Health::Failed, Some(ms(600) + WINDOW))
        );
        // Stable, but not for long enough; then long enough.
        assert_eq!(published(&mut d, Health::Ok, ms(600) + WINDOW / 2).0, Health::Failed);
        assert_eq!(published(&mut d, Health::Ok, ms(600) + WINDOW), (Health::Ok, None));
        // A later single change is not flapping any more.
        assert_eq!(
            published(&mut d, Health::Failed, ms(700) + 2 * WINDOW).0,
            Health::Failed
        );
        assert_eq!(published(&mut d, Health::Ok, ms(800) + 2 * WINDOW).0, Health::Ok);
    }

    #[test]
    fn a_function_gone_is_forgotten() {
        let mut d = Damper::default();
        let t = Instant::now();
        for (i, h) in [Health::Ok, Health::Failed, Health::Ok, Health::Failed, Health::Ok]
            .into_iter()
            .enumerate()
        {
            published(&mut d, h, t + Duration::from_millis(i as u64));
        }
        assert!(d.tracks["mock0"].held.is_some());
        d.apply(&Arc::new(Inventory::default()), t + Duration::from_millis(10));
        assert!(d.tracks.is_empty());
        assert_eq!(
            published(&mut d, Health::Ok, t + Duration::from_millis(20)),
            (Health::Ok, None)
        );
    }
}
