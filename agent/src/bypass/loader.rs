//! Loading and attaching the kernel program (`loggate-agent-ebpf`) with aya, and the typed
//! handles on its maps. Everything that can fail at load time fails here, with a reason a person
//! can act on; the caller decides whether to fall back.

use super::inventory::{FileKey, Inventory};
use super::kfunc;
use super::repeats::{SeenKey, SeenVal};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{BtfTracePoint, FEntry, Lsm, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use loggate_agent_ebpf::names;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The loaded, attached program and its maps. The programs stay attached while `ebpf` lives.
pub struct Probe {
    ebpf: Ebpf,
    pub hooks: Hooks,
    pub attached: Vec<&'static str>,
    /// Optional hooks that could not be attached, and why.
    pub missing: Vec<String>,
    /// How the programs turn an fd into its file.
    pub fd_lookup: FdLookup,
}

/// How the loaded programs turn an opened fd into its `struct file` (logaudit.bpf.c, `match_fd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdLookup {
    /// The kfunc `bpf_rdonly_cast` types the fd slot: plain loads for every fd table.
    Cast,
    /// The build without kfuncs: plain loads from the table embedded in `files_struct`,
    /// `bpf_probe_read_kernel` from a grown one (slower, equally complete). `reason`: why the
    /// kfunc build was not used.
    ProbeRead { reason: String },
    /// The programs look up no fd (`lsm` and `fentry` are handed the file; the bench's empty
    /// programs do nothing).
    None,
}

impl FdLookup {
    /// The name reported in `agent.started` (`bypass_fd_lookup`).
    pub fn name(&self) -> &'static str {
        match self {
            FdLookup::Cast => "rdonly_cast",
            FdLookup::ProbeRead { .. } => "probe_read",
            FdLookup::None => "none",
        }
    }
}

/// Which object to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objects {
    /// The agent's program: with `kfuncs`, the `bpf_rdonly_cast` build, else (or where the
    /// kernel lacks or refuses the kfunc) the `bpf_probe_read_kernel` build.
    Agent { kfuncs: bool },
    /// The bench's do-nothing programs.
    Empty,
}

/// The maps the agent writes: the protected set and the excluded processes.
pub struct ProtectedMaps {
    protected: HashMap<MapData, FileKey, u32>,
    filter: Array<MapData, u64>,
    /// `scan_epoch`: the start of the scan in `protected` (see `sync`).
    epoch: Array<MapData, i64>,
    excluded: HashMap<MapData, u32, u32>,
    /// What is in the kernel maps now.
    current: BTreeSet<FileKey>,
    /// The nonzero words of `filter` now.
    words: BTreeMap<u32, u64>,
}

/// The maps the agent reads.
pub struct Outputs {
    pub events: RingBuf<MapData>,
    pub lost: Array<MapData, u64>,
    pub seen: HashMap<MapData, SeenKey, SeenVal>,
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// aya finds tracefs at /sys/kernel/tracing or /sys/kernel/debug/tracing; on hosts where
/// neither is mounted (some minimal images) the agent mounts it, as root may.
fn ensure_tracefs() -> anyhow::Result<()> {
    let mounted = |p: &str| {
        std::fs::read_dir(p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(anyhow::Error::from);
    let (source, target, fstype) = (c("nodev")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: all three are valid NUL-terminated strings that outlive the call; data is null,
    // which tracefs accepts. mount(2) touches no memory of ours besides reading them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "tracefs is not mounted and mounting it on {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| {
            Path::new(root)
                .join("events")
                .join(category)
                .join(name)
                .exists()
        })
}

/// Which kernel hooks carry the audit (see logaudit.bpf.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// `lsm/file_open`: every open, by any path into the kernel.
    Lsm,
    /// `fentry/security_file_open`: the same, where BPF LSM is not enabled.
    Fentry,
    /// The open-family syscall exit tracepoints (64-bit syscalls), plus io_uring.
    Tracepoint,
    /// One `tp_btf/sys_exit` program (64- and 32-bit syscalls), plus io_uring.
    Strict,
}

impl Hooks {
    /// Whether the programs turn an opened fd into its file (syscall exits, io_uring), rather
    /// than being handed the file (`lsm`, `fentry`).
    pub fn looks_up_fds(self) -> bool {
        matches!(self, Hooks::Tracepoint | Hooks::Strict)
    }

    /// The mode name reported in `agent.started` (`bypass_mode`).
    pub fn name(self) -> &'static str {
        match self {
            Hooks::Lsm => "lsm",
            Hooks::Fentry => "fentry",
            Hooks::Tracepoint => "tracepoint",
            Hooks::Strict => "strict",
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, function: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(function)
        .ok_or_else(|| anyhow::anyhow!("program {function} missing from the object"))?
        .try_into()
        .map_err(|e| anyhow::Error::new(e).context(format!("program {function}")))
}

fn refused(function: &str) -> impl FnOnce(aya::programs::ProgramError) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e).context(format!("the kernel refused program {function}"))
}

impl Probe {
    /// Loads `objects` (the agent's, or the bench's empty one with the same program names) with
    /// the running kernel's BTF (for CO-RE), the agent's kfunc calls linked to the kernel's
    /// ids, and attaches the programs of `hooks`. Where the kernel lacks the kfunc or refuses
    /// the kfunc build, the build without kfuncs is loaded instead and `fd_lookup` says why:
    /// the audit never goes blind for want of a kfunc.
    pub fn load(objects: Objects, hooks: Hooks) -> anyhow::Result<Probe> {
        let btf = Btf::from_sys_fs().map_err(|e| {
            anyhow::Error::new(e).context("no kernel BTF (/sys/kernel/btf/vmlinux)")
        })?;
        let probe_read = loggate_agent_ebpf::probe_read_object();
        match objects {
            Objects::Empty => Self::load_object(
                loggate_agent_ebpf::empty_object(),
                hooks,
                &btf,
                FdLookup::None,
                false,
            ),
            // These hooks are handed the file: their programs look up no fd and call no kfunc
            // (the same in both builds), so they never depend on the kfunc, and a refusal of
            // them is never the kfunc's doing.
            Objects::Agent { .. } if !hooks.looks_up_fds() => {
                Self::load_object(probe_read, hooks, &btf, FdLookup::None, true)
            }
            Objects::Agent { kfuncs: false } => {
                let reason = "configuration: bypass.kfuncs = false".to_string();
                Self::load_object(
                    probe_read,
                    hooks,
                    &btf,
                    FdLookup::ProbeRead { reason },
                    true,
                )
            }
            Objects::Agent { kfuncs: true } => {
                Self::load_agent(kfunc::rdonly_cast_id(&btf), hooks, &btf)
            }
        }
    }

    /// The agent's kfunc build linked to `kfunc_id` (the kernel's `bpf_rdonly_cast`), else its
    /// build without kfuncs, with the reason.
    fn load_agent(
        kfunc_id: Result<u32, kfunc::LinkError>,
        hooks: Hooks,
        btf: &Btf,
    ) -> anyhow::Result<Probe> {
        let with_kfuncs = kfunc_id
            .and_then(|id| kfunc::link_rdonly_cast(loggate_agent_ebpf::object(), id))
            .map_err(anyhow::Error::from)
            .and_then(|(object, _)| Self::load_object(&object, hooks, btf, FdLookup::Cast, true));
        let Err(e) = with_kfuncs else {
            return with_kfuncs;
        };
        let reason = format!("{e:#}");
        let probe_read = loggate_agent_ebpf::probe_read_object();
        Self::load_object(probe_read, hooks, btf, FdLookup::ProbeRead { reason }, true).map_err(
            |fallback_error| {
                fallback_error.context(format!(
                    "the build without kfuncs failed too (the kfunc build: {e:#})"
                ))
            },
        )
    }

    /// Loads one object and attaches the programs of `hooks`. The main hook is required;
    /// io_uring's, and with `moves` the move programs (who renamed or linked a protected file),
    /// are attached when the kernel allows them and listed in `missing` otherwise.
    fn load_object(
        object: &[u8],
        hooks: Hooks,
        btf: &Btf,
        fd_lookup: FdLookup,
        moves: bool,
    ) -> anyhow::Result<Probe> {
        let mut ebpf = EbpfLoader::new()
            .btf(Some(btf))
            .load(object)
            .map_err(|e| anyhow::Error::new(e).context("loading the BPF object failed"))?;
        let mut attached = Vec::new();
        match hooks {
            Hooks::Lsm => {
                let (function, hook) = names::LSM_PROGRAM;
                let p: &mut Lsm = program(&mut ebpf, function)?;
                p.load(hook, btf).map_err(refused(function))?;
                p.attach()?;
                attached.push(hook);
            }
            Hooks::Fentry => {
                let (function, target) = names::FENTRY_PROGRAM;
                let p: &mut FEntry = program(&mut ebpf, function)?;
                p.load(target, btf).map_err(refused(function))?;
                p.attach()?;
                attached.push(target);
            }
            Hooks::Tracepoint => {
                ensure_tracefs()?;
                for (function, category, tracepoint) in names::OPEN_EXIT_PROGRAMS {
                    if !tracepoint_exists(category, tracepoint) {
                        if tracepoint == "sys_exit_openat" {
                            anyhow::bail!("this kernel has no {category}/{tracepoint} tracepoint");
                        }
                        continue;
                    }
                    let p: &mut TracePoint = program(&mut ebpf, function)?;
                    p.load().map_err(refused(function))?;
                    p.attach(category, tracepoint).map_err(|e| {
                        anyhow::Error::new(e)
                            .context(format!("attaching {function} to {category}/{tracepoint}"))
                    })?;
                    attached.push(tracepoint);
                }
            }
            Hooks::Strict => {
                let (function, tracepoint) = names::STRICT_PROGRAM;
                attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint)?;
                attached.push(tracepoint);
            }
        }
        let mut missing = Vec::new();
        if hooks.looks_up_fds() {
            let (function, tracepoint) = names::IO_URING_PROGRAM;
            match attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint) {
                Ok(()) => attached.push(tracepoint),
                Err(e) => missing.push(format!("{tracepoint}: {e:#}")),
            }
        }
        if moves {
            // A kernel before 6.13 has none of them: moves out of the roots are then recorded
            // by the rescan without their mover (`bypass.left_roots`, `moved_by_*` null).
            for (function, tracepoint) in names::MOVE_PROGRAMS {
                match attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint) {
                    Ok(()) => attached.push(tracepoint),
                    Err(e) => missing.push(format!("{tracepoint}: {e:#}")),
                }
            }
        }
        Ok(Probe {
            ebpf,
            hooks,
            attached,
            missing,
            fd_lookup,
        })
    }

    /// Time spent in, and runs of, every loaded program since load (counted by the kernel only
    /// while `kernel.bpf_stats_enabled` is 1).
    pub fn run_stats(&self) -> (u64, u64) {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .fold((0, 0), |(ns, n), info| {
                let run_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                (ns.saturating_add(run_ns), n + info.run_count())
            })
    }
    /// Takes the maps out of the object (the programs keep their references to them).
    pub fn split(&mut self) -> anyhow::Result<(ProtectedMaps, Outputs)> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))
        };
        let typed = |name: &str, e: aya::maps::MapError| anyhow::anyhow!("map {name}: {e}");
        let protected =
            HashMap::try_from(take(names::PROTECTED)?).map_err(|e| typed(names::PROTECTED, e))?;
        let filter =
            Array::try_from(take(names::INO_FILTER)?).map_err(|e| typed(names::INO_FILTER, e))?;
        let epoch =
            Array::try_from(take(names::SCAN_EPOCH)?).map_err(|e| typed(names::SCAN_EPOCH, e))?;
        let excluded = HashMap::try_from(take(names::EXCLUDED_TGIDS)?)
            .map_err(|e| typed(names::EXCLUDED_TGIDS, e))?;
        let events =
            RingBuf::try_from(take(names::EVENTS)?).map_err(|e| typed(names::EVENTS, e))?;
        let lost = Array::try_from(take(names::LOST)?).map_err(|e| typed(names::LOST, e))?;
        let seen = HashMap::try_from(take(names::SEEN)?).map_err(|e| typed(names::SEEN, e))?;
        Ok((
            ProtectedMaps {
                protected,
                filter,
                epoch,
                excluded,
                current: BTreeSet::new(),
                words: BTreeMap::new(),
            },
            Outputs { events, lost, seen },
        ))
    }
}

/// Loads and attaches a BTF tracepoint program (strict mode's `sys_exit`; `io_uring_complete`,
/// since io_uring opens bypass the syscall tracepoints).
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    function: &str,
    tracepoint: &str,
) -> anyhow::Result<()> {
    let p: &mut BtfTracePoint = program(ebpf, function)?;
    p.load(tracepoint, btf).map_err(refused(function))?;
    p.attach()?;
    Ok(())
}

impl ProtectedMaps {
    /// Never report opens by this thread group (the agent serving a read through the gate).
    pub fn exclude_tgid(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.excluded
            .insert(tgid, 1, 0)
            .map_err(|e| anyhow::anyhow!("excluding tgid {tgid}: {e}"))
    }

    /// Makes the kernel maps hold exactly `inventory`. The filter always covers the entries:
    /// its new bits are set before new entries are inserted, and bits are cleared only after
    /// the entries gone are removed (a rotated-away inode may be reused by an unrelated file).
    /// Last, `scan_epoch` is set to the scan's start (less a second: inode change times come
    /// from a coarse clock), never before its entries are in: the kernel's ancestor walk stops
    /// at an unprotected folder changed before then, which only the scan can vouch for.
    pub fn sync(&mut self, inventory: &Inventory) -> anyhow::Result<()> {
        self.sync_entries(inventory)?;
        self.epoch
            .set(0, inventory.started_unix.saturating_sub(1), 0)
            .map_err(|e| anyhow::anyhow!("scan_epoch map update: {e}"))
    }

    fn sync_entries(&mut self, inventory: &Inventory) -> anyhow::Result<()> {
        let wanted = filter_words(inventory.keys().map(|(k, _)| k.ino));
        let union = wanted
            .iter()
            .map(|(w, bits)| (*w, bits | self.words.get(w).copied().unwrap_or(0)));
        let union: BTreeMap<u32, u64> = union.collect();
        self.write_words(&union)?;
        for (key, kind) in inventory.keys() {
            if !self.current.contains(key) {
                self.protected
                    .insert(*key, kind.map_value(), 0)
                    .map_err(|e| anyhow::anyhow!("protected map insert: {e}"))?;
                self.current.insert(*key);
            }
        }
        let gone: Vec<FileKey> = self
            .current
            .iter()
            .filter(|k| !inventory.contains(k))
            .copied()
            .collect();
        for key in gone {
            // Already-absent keys are fine: the goal is only that they are gone.
            let _ = self.protected.remove(&key);
            self.current.remove(&key);
        }
        self.write_words(&wanted)
    }

    /// Writes the words of `target` that differ from the kernel's, and zeroes those absent.
    fn write_words(&mut self, target: &BTreeMap<u32, u64>) -> anyhow::Result<()> {
        let stale: Vec<u32> = self
            .words
            .keys()
            .filter(|w| !target.contains_key(w))
            .copied()
            .collect();
        let changed = target
            .iter()
            .filter(|(w, bits)| self.words.get(w) != Some(bits))
            .map(|(w, bits)| (*w, *bits));
        let updates: Vec<(u32, u64)> = changed.chain(stale.iter().map(|w| (*w, 0))).collect();
        for (word, bits) in updates {
            self.filter
                .set(word, bits, 0)
                .map_err(|e| anyhow::anyhow!("ino_filter map update: {e}"))?;
            if bits == 0 {
                self.words.remove(&word);
            } else {
                self.words.insert(word, bits);
            }
        }
        Ok(())
    }
}

/// The words of `ino_filter` with a bit for each inode: bit `ino % 64` of word
/// `(ino / 64) % INO_FILTER_WORDS`, as `maybe_protected` in logaudit.bpf.c tests them.
fn filter_words(inodes: impl Iterator<Item = u64>) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for ino in inodes {
        let word = u32::try_from((ino >> 6) % u64::from(names::INO_FILTER_WORDS))
            .expect("a remainder of a u32 divisor fits a u32");
        *words.entry(word).or_insert(0) |= 1u64 << (ino & 63);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading needs root and kernel BTF: the test is ignored in a plain `cargo test` and run
    /// by `cargo xtask test` as root (CI, a BTF kernel), where their absence fails it.
    fn kernel_btf_as_root() -> Btf {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("loading eBPF programs needs root; run it as root, as `cargo xtask test` does");
        }
        match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => panic!("this test needs the kernel's BTF (/sys/kernel/btf/vmlinux): {e}"),
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn a_kernel_that_refuses_or_lacks_the_kfunc_gets_the_build_without_it() {
        let btf = kernel_btf_as_root();
        // A FUNC id that is not a kfunc: the verifier refuses the call.
        let not_a_kfunc = btf
            .id_by_type_name_kind("vfs_read", aya_obj::btf::BtfKind::Func)
            .expect("vfs_read is in the kernel BTF");
        for (kfunc_id, why) in [
            (Ok(not_a_kfunc), "refused program"),
            (Err(kfunc::LinkError::NoKfunc), "no kfunc bpf_rdonly_cast"),
        ] {
            let probe = Probe::load_agent(kfunc_id, Hooks::Tracepoint, &btf)
                .expect("the build without kfuncs loads");
            let FdLookup::ProbeRead { reason } = &probe.fd_lookup else {
                panic!("expected the probe-read build, got {:?}", probe.fd_lookup);
            };
            assert!(reason.contains(why), "{reason}");
            assert!(
                probe.attached.contains(&"sys_exit_openat"),
                "{:?}",
                probe.attached
            );
        }
        let linked = Probe::load_agent(kfunc::rdonly_cast_id(&btf), Hooks::Tracepoint, &btf)
            .expect("this kernel has bpf_rdonly_cast");
        assert_eq!(linked.fd_lookup, FdLookup::Cast);
    }

    #[test]
    fn filter_words_set_one_bit_per_inode_and_wrap_at_the_filter_size() {
        let span = 64 * u64::from(names::INO_FILTER_WORDS);
        let words = filter_words([1, 2, 64, span + 3].into_iter());
        assert_eq!(words.get(&0), Some(&0b1110));
        assert_eq!(words.get(&1), Some(&1));
        assert_eq!(words.len(), 2);
    }
}
