//! The module's behaviour (kmod/ABI.md) as one table that every device
//! backend must follow, step by step: each write's result (`ok` or the
//! errno), each read's value, and the class-device uevents each step sends,
//! in order. The kernel module runs it in a guest (`kmod_guest`'s
//! `the_module_follows_the_behaviour_table`, through [`guest_script`]); the
//! agent's user-space sim runs it on the host (`agent/tests/sim_behaviour.rs`).
//! Both hand their observations to [`check`]: they agree because each
//! agrees with the table.
//!
//! Paths are relative to the module's sysfs directories: `bus/...` is
//! `/sys/bus/mock-accel/...`, `class/...` is `/sys/class/mock-accel/...`,
//! `parameters/...` is `/sys/module/mock_accel/parameters/...`. Identity
//! values that differ by design (UUIDs, PCI domains) are not read.

/// One step.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// (Re)load with these module parameters ("num_pfs=2 max_vfs=4"); the
    /// load's own events are not compared (the sim has none to send).
    Load(&'static str),
    /// Write `value`: `result` is "ok" or the errno's name; `events` are
    /// the class-device uevents, in [`summary`] form.
    Write {
        path: &'static str,
        value: &'static str,
        result: &'static str,
        events: &'static [&'static str],
    },
    /// Read: the value without its newline, or "ENOENT" if there is no
    /// such file.
    Read { path: &'static str, value: &'static str },
    /// Wait this many milliseconds (attaches complete); then these events.
    Sleep { ms: u64, events: &'static [&'static str] },
}

use Step::*;

const fn w(path: &'static str, value: &'static str, result: &'static str, events: &'static [&'static str]) -> Step {
    Write {
        path,
        value,
        result,
        events,
    }
}

const fn r(path: &'static str, value: &'static str) -> Step {
    Read { path, value }
}

/// The table. Attaches take 2 s in its second load: long enough for the
/// steps between an attach and its sleep (or its cancel) under the guest's
/// software emulation, where each step costs a few hundred milliseconds.
pub const STEPS: &[Step] = &[
    Load("num_pfs=2 numa_nodes=2 max_vfs=4 memory_mib=1000"),
    r("parameters/max_vfs", "4"),
    r("parameters/num_pfs", "2"),
    r("class/mock0/type", "pf"),
    r("class/mock0/capabilities", "compute,dma,sriov"),
    r("class/mock0/numa_node", "0"),
    r("class/mock1/numa_node", "1"),
    r("class/mock0/memory_size", "1048576000"),
    r("class/mock0/fw_version", "1.4.2"),
    r("class/mock0/sriov_totalvfs", "4"),
    r("class/mock0/sriov_numvfs", "0"),
    r("class/mock0/status", "0"),
    r("class/mock0/health", "ok"),
    r("class/mock0/attach", "local"),
    r("class/mock2/status", "ENOENT"),
    // status: allocation, with the module's refusals.
    w("class/mock0/status", "1", "ok", &["change mock0 status=1"]),
    w("class/mock0/status", "1\n", "ok", &[]),
    w("class/mock0/status", "2", "ERANGE", &[]),
    w("class/mock0/status", "x", "EINVAL", &[]),
    w("class/mock0/status", "4294967296", "ERANGE", &[]),
    w("class/mock0/status", "0x0", "ok", &["change mock0 status=0"]),
    // health: fault injection; a failed function cannot be allocated.
    w(
        "class/mock1/health",
        "degraded",
        "ok",
        &["change mock1 health=degraded"],
    ),
    w("class/mock1/health", "failed\n", "ok", &["change mock1 health=failed"]),
    w("class/mock1/health", "failed", "ok", &[]),
    w("class/mock1/health", "Failed", "EINVAL", &[]),
    w("class/mock1/status", "1", "EIO", &[]),
    r("class/mock1/status", "0"),
    w("class/mock1/health", "ok", "ok", &["change mock1 health=ok"]),
    w("class/mock1/status", "1", "ok", &["change mock1 status=1"]),
    w("class/mock1/health", "failed", "ok", &["change mock1 health=failed"]),
    r("class/mock1/status", "1"),
    w("class/mock1/status", "0", "ok", &["change mock1 status=0"]),
    w("class/mock1/health", "ok", "ok", &["change mock1 health=ok"]),
    // A local function has nothing to attach.
    w("class/mock0/attach", "plug", "EINVAL", &[]),
    w("class/mock0/attach", "attach", "EOPNOTSUPP", &[]),
    w("class/mock0/fail_attach", "1", "EOPNOTSUPP", &[]),
    w("class/mock0/fail_attach", "x", "EINVAL", &[]),
    // SR-IOV, with the PCI core's rules.
    w("class/mock0/sriov_numvfs", "5", "ERANGE", &[]),
    w(
        "class/mock0/sriov_numvfs",
        "3",
        "ok",
        &[
            "add mock0_vf0",
            "add mock0_vf1",
            "add mock0_vf2",
            "change mock0 sriov=3",
        ],
    ),
    r("class/mock0_vf1/type", "vf"),
    r("class/mock0_vf1/capabilities", "compute,dma"),
    r("class/mock0_vf1/numa_node", "0"),
    // 1000 MiB / 3, rounded down to a MiB.
    r("class/mock0_vf1/memory_size", "349175808"),
    r("class/mock0_vf1/sriov_numvfs", "ENOENT"),
    r("class/mock0_vf3/status", "ENOENT"),
    w("class/mock0/sriov_numvfs", "2", "EBUSY", &[]),
    w("class/mock0/sriov_numvfs", "3", "ok", &[]),
    w("class/mock0_vf1/status", "1", "ok", &["change mock0_vf1 status=1"]),
    w("class/mock0/sriov_numvfs", "0", "EBUSY", &[]),
    r("class/mock0/sriov_numvfs", "3"),
    w("class/mock0_vf1/status", "0", "ok", &["change mock0_vf1 status=0"]),
    w(
        "class/mock0/sriov_numvfs",
        "0",
        "ok",
        &[
            "remove mock0_vf2",
            "remove mock0_vf1",
            "remove mock0_vf0",
            "change mock0 sriov=0",
        ],
    ),
    r("class/mock0_vf0/status", "ENOENT"),
    // Hot-plug and removal.
    w("bus/new_device", "5 1", "ok", &["add mock5"]),
    r("class/mock5/numa_node", "1"),
    w("bus/new_device", "5", "EEXIST", &[]),
    w("bus/new_device", "64", "ERANGE", &[]),
    w("bus/new_device", "3 2", "ERANGE", &[]),
    w("bus/new_device", "1 1 node-a x", "EINVAL", &[]),
    w("bus/new_device", "x", "EINVAL", &[]),
    w("bus/new_device", "3", "ok", &["add mock3"]),
    r("class/mock3/numa_node", "1"),
    w(
        "class/mock5/sriov_numvfs",
        "2",
        "ok",
        &["add mock5_vf0", "add mock5_vf1", "change mock5 sriov=2"],
    ),
    w("class/mock5_vf0/status", "1", "ok", &["change mock5_vf0 status=1"]),
    // A surprise removal: VFs first, newest first, allocated or not.
    w(
        "bus/del_device",
        "5",
        "ok",
        &["remove mock5_vf1", "remove mock5_vf0", "remove mock5"],
    ),
    w("bus/del_device", "5", "ENODEV", &[]),
    w("bus/del_device", "64", "ERANGE", &[]),
    w("bus/del_device", "3", "ok", &["remove mock3"]),
    r("class/mock5/status", "ENOENT"),
    // Fabric-attached functions.
    Load("num_pfs=1 max_vfs=2 fabric_attach_ms=2000"),
    r("parameters/fabric_attach_ms", "2000"),
    r("class/mock0/attach", "detached"),
    w("class/mock0/status", "1", "ENOLINK", &[]),
    w(
        "class/mock0/attach",
        "attach\n",
        "ok",
        &["change mock0 attach=attaching"],
    ),
    w("class/mock0/attach", "attach", "ok", &[]),
    w("class/mock0/status", "1", "ENOLINK", &[]),
    Sleep {
        ms: 3000,
        events: &["change mock0 attach=attached"],
    },
    r("class/mock0/attach", "attached"),
    w("class/mock0/status", "1", "ok", &["change mock0 status=1"]),
    w("class/mock0/attach", "detach", "EBUSY", &[]),
    w("class/mock0/status", "0", "ok", &["change mock0 status=0"]),
    w("class/mock0/attach", "detach", "ok", &["change mock0 attach=detached"]),
    // An armed failure fails the next attach, then is spent.
    w("class/mock0/fail_attach", "1001", "ERANGE", &[]),
    w("class/mock0/fail_attach", "1", "ok", &[]),
    r("class/mock0/fail_attach", "1"),
    w("class/mock0/attach", "attach", "ok", &["change mock0 attach=attaching"]),
    Sleep {
        ms: 3000,
        events: &["change mock0 attach=failed"],
    },
    r("class/mock0/fail_attach", "0"),
    // A failed function's attach fails.
    w("class/mock0/health", "failed", "ok", &["change mock0 health=failed"]),
    w("class/mock0/attach", "attach", "ok", &["change mock0 attach=attaching"]),
    Sleep {
        ms: 3000,
        events: &["change mock0 attach=failed"],
    },
    w("class/mock0/health", "ok", "ok", &["change mock0 health=ok"]),
    // A detach cancels an attach under way.
    w("class/mock0/attach", "attach", "ok", &["change mock0 attach=attaching"]),
    w("class/mock0/attach", "detach", "ok", &["change mock0 attach=detached"]),
    Sleep { ms: 3000, events: &[] },
    r("class/mock0/attach", "detached"),
    // VFs are fabric-attached too.
    w(
        "class/mock0/sriov_numvfs",
        "1",
        "ok",
        &["add mock0_vf0", "change mock0 sriov=1"],
    ),
    r("class/mock0_vf0/attach", "detached"),
];

/// What a backend did at one step: the write's result or the read's
/// value (empty for a load or a sleep), and the events in [`summary`] form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub result: String,
    pub events: Vec<String>,
}

/// A class-device uevent as the table writes it: `add mock0_vf1`,
/// `change mock1 health=failed` (`sriov=N` for the SR-IOV change); `None`
/// for any other event. `get` looks a key up in the event.
pub fn summary(action: &str, get: impl Fn(&str) -> Option<String>) -> Option<String> {
    let name = get("DEVNAME")?.strip_prefix("mock-accel/")?.to_string();
    let mut s = format!("{action} {name}");
    if let Some(kind) = get("MOCK_ACCEL_EVENT") {
        let key = match kind.as_str() {
            "sriov" => "MOCK_ACCEL_NUMVFS".to_string(),
            k => format!("MOCK_ACCEL_{}", k.to_ascii_uppercase()),
        };
        s.push_str(&format!(" {kind}={}", get(&key).unwrap_or_else(|| "<no value>".into())));
    }
    Some(s)
}

/// The module parameters of a [`Step::Load`] as pairs.
pub fn params(load: &str) -> Vec<(&str, &str)> {
    load.split_whitespace().filter_map(|p| p.split_once('=')).collect()
}

/// Compares what a backend did with the table: every difference, with
/// its step, or `Ok`.
pub fn check(observed: &[Observed]) -> Result<(), String> {
    let mut diffs = Vec::new();
    if observed.len() != STEPS.len() {
        diffs.push(format!(
            "{} steps observed, the table has {}",
            observed.len(),
            STEPS.len()
        ));
    }
    for (i, (step, seen)) in STEPS.iter().zip(observed).enumerate() {
        let (result, events): (&str, Option<&[&str]>) = match *step {
            Load(_) => ("", None),
            Write { result, events, .. } => (result, Some(events)),
            Read { value, .. } => (value, Some(&[])),
            Sleep { events, .. } => ("", Some(events)),
        };
        if seen.result != result {
            diffs.push(format!("step {i} {step:?}: got {:?}, want {result:?}", seen.result));
        }
        if let Some(events) = events
            && seen.events != events
        {
            diffs.push(format!("step {i} {step:?}: events {:?}, want {events:?}", seen.events));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}

/// The table as a guest script: each step's result on a `STEP i RESULT`
/// line, and after each step a marker uevent (a synthetic `change` of
/// /dev/null with `STEP=i`) so that [`guest_observed`] can cut the
/// recorded events into steps. Needs guest-tool and /guest/lib.sh.
pub fn guest_script() -> String {
    let mut s = String::from(
        ". /guest/lib.sh\n\
         params=/sys/module/mock_accel/parameters\n\
         mark() { echo \"change 00000000-0000-0000-0000-000000000000 STEP=$1\" >/sys/devices/virtual/mem/null/uevent; }\n\
         rd() { if [ -e \"$1\" ]; then echo \"STEP $2 $(cat \"$1\")\"; else echo \"STEP $2 ENOENT\"; fi; }\n\
         wr() { echo \"STEP $3 $(guest-tool write \"$1\" \"$2\")\"; }\n\
         rm -f /tmp/uevents.ready\n\
         guest-tool uevents --subsystem mock-accel --subsystem mem --ready /tmp/uevents.ready >/tmp/events &\n\
         _uev_pid=$!\n\
         while [ ! -e /tmp/uevents.ready ]; do sleep 0.05; done\n",
    );
    let sys = |p: &str| -> String {
        let (dir, rest) = p.split_once('/').expect("a relative path");
        match dir {
            "bus" => format!("$bus/{rest}"),
            "class" => format!("$cls/{rest}"),
            "parameters" => format!("$params/{rest}"),
            other => panic!("{other}: not a module directory"),
        }
    };
    for (i, step) in STEPS.iter().enumerate() {
        let line = match *step {
            Load(p) => format!("modprobe -r mock_accel 2>/dev/null; modprobe mock_accel {p} && echo \"STEP {i} \""),
            Write { path, value, .. } => format!("wr {} '{}' {i}", sys(path), value.replace('\n', "'\"\n\"'")),
            Read { path, .. } => format!("rd {} {i}", sys(path)),
            Sleep { ms, .. } => format!("sleep {}.{:03} && echo \"STEP {i} \"", ms / 1000, ms % 1000),
        };
        s.push_str(&format!("{line}\nmark {i}\n"));
    }
    s.push_str("uevents_stop\nsed 's/^/EVENT /' /tmp/events\nmodprobe -r mock_accel\n");
    s
}

/// A guest run of [`guest_script`], cut into steps.
pub fn guest_observed(output: &str) -> Vec<Observed> {
    let mut observed: Vec<Observed> = vec![Observed::default(); STEPS.len()];
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("STEP ") {
            let (i, result) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(o) = i.parse::<usize>().ok().and_then(|i| observed.get_mut(i)) {
                o.result = result.to_string();
            }
        }
    }
    // Events before the first marker are the first step's, and so on.
    let mut step = 0;
    for line in output.lines().filter_map(|l| l.strip_prefix("EVENT ")) {
        let mut parts = line.split_whitespace();
        let action = parts.next().unwrap_or("");
        let _devpath = parts.next();
        let props: Vec<&str> = parts.collect();
        let get = |k: &str| {
            props
                .iter()
                .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
        };
        if get("SYNTH_ARG_STEP").is_some() {
            step += 1;
            continue;
        }
        if let (Some(s), Some(o)) = (summary(action, get), observed.get_mut(step)) {
            o.events.push(s);
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_checks_itself() {
        let observed: Vec<Observed> = STEPS
            .iter()
            .map(|s| match *s {
                Load(_) => Observed::default(),
                Write { result, events, .. } => Observed {
                    result: result.into(),
                    events: events.iter().map(|e| e.to_string()).collect(),
                },
                Read { value, .. } => Observed {
                    result: value.into(),
                    events: vec![],
                },
                Sleep { events, .. } => Observed {
                    result: String::new(),
                    events: events.iter().map(|e| e.to_string()).collect(),
                },
            })
            .collect();
        check(&observed).unwrap();
        let mut wrong = observed.clone();
        wrong[20].result = "EBUSY".into();
        let with_events = (30..STEPS.len()).find(|&i| !observed[i].events.is_empty()).unwrap();
        wrong[with_events].events.pop();
        let e = check(&wrong).unwrap_err();
        assert_eq!(e.lines().count(), 2, "{e}");
        assert!(check(&observed[1..]).is_err());
    }

    #[test]
    fn guest_output_is_cut_into_steps_by_the_markers() {
        let output = "STEP 0 \nSTEP 1 4\nEVENT add /devices/x/mock-accel/mock0 DEVNAME=mock-accel/mock0 SUBSYSTEM=mock-accel\n\
EVENT change /devices/virtual/mem/null SUBSYSTEM=mem SYNTH_ARG_STEP=0 SYNTH_UUID=0\n\
EVENT change /devices/virtual/mem/null SUBSYSTEM=mem SYNTH_ARG_STEP=1 SYNTH_UUID=0\n\
EVENT change /devices/x/mock-accel/mock1 DEVNAME=mock-accel/mock1 MOCK_ACCEL_EVENT=health MOCK_ACCEL_HEALTH=failed\n\
EVENT add /devices/x SUBSYSTEM=mock-accel\n";
        let o = guest_observed(output);
        assert_eq!(o[0].events, ["add mock0"], "the load's events are step 0's");
        assert_eq!(o[1].result, "4");
        assert!(o[1].events.is_empty());
        assert_eq!(o[2].events, ["change mock1 health=failed"], "bus events are left out");
        assert!(
            guest_script().contains("wr $cls/mock0/status '1'\"\n\"'' 16"),
            "a newline kept in the value"
        );
    }
}
