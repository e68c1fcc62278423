//! Devices owned by nodes, for many nodes on one kernel (kind: every node
//! is a container on the host's kernel and sees every device of the
//! module). The module keeps an owner per PF, its VFs following it
//! (kmod/ABI.md `owner`): a compare-and-set the kernel arbitrates, so two
//! agents racing for one PF cannot both win. Here: which functions are this
//! node's, what it takes when the module loads, and how a gone node's PFs
//! are given back. [`super::sysfs::Sysfs`] applies it; nothing else of the
//! agent sees an owner.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use super::write_attribute as write;

/// Whose functions a node agent publishes and prepares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ownership {
    /// This node: the owner it writes and looks for.
    pub node: String,
    /// Many nodes on this kernel: only the PFs this node owns are its own,
    /// an unowned one is nobody's. Off (one node per kernel, the default):
    /// unowned functions are this node's too, as before owners existed.
    /// Either way another node's are never this node's.
    pub shared: bool,
    /// Shared: at each load of the module, take unowned PFs (lowest ids
    /// first) until this node owns this many.
    pub take: u32,
    /// Shared: or take exactly these PF ids.
    pub take_ids: Vec<u32>,
}

impl Ownership {
    /// Whether a function whose owner is `owner` ("" for none) is this node's.
    pub fn mine(&self, owner: &str) -> bool {
        owner == self.node || (owner.is_empty() && !self.shared)
    }
}

/// A function's owner from its directory: "" when unowned, or when the
/// module predates owners (no such file).
pub fn read(function: &Path) -> io::Result<String> {
    match fs::read_to_string(function.join("owner")) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && function.exists() => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Every PF of the class directory `class` and its owner, by id.
pub fn pfs(class: &Path) -> io::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(class) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("mock").and_then(|n| n.parse::<u32>().ok()) else {
            continue; // a VF (mockN_vfM)
        };
        match read(&class.join(&name)) {
            Ok(owner) => {
                out.insert(id, owner);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What a take of one PF came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// This node owns it now (or did already).
    Yes,
    /// Another node owns it (it won the race, or had it before).
    Busy(String),
    /// No such PF.
    Gone,
}

/// Takes PF `id` for `node`: the kernel's compare-and-set.
pub fn take(class: &Path, id: u32, node: &str) -> io::Result<Taken> {
    let dir = class.join(format!("mock{id}"));
    match write(&dir.join("owner"), node) {
        Ok(()) => Ok(Taken::Yes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Taken::Gone),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Taken::Busy(read(&dir).unwrap_or_default())),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(Taken::Gone),
        Err(e) => Err(e),
    }
}

/// What a node took when the module (re)loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeReport {
    /// PFs it owned already (an agent restarted: nothing to take again).
    pub had: Vec<u32>,
    pub taken: Vec<u32>,
    /// PFs asked for by id that another node owns, with that node.
    pub refused: Vec<(u32, String)>,
    /// PF ids asked for that do not exist.
    pub missing: Vec<u32>,
}

/// At a load of the module, on a shared kernel: takes the PFs `o` asks
/// for. By count: lowest unowned ids first, moving on past a PF another
/// agent won meanwhile, until this node owns `o.take` (so three agents
/// starting together on twelve PFs end with four each, whoever wins which).
pub fn take_at_load(class: &Path, o: &Ownership) -> io::Result<TakeReport> {
    let pfs = pfs(class)?;
    let mut report = TakeReport {
        had: pfs.iter().filter(|(_, w)| **w == o.node).map(|(id, _)| *id).collect(),
        ..Default::default()
    };
    if !o.take_ids.is_empty() {
        for &id in &o.take_ids {
            if report.had.contains(&id) {
                continue;
            }
            match take(class, id, &o.node)? {
                Taken::Yes => report.taken.push(id),
                Taken::Busy(who) => report.refused.push((id, who)),
                Taken::Gone => report.missing.push(id),
            }
        }
        return Ok(report);
    }
    let mut need = (o.take as usize).saturating_sub(report.had.len());
    for (&id, owner) in &pfs {
        if need == 0 {
            break;
        }
        if !owner.is_empty() {
            continue;
        }
        if take(class, id, &o.node)? == Taken::Yes {
            report.taken.push(id);
            need -= 1;
        }
    }
    Ok(report)
}

/// Gives back every PF `owner` owns (a node gone from the cluster): each
/// of its functions freed first (status 0, a fabric attach undone: its
/// kubelet will never unprepare them), then the PF given back with the
/// compare-and-set, so a PF taken meanwhile by another node is left alone.
/// Returns the PF ids given back.
pub fn release(class: &Path, owner: &str) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    let mine: Vec<u32> = pfs(class)?
        .into_iter()
        .filter(|(_, who)| who == owner)
        .map(|(id, _)| id)
        .collect();
    if mine.is_empty() {
        return Ok(out);
    }
    let names: Vec<String> = fs::read_dir(class)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()?;
    for id in mine {
        let pf = format!("mock{id}");
        let vf_prefix = format!("mock{id}_vf");
        for f in names.iter().filter(|n| **n == pf || n.starts_with(&vf_prefix)) {
            let dir = class.join(f);
            // Best effort: a function already free, local or gone refuses.
            let _ = write(&dir.join("status"), "0");
            if fs::read_to_string(dir.join("attach")).is_ok_and(|s| s.trim() != "local" && s.trim() != "detached") {
                let _ = write(&dir.join("attach"), "detach");
            }
        }
        match write(&class.join(&pf).join("owner"), &format!("-{owner}")) {
            Ok(()) => out.push(id),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {} // another node took it meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sysfs::write_fake_tree;

    fn tree(owners: &[(u32, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("sys/class/mock-accel");
        write_fake_tree(&class, 6, 1).unwrap();
        for (id, who) in owners {
            fs::write(class.join(format!("mock{id}/owner")), format!("{who}\n")).unwrap();
        }
        (dir, class)
    }

    fn shared(node: &str, take: u32) -> Ownership {
        Ownership {
            node: node.into(),
            shared: true,
            take,
            take_ids: vec![],
        }
    }

    #[test]
    fn mine_on_a_shared_kernel_and_on_a_kernel_of_its_own() {
        let own = Ownership {
            node: "a".into(),
            ..Default::default()
        };
        assert!(own.mine("") && own.mine("a") && !own.mine("b"));
        let s = shared("a", 0);
        assert!(!s.mine("") && s.mine("a") && !s.mine("b"));
    }

    #[test]
    fn owners_are_read_and_a_module_without_them_reads_unowned() {
        let (_d, class) = tree(&[(1, "node-b")]);
        // An older module has no owner files.
        fs::remove_file(class.join("mock0/owner")).unwrap();
        fs::remove_file(class.join("mock0_vf0/owner")).unwrap();
        let got = pfs(&class).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[&1], "node-b");
        assert_eq!(got[&0], "");
        assert_eq!(read(&class.join("mock0_vf0")).unwrap(), "");
        assert!(
            read(&class.join("mock9")).is_err(),
            "a missing function is an error, not unowned"
        );
    }

    #[test]
    fn taking_by_count_skips_owned_ones_and_counts_what_it_has() {
        let (_d, class) = tree(&[(0, "node-b"), (2, "node-a")]);
        let r = take_at_load(&class, &shared("node-a", 3)).unwrap();
        assert_eq!(r.had, vec![2]);
        assert_eq!(r.taken, vec![1, 3], "lowest unowned ids first, up to 3 in all");
        assert_eq!(read(&class.join("mock3")).unwrap(), "node-a");
        assert_eq!(read(&class.join("mock4")).unwrap(), "");
        // Again (an agent restarted): it has three, takes nothing.
        let again = take_at_load(&class, &shared("node-a", 3)).unwrap();
        assert_eq!((again.had, again.taken), (vec![1, 2, 3], vec![]));
    }

    #[test]
    fn taking_by_id_names_what_it_could_not_take() {
        let (_d, class) = tree(&[(0, "node-b")]);
        let o = Ownership {
            take_ids: vec![4, 9],
            ..shared("node-a", 0)
        };
        let r = take_at_load(&class, &o).unwrap();
        assert_eq!(r.taken, vec![4]);
        assert_eq!(r.missing, vec![9]);
        assert_eq!(read(&class.join("mock4")).unwrap(), "node-a");
    }

    #[test]
    fn releasing_frees_the_functions_and_gives_back_only_that_nodes_pfs() {
        let (_d, class) = tree(&[(1, "gone"), (2, "node-a")]);
        fs::write(class.join("mock1_vf0/status"), "1\n").unwrap();
        fs::write(class.join("mock1/attach"), "attached\n").unwrap();
        assert_eq!(release(&class, "gone").unwrap(), vec![1]);
        // On files (no kernel) a write overwrites the start of the file.
        let head = |f: &str, n: usize| fs::read_to_string(class.join(f)).unwrap()[..n].to_string();
        assert_eq!(head("mock1_vf0/status", 1), "0");
        assert_eq!(head("mock1/attach", 6), "detach");
        assert_eq!(head("mock1/owner", 5), "-gone");
        assert_eq!(read(&class.join("mock2")).unwrap(), "node-a");
    }
}
