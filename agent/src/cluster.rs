//! The controller cluster this agent belongs to, pinned on first sight.
//!
//! Every controller address an agent lists (`controllers.rs`) must be the same controller: one
//! database, so one set of grants and revocations. An independent controller that shares the
//! CA and grant key passes TLS and grant verification, yet a revocation made on the other one
//! never reaches an agent that follows it. The controller therefore presents its cluster id (a
//! random id made once with its database, see the controller's `Store::cluster_id`) on every
//! grant event and checkpoint answer. The agent pins the first non-empty id it sees in
//! `<state_dir>/controller-cluster.id` (mode 0600) and refuses every address that presents
//! another one or none: the connection is dropped before anything from it is applied, the
//! address counts as failed, and the grant stream audits `controller.refused`.
//!
//! An enrolled agent pins the cluster that enrolled it ([`pin_enrolled`], the id in the
//! enrolment's answer). An agent that has never seen an id (one given its certificate by hand,
//! or upgraded from a version without ids) pins the first. After a deliberate migration to another controller cluster, the
//! operator re-pins by deleting the file and restarting the agent (docs/operations.md).
//! An empty id from a controller (an older version) is accepted only while nothing is pinned.

use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file under the state directory that holds the pinned id.
pub const PIN_FILE: &str = "controller-cluster.id";
/// The longest id accepted (ours are 32 hex characters).
const MAX_ID: usize = 64;

/// A controller presented another cluster's id than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The pinned id.
    pub expected: String,
    /// What the controller presented (empty: none), cut to [`MAX_ID`] characters.
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.got.is_empty() && !self.expected.is_empty() {
            // Deleting the pin would make the agent take any cluster: not the advice here.
            return write!(
                f,
                "the controller sends no cluster id (a version older than this agent's): \
                 upgrade every controller replica; this agent stays pinned to {:?}",
                self.expected
            );
        }
        write!(
            f,
            "the controller belongs to cluster {:?}, this agent is pinned to {:?}; if the move is \
             deliberate, delete {PIN_FILE} in the agent's state directory and restart it",
            self.got, self.expected
        )
    }
}

impl std::error::Error for Mismatch {}

/// The pinned cluster id (if any) and where it is kept.
#[derive(Debug)]
pub struct ClusterPin {
    path: PathBuf,
    pinned: Mutex<Option<String>>,
}

impl ClusterPin {
    /// Loads the pin from `state_dir` (none yet when the file does not exist). A file that does
    /// not hold one id is refused: the agent does not guess which cluster it belongs to.
    pub fn open(state_dir: &Path) -> anyhow::Result<ClusterPin> {
        let path = state_dir.join(PIN_FILE);
        let pinned = read_pin(&path)?;
        Ok(ClusterPin {
            path,
            pinned: Mutex::new(pinned),
        })
    }

    /// The pinned id, if any, found as [`check`](Self::check) finds it: with nothing pinned in
    /// memory, the one an enrolment may have pinned on disk since. A renewal names it; an empty
    /// id there would tell the controller that nothing is pinned, and it would not check.
    /// A pin file that cannot be read gives `None` here: the renewal then names no cluster,
    /// and [`check`](Self::check) refuses the answer (it fails closed on that file).
    pub fn pinned(&self) -> Option<String> {
        let mut pinned = self.lock();
        self.take_up_pin_on_disk(&mut pinned).ok()?;
        pinned.clone()
    }

    /// Whether a controller presenting `got` may be followed. With nothing pinned, a valid id
    /// is pinned (on disk before this returns Ok) and an empty one accepted; otherwise only the
    /// pinned id is. Err(`Mismatch`) for a refusal; another error when the pin cannot be stored
    /// (nothing is accepted unpinned then).
    pub fn check(&self, got: &str) -> anyhow::Result<()> {
        let mut pinned = self.lock();
        self.take_up_pin_on_disk(&mut pinned)?;
        match pinned.as_deref() {
            Some(expected) if expected == got => Ok(()),
            Some(expected) => Err(Mismatch {
                expected: expected.to_string(),
                got: got.chars().take(MAX_ID).collect(),
            }
            .into()),
            None if got.is_empty() => Ok(()),
            None if !is_valid_id(got) => Err(Mismatch {
                expected: String::new(),
                got: got.chars().take(MAX_ID).collect(),
            }
            .into()),
            None => {
                store(&self.path, got)?;
                tracing::info!(cluster_id = %got, "pinned the controller cluster");
                *pinned = Some(got.to_string());
                Ok(())
            }
        }
    }

    /// With nothing pinned in `pinned` (nothing was when the agent started), takes up the pin
    /// an enrolment may have written since (`pin_enrolled`, run while this agent ran): that
    /// one holds. A pin file that appeared and cannot be read or holds no id is an error, as
    /// at [`open`](Self::open): the agent does not guess its cluster, nor write over that
    /// file with whichever id the next controller presents.
    fn take_up_pin_on_disk(&self, pinned: &mut Option<String>) -> anyhow::Result<()> {
        if pinned.is_none() {
            *pinned = read_pin(&self.path)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pins `id`, the cluster that enrolled this agent (`loggate-agent enrol`), in `state_dir`:
/// from then on the agent follows only controllers of that cluster, so a controller of
/// another cluster sharing the CA is refused from the agent's first stream on (before, a new
/// agent pinned whichever answered first). It replaces what was pinned: enrolling with a
/// token of that cluster is the operator's deliberate choice, as deleting the pin file is.
/// Returns what was pinned before when it was another id (or unreadable: `Some` of why). An
/// empty id (a controller that predates it) pins nothing and leaves the pin as it is.
pub fn pin_enrolled(state_dir: &Path, id: &str) -> anyhow::Result<Option<String>> {
    if id.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        is_valid_id(id),
        "the controller's cluster id {:?} is not an id (1-{MAX_ID} ASCII letters, digits or '-')",
        id.chars().take(MAX_ID).collect::<String>()
    );
    let before = match ClusterPin::open(state_dir) {
        Ok(pin) => pin.pinned().filter(|before| before != id),
        Err(e) => Some(format!("{e:#}")),
    };
    store(&state_dir.join(PIN_FILE), id)?;
    Ok(before)
}

/// 1 to [`MAX_ID`] lowercase hex digits or ASCII letters, digits and `-` (an id, nothing that
/// could carry a line break or markup into a log).
pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The id pinned in `path`: `None` when the file does not exist; an error when it does not
/// hold one id (the agent does not guess which cluster it belongs to) or cannot be read.
fn read_pin(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).ok().map(str::trim);
            match text.filter(|t| is_valid_id(t)) {
                Some(id) => Ok(Some(id.to_string())),
                None => bail!(
                    "{} does not hold a controller cluster id; delete it to pin the next \
                     controller's",
                    path.display()
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the pin durably: a temporary file of this process (0600, created afresh, never
/// through a link), synced, renamed over the pin file. The running agent and an enrolment
/// may both write the pin: each through its own temporary file, so neither renames the
/// other's half-written one into place.
fn store(path: &Path, id: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("id.{}.tmp", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", tmp.display()));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A pin file that appeared while the agent ran and holds no id is refused as at start:
    /// not taken for "nothing pinned", not written over with the next controller's id.
    #[test]
    fn a_pin_file_that_appeared_unreadable_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let pin = ClusterPin::open(dir.path()).unwrap();
        let file = dir.path().join(PIN_FILE);
        std::fs::write(&file, "not an id\n").unwrap();
        let refused = pin.check("aaaa1111").unwrap_err();
        assert!(format!("{refused}").contains("does not hold"), "{refused}");
        assert_eq!(pin.pinned(), None);
        assert_eq!(std::fs::read(&file).unwrap(), b"not an id\n");
    }

    #[test]
    fn the_first_id_is_pinned_on_disk_and_another_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let pin = ClusterPin::open(dir.path()).unwrap();
        pin.check("").unwrap();
        assert_eq!(
            pin.pinned(),
            None,
            "an older controller's empty id pins nothing"
        );
        pin.check("aaaa1111").unwrap();
        pin.check("aaaa1111").unwrap();
        let file = dir.path().join(PIN_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = ClusterPin::open(dir.path()).unwrap();
        assert_eq!(again.pinned().as_deref(), Some("aaaa1111"));
        let refused = again.check("bbbb2222").unwrap_err();
        let mismatch = refused.downcast_ref::<Mismatch>().expect("a Mismatch");
        assert_eq!(mismatch.expected, "aaaa1111");
        assert_eq!(mismatch.got, "bbbb2222");
        assert!(format!("{refused}").contains(PIN_FILE), "{refused}");
        let empty = again.check("").unwrap_err();
        assert!(
            empty.downcast_ref::<Mismatch>().is_some(),
            "no id once pinned"
        );

        // Re-pinning after a deliberate migration: delete the file.
        std::fs::remove_file(&file).unwrap();
        let repinned = ClusterPin::open(dir.path()).unwrap();
        repinned.check("bbbb2222").unwrap();
        assert_eq!(repinned.pinned().as_deref(), Some("bbbb2222"));
    }

    #[test]
    fn an_enrolment_pins_its_cluster_over_an_earlier_pin_and_an_empty_id_pins_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pin_enrolled(dir.path(), "").unwrap(), None);
        assert!(
            !dir.path().join(PIN_FILE).exists(),
            "an empty id pins nothing"
        );
        assert_eq!(pin_enrolled(dir.path(), "aaaa1111").unwrap(), None);
        let pin = ClusterPin::open(dir.path()).unwrap();
        assert_eq!(pin.pinned().as_deref(), Some("aaaa1111"));
        assert!(pin.check("bbbb2222").is_err(), "another cluster is refused");
        assert_eq!(
            pin_enrolled(dir.path(), "aaaa1111").unwrap(),
            None,
            "the same"
        );
        assert_eq!(
            pin_enrolled(dir.path(), "bbbb2222").unwrap().as_deref(),
            Some("aaaa1111"),
            "a re-enrolment into another cluster says what it replaced"
        );
        let pin = ClusterPin::open(dir.path()).unwrap();
        assert_eq!(pin.pinned().as_deref(), Some("bbbb2222"));
        assert_eq!(pin_enrolled(dir.path(), "").unwrap(), None);
        assert_eq!(
            ClusterPin::open(dir.path()).unwrap().pinned().as_deref(),
            Some("bbbb2222"),
            "an older controller's empty id leaves the pin"
        );
        for bad in ["a\nb", "x".repeat(65).as_str(), "../x"] {
            assert!(pin_enrolled(dir.path(), bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ClusterPin::open(dir.path()).unwrap().pinned().as_deref(),
            Some("bbbb2222")
        );
        let mode = std::fs::metadata(dir.path().join(PIN_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_running_agent_with_nothing_pinned_takes_the_pin_an_enrolment_wrote_since() {
        let dir = tempfile::tempdir().unwrap();
        let running = ClusterPin::open(dir.path()).unwrap();
        assert_eq!(running.pinned(), None);
        pin_enrolled(dir.path(), "aaaa1111").unwrap();
        let refused = running.check("bbbb2222").unwrap_err();
        assert!(refused.downcast_ref::<Mismatch>().is_some(), "{refused}");
        assert_eq!(running.pinned().as_deref(), Some("aaaa1111"));
        running.check("aaaa1111").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PIN_FILE))
                .unwrap()
                .trim(),
            "aaaa1111",
            "the enrolment's pin was not overwritten"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    /// A renewal names the pinned cluster (`pinned`): with nothing pinned when the agent
    /// started, that is the pin an enrolment or another `ClusterPin` wrote since, as `check`
    /// finds it; not an empty id, which the controller takes as "no pin" and does not check.
    #[test]
    fn pinned_is_the_pin_written_on_disk_since_the_agent_started() {
        let dir = tempfile::tempdir().unwrap();
        let running = ClusterPin::open(dir.path()).unwrap();
        assert_eq!(running.pinned(), None);
        pin_enrolled(dir.path(), "aaaa1111").unwrap();
        assert_eq!(running.pinned().as_deref(), Some("aaaa1111"));
        running.check("aaaa1111").unwrap();
        assert!(
            running.check("bbbb2222").is_err(),
            "pinned() agrees with check()"
        );

        let dir = tempfile::tempdir().unwrap();
        let running = ClusterPin::open(dir.path()).unwrap();
        let other = ClusterPin::open(dir.path()).unwrap();
        other.check("cccc3333").unwrap();
        assert_eq!(running.pinned().as_deref(), Some("cccc3333"));
    }

    #[test]
    fn a_hostile_id_is_neither_pinned_nor_accepted_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pin = ClusterPin::open(dir.path()).unwrap();
        for bad in ["a\nb", "x".repeat(65).as_str(), "a b", "../x"] {
            assert!(pin.check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(pin.pinned(), None);
        std::fs::write(dir.path().join(PIN_FILE), "not an id\n").unwrap();
        let e = ClusterPin::open(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("delete it"), "{e:#}");
    }
}
