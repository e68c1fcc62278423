//! Faults on a schedule: when each of a scenario's `faults` is on, from
//! the time its generation was applied (or its device's Nth prepare since
//! then), and when that changes next. Pure: the caller keeps the clock and
//! turns a change into backend writes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::{Health, Inventory};

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// The function it hits (a PF for `remove`).
    pub device: String,
    /// What it does: `failed` or `degraded` health, or `remove` (the PF
    /// hot-unplugged, its VFs with it; plugged back when the fault ends).
    #[serde(default = "default_action")]
    pub action: Action,
    /// When it starts: this long after the generation is applied...
    #[serde(default, with = "duration_opt")]
    pub after: Option<Duration>,
    /// ...or at the device's Nth prepare (a claim's pod starting) since.
    #[serde(default)]
    pub after_prepares: Option<u32>,
    /// How long it lasts (absent: until the scenario changes or goes).
    #[serde(default, rename = "for", with = "duration_opt")]
    pub duration: Option<Duration>,
    /// Flapping: it starts again every `period` (needs `for` below it).
    #[serde(default, with = "duration_opt")]
    pub period: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Failed,
    Degraded,
    Remove,
}

impl Action {
    /// The health it sets (`None`: a removal).
    pub fn health(self) -> Option<Health> {
        match self {
            Action::Failed => Some(Health::Failed),
            Action::Degraded => Some(Health::Degraded),
            Action::Remove => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Degraded => "degraded",
            Action::Remove => "remove",
        }
    }
}

fn default_action() -> Action {
    Action::Failed
}

/// The longest a schedule may reach (a day): a bound the CRD states too.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// The shortest flap period (the agent is no fault generator for µs).
pub const MIN_PERIOD: Duration = Duration::from_millis(200);

/// Durations as Kubernetes writes them (`10s`, `1m30s`, `250ms`).
mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| crate::args::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Fault {
    /// The checks of the CRD's rules, naming the field (`at`: its path).
    pub fn check(&self, at: &str) -> Result<(), String> {
        if crate::inventory::parse_name(&self.device).is_none() {
            return Err(format!("{at}.device: {:?} is not a function name", self.device));
        }
        if self.action == Action::Remove && self.device.contains("_vf") {
            return Err(format!(
                "{at}: remove takes a PF (mock<N>): a VF goes with its PF or with sriov_numvfs"
            ));
        }
        if self.after.is_some() && self.after_prepares.is_some() {
            return Err(format!("{at}: after and afterPrepares are exclusive"));
        }
        if self.after_prepares == Some(0) {
            return Err(format!("{at}.afterPrepares: at least 1"));
        }
        for (name, d) in [("after", self.after), ("for", self.duration), ("period", self.period)] {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return Err(format!("{at}.{name}: longer than a day"));
            }
        }
        if let Some(p) = self.period {
            let Some(f) = self.duration else {
                return Err(format!("{at}.period: a flap needs `for` (how long each fault lasts)"));
            };
            if p < MIN_PERIOD || f.is_zero() || f >= p {
                return Err(format!(
                    "{at}: a flap needs 0 < for < period and period >= {}ms",
                    MIN_PERIOD.as_millis()
                ));
            }
        }
        Ok(())
    }

    /// Whether it is on at `elapsed` since its clock started (the
    /// generation's apply, or the Nth prepare), and when that changes next.
    pub fn at(&self, elapsed: Duration) -> (bool, Option<Duration>) {
        let start = self.after.unwrap_or_default();
        if elapsed < start {
            return (false, Some(start));
        }
        let e = elapsed - start;
        match (self.duration, self.period) {
            (Some(f), Some(p)) => {
                let n = (e.as_nanos() / p.as_nanos()) as u32;
                let cycle = start + p * n;
                if e - p * n < f {
                    (true, Some(cycle + f))
                } else {
                    (false, Some(cycle + p))
                }
            }
            (Some(f), None) if e < f => (true, Some(start + f)),
            (Some(_), None) => (false, None),
            (None, _) => (true, None),
        }
    }
}

/// Where a generation's faults stand, kept with the agent's record of
/// what it applied (a restarted agent neither repeats nor forgets one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// When the generation was applied (Unix ms, the node's clock).
    pub applied_ms: i64,
    /// Per fault: whether it is on.
    pub on: Vec<bool>,
    /// Per fault: when its clock started (the apply, or the Nth prepare).
    pub origins_ms: Vec<Option<i64>>,
    /// Per fault with `afterPrepares`: its device's prepares seen so far.
    pub prepares: Vec<u32>,
    /// The devices' last `status` seen (a prepare is a 0 → 1).
    pub last_status: BTreeMap<String, u32>,
    /// PFs a fault removed, and their NUMA node (to plug them back).
    pub removed: BTreeMap<u32, u32>,
    /// Per fault: its device and action (to end it once its spec is gone).
    pub targets: Vec<(String, Action)>,
}

/// A fault to turn on or off, and when it was due (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub fault: usize,
    pub on: bool,
    pub due_ms: i64,
}

impl Running {
    pub fn start(faults: &[Fault], now_ms: i64) -> Running {
        Running {
            applied_ms: now_ms,
            on: vec![false; faults.len()],
            origins_ms: faults
                .iter()
                .map(|f| f.after_prepares.is_none().then_some(now_ms))
                .collect(),
            prepares: vec![0; faults.len()],
            last_status: BTreeMap::new(),
            removed: BTreeMap::new(),
            targets: faults.iter().map(|f| (f.device.clone(), f.action)).collect(),
        }
    }

    /// The faults on now: (device, action).
    pub fn active(&self) -> Vec<(String, Action)> {
        self.on
            .iter()
            .zip(&self.targets)
            .filter(|(on, _)| **on)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Counts the prepares the inventory shows since the last call, then
    /// says which faults change now and when the next change is due.
    pub fn tick(&mut self, faults: &[Fault], inv: &Inventory, now_ms: i64) -> (Vec<Transition>, Option<i64>) {
        if self.on.len() != faults.len() {
            *self = Running::start(faults, self.applied_ms);
        }
        for (i, f) in faults.iter().enumerate() {
            let (Some(n), None) = (f.after_prepares, self.origins_ms[i]) else {
                continue;
            };
            let now = inv.functions.get(&f.device).map_or(0, |d| d.status);
            let before = self.last_status.get(&f.device).copied().unwrap_or(0);
            if before == 0 && now == 1 {
                self.prepares[i] += 1;
                if self.prepares[i] >= n {
                    self.origins_ms[i] = Some(now_ms);
                }
            }
        }
        for f in faults {
            let s = inv.functions.get(&f.device).map_or(0, |d| d.status);
            self.last_status.insert(f.device.clone(), s);
        }
        let mut changes = Vec::new();
        let mut next: Option<i64> = None;
        for (i, f) in faults.iter().enumerate() {
            let Some(origin) = self.origins_ms[i] else { continue };
            let elapsed = Duration::from_millis((now_ms - origin).max(0) as u64);
            let (on, later) = f.at(elapsed);
            if on != self.on[i] {
                // When this change was due: the last edge at or before now.
                let due = last_edge(f, elapsed).map_or(now_ms, |e| origin + e.as_millis() as i64);
                changes.push(Transition {
                    fault: i,
                    on,
                    due_ms: due,
                });
            }
            if let Some(l) = later {
                let at = origin + l.as_millis() as i64;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (changes, next)
    }
}

/// The time of the fault's last change at or before `elapsed`.
fn last_edge(f: &Fault, elapsed: Duration) -> Option<Duration> {
    let start = f.after.unwrap_or_default();
    if elapsed < start {
        return None;
    }
    let e = elapsed - start;
    Some(match (f.duration, f.period) {
        (Some(d), Some(p)) => {
            let n = (e.as_nanos() / p.as_nanos()) as u32;
            if e - p * n < d {
                start + p * n
            } else {
                start + p * n + d
            }
        }
        (Some(d), None) if e >= d => start + d,
        _ => start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(json: serde_json::Value) -> Fault {
        serde_json::from_value(json).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn now_later_for_a_while_and_flapping() {
        let now = fault(serde_json::json!({"device": "mock1"}));
        assert_eq!(now.at(ms(0)), (true, None));
        let later = fault(serde_json::json!({"device": "mock1", "after": "2s", "for": "500ms"}));
        assert_eq!(later.at(ms(100)), (false, Some(ms(2000))));
        assert_eq!(later.at(ms(2000)), (true, Some(ms(2500))));
        assert_eq!(later.at(ms(2600)), (false, None));
        let flap = fault(serde_json::json!({"device": "mock1", "after": "1s", "for": "300ms", "period": "1s"}));
        assert_eq!(flap.at(ms(1100)), (true, Some(ms(1300))));
        assert_eq!(flap.at(ms(1300)), (false, Some(ms(2000))));
        assert_eq!(flap.at(ms(5250)), (true, Some(ms(5300))));
        assert_eq!(flap.action, Action::Failed);
    }

    #[test]
    fn the_running_faults_change_on_time_and_on_the_nth_prepare() {
        let faults = vec![
            fault(serde_json::json!({"device": "mock0", "after": "1s", "for": "2s"})),
            fault(serde_json::json!({"device": "mock1", "afterPrepares": 2, "action": "degraded"})),
        ];
        let mut inv = Inventory::default();
        for pf in 0..2 {
            let f = crate::declared::test_function(pf, None, 0);
            inv.functions.insert(f.name.clone(), f);
        }
        let mut r = Running::start(&faults, 10_000);
        assert_eq!(r.tick(&faults, &inv, 10_000), (vec![], Some(11_000)));
        let (t, next) = r.tick(&faults, &inv, 11_040);
        assert_eq!(
            t,
            vec![Transition {
                fault: 0,
                on: true,
                due_ms: 11_000
            }]
        );
        assert_eq!(next, Some(13_000));
        r.on[0] = true;
        // mock1 prepared, released, prepared: the second prepare starts it.
        let set = |inv: &mut Inventory, s| inv.functions.get_mut("mock1").unwrap().status = s;
        set(&mut inv, 1);
        assert_eq!(r.tick(&faults, &inv, 12_000).0, vec![]);
        set(&mut inv, 0);
        r.tick(&faults, &inv, 12_100);
        set(&mut inv, 1);
        let (t, _) = r.tick(&faults, &inv, 12_200);
        assert_eq!(
            t,
            vec![Transition {
                fault: 1,
                on: true,
                due_ms: 12_200
            }]
        );
        r.on[1] = true;
        let (t, next) = r.tick(&faults, &inv, 13_010);
        assert_eq!(
            t,
            vec![Transition {
                fault: 0,
                on: false,
                due_ms: 13_000
            }]
        );
        assert_eq!(next, None);
    }

    #[test]
    fn impossible_schedules_are_refused() {
        let refused = |json: serde_json::Value, says: &str| {
            let e = fault(json.clone()).check("spec.faults[0]").unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        };
        refused(serde_json::json!({"device": "mock1", "period": "1s"}), "needs `for`");
        refused(
            serde_json::json!({"device": "mock1", "period": "1s", "for": "1s"}),
            "0 < for < period",
        );
        refused(
            serde_json::json!({"device": "mock1", "period": "100ms", "for": "50ms"}),
            "period >= 200ms",
        );
        refused(
            serde_json::json!({"device": "mock1", "after": "1s", "afterPrepares": 2}),
            "exclusive",
        );
        refused(
            serde_json::json!({"device": "mock1_vf0", "action": "remove"}),
            "remove takes a PF",
        );
        refused(
            serde_json::json!({"device": "mock1", "after": "25h"}),
            "longer than a day",
        );
        assert!(serde_json::from_value::<Fault>(serde_json::json!({"device": "mock1", "after": "-1s"})).is_err());
        assert!(serde_json::from_value::<Fault>(serde_json::json!({"device": "mock1", "action": "explode"})).is_err());
    }
}
