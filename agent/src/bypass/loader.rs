//! Loading and attaching the kernel program (`loggate-agent-ebpf`) with aya, and the typed
//! handles on its maps. Everything that can fail at load time fails here, with a reason a person
//! can act on; the caller decides whether to fall back.

use super::inventory::{FileKey, Inventory};
use super::kfunc;
use super::pins::{self, PinDir};
use super::repeats::{SeenKey, SeenVal};
use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, FEntry, Lsm, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use loggate_agent_ebpf::names;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The loaded, attached program and its maps. The programs stay attached while this lives (and
/// after, while their links are pinned: see `pins`).
pub struct Probe {
    /// The object as loaded; `None` when the programs were adopted from pins.
    ebpf: Option<Ebpf>,
    /// The attached hooks' links, taken out of the programs so that they can be pinned.
    links: Vec<(&'static str, FdLink)>,
    /// The links once pinned (or adopted from pins).
    pinned: Vec<PinnedLink>,
    /// Why these links cannot be pinned, if they cannot (the kernel lacks BPF perf links).
    pub unpinnable: Option<String>,
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
    /// Shared with [`super::ChildExclusions`], which excludes the agent's own children.
    excluded: super::exclusions::ExcludedMap,
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
    /// With pins: how much of `lost` has been audited, kept across restarts.
    pub lost_reported: Option<Array<MapData, u64>>,
    /// The adoption generation (see [`advance_generation`]).
    pub generation: Array<MapData, u32>,
}

/// Advances the adoption generation of adopted programs, before their queue is taken: every
/// record whose program read an earlier value is of an open made before this agent adopted
/// them, whenever it is read. Returns the new value. At `u32::MAX` it stays (4 billion
/// adoptions: records then read as live, as without generations).
pub fn advance_generation(generation: &mut Array<MapData, u32>) -> anyhow::Result<u32> {
    let now = generation
        .get(&0, 0)
        .map_err(|e| anyhow::anyhow!("reading the map {}: {e}", names::GENERATION))?;
    let next = now.saturating_add(1);
    generation
        .set(0, next, 0)
        .map_err(|e| anyhow::anyhow!("advancing the map {}: {e}", names::GENERATION))?;
    Ok(next)
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
        let mut links = Vec::new();
        let mut unpinnable = None;
        match hooks {
            Hooks::Lsm => {
                let (function, hook) = names::LSM_PROGRAM;
                let p: &mut Lsm = program(&mut ebpf, function)?;
                p.load(hook, btf).map_err(refused(function))?;
                let id = p.attach()?;
                links.push((hook, FdLink::from(p.take_link(id)?)));
                attached.push(hook);
            }
            Hooks::Fentry => {
                let (function, target) = names::FENTRY_PROGRAM;
                let p: &mut FEntry = program(&mut ebpf, function)?;
                p.load(target, btf).map_err(refused(function))?;
                let id = p.attach()?;
                links.push((target, FdLink::from(p.take_link(id)?)));
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
                    let id = p.attach(category, tracepoint).map_err(|e| {
                        anyhow::Error::new(e)
                            .context(format!("attaching {function} to {category}/{tracepoint}"))
                    })?;
                    // A perf-event link is a BPF link (pinnable) only where the kernel has BPF
                    // perf links (5.15+); elsewhere it stays in the program, unpinned.
                    if aya::features().bpf_perf_link() {
                        let link = FdLink::try_from(p.take_link(id)?).map_err(|e| {
                            anyhow::Error::new(e).context(format!("link of {function}"))
                        })?;
                        links.push((tracepoint, link));
                    } else {
                        unpinnable = Some(
                            "this kernel has no BPF perf links (Linux 5.15+): tracepoint programs cannot stay attached without the agent".to_string(),
                        );
                    }
                    attached.push(tracepoint);
                }
            }
            Hooks::Strict => {
                let (function, tracepoint) = names::STRICT_PROGRAM;
                links.push((
                    tracepoint,
                    attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint)?,
                ));
                attached.push(tracepoint);
            }
        }
        let mut missing = Vec::new();
        if hooks.looks_up_fds() {
            let (function, tracepoint) = names::IO_URING_PROGRAM;
            match attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint) {
                Ok(link) => {
                    links.push((tracepoint, link));
                    attached.push(tracepoint);
                }
                Err(e) => missing.push(format!("{tracepoint}: {e:#}")),
            }
        }
        if moves {
            // A kernel before 6.13 has none of them: moves out of the roots are then recorded
            // by the rescan without their mover (`bypass.left_roots`, `moved_by_*` null).
            for (function, tracepoint) in names::MOVE_PROGRAMS {
                match attach_btf_tracepoint(&mut ebpf, btf, function, tracepoint) {
                    Ok(link) => {
                        links.push((tracepoint, link));
                        attached.push(tracepoint);
                    }
                    Err(e) => missing.push(format!("{tracepoint}: {e:#}")),
                }
            }
        }
        Ok(Probe {
            ebpf: Some(ebpf),
            links,
            pinned: Vec::new(),
            unpinnable,
            hooks,
            attached,
            missing,
            fd_lookup,
        })
    }

    /// Time spent in, and runs of, every loaded program since load (counted by the kernel only
    /// while `kernel.bpf_stats_enabled` is 1).
    pub fn run_stats(&self) -> (u64, u64) {
        let Some(ebpf) = &self.ebpf else {
            return (0, 0);
        };
        ebpf.programs()
            .filter_map(|(_, p)| p.info().ok())
            .fold((0, 0), |(ns, n), info| {
                let run_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                (ns.saturating_add(run_ns), n + info.run_count())
            })
    }
    /// Takes the maps out of the object (the programs keep their references to them), and with
    /// `pin_to` pins each in that folder under its name.
    pub fn split(&mut self, pin_to: Option<&Path>) -> anyhow::Result<(ProtectedMaps, Outputs)> {
        let ebpf = self
            .ebpf
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("adopted programs have no object to take maps from"))?;
        let mut take = |name: &str| {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))?;
            if let Some(dir) = pin_to {
                map.pin(dir.join(name))
                    .map_err(|e| anyhow::Error::new(e).context(format!("pinning map {name}")))?;
            }
            Ok::<Map, anyhow::Error>(map)
        };
        let typed = |name: &str, e: aya::maps::MapError| anyhow::anyhow!("map {name}: {e}");
        let protected =
            HashMap::try_from(take(names::PROTECTED)?).map_err(|e| typed(names::PROTECTED, e))?;
        let filter =
            Array::try_from(take(names::INO_FILTER)?).map_err(|e| typed(names::INO_FILTER, e))?;
        let epoch =
            Array::try_from(take(names::SCAN_EPOCH)?).map_err(|e| typed(names::SCAN_EPOCH, e))?;
        let excluded = HashMap::try_from(roomy_excluded(take(names::EXCLUDED_TGIDS)?)?)
            .map_err(|e| typed(names::EXCLUDED_TGIDS, e))?;
        let excluded = std::sync::Arc::new(std::sync::Mutex::new(excluded));
        let events =
            RingBuf::try_from(take(names::EVENTS)?).map_err(|e| typed(names::EVENTS, e))?;
        let lost = Array::try_from(take(names::LOST)?).map_err(|e| typed(names::LOST, e))?;
        let seen = HashMap::try_from(take(names::SEEN)?).map_err(|e| typed(names::SEEN, e))?;
        let generation =
            Array::try_from(take(names::GENERATION)?).map_err(|e| typed(names::GENERATION, e))?;
        let lost_reported = match pin_to {
            Some(dir) => Some(new_lost_reported(dir)?),
            None => None,
        };
        Ok((
            ProtectedMaps {
                protected,
                filter,
                epoch,
                excluded,
                current: BTreeSet::new(),
                words: BTreeMap::new(),
            },
            Outputs {
                events,
                lost,
                seen,
                lost_reported,
                generation,
            },
        ))
    }

    /// Pins every attached hook's link in `dir` (`link_<hook>`). Fails when the links cannot be
    /// pinned; a link whose pinning fails is lost (detached), so the caller must then load
    /// afresh rather than run on.
    pub fn pin_links(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.check_pinnable(dir)?;
        for (hook, link) in std::mem::take(&mut self.links) {
            let pinned = link
                .pin(dir.join(format!("{}{hook}", pins::LINK_PREFIX)))
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("pinning the link of {hook}"))
                })?;
            self.pinned.push(pinned);
        }
        Ok(())
    }

    /// Whether these programs can be pinned in `dir`, asked without losing anything: the
    /// links are pinnable BPF links, and the kernel pins one of the loaded programs (then
    /// unpinned at once).
    pub fn check_pinnable(&mut self, dir: &Path) -> anyhow::Result<()> {
        if let Some(why) = &self.unpinnable {
            anyhow::bail!("{why}");
        }
        // A link whose pin fails is lost (detached) with it; a program's is not: ask the kernel
        // with a loaded program first.
        if let Some(ebpf) = self.ebpf.as_mut() {
            let probe_path = dir.join("probe");
            if let Some((name, p)) = ebpf.programs_mut().find(|(_, p)| p.fd().is_ok()) {
                p.pin(&probe_path).map_err(|e| {
                    anyhow::Error::new(e)
                        .context(format!("the kernel refused to pin program {name}"))
                })?;
                std::fs::remove_file(&probe_path)
                    .map_err(|e| anyhow::Error::new(e).context("removing the probe pin"))?;
            }
        }
        Ok(())
    }

    /// Opens the programs pinned in `dir` by an earlier agent with the same objects and
    /// settings (the caller checked the marker): their links (so they stay attached while this
    /// agent runs, and after) and their maps. `fd_lookup` is the marker's. Fails, changing
    /// nothing, when a pin is missing or of the wrong kind: the caller then replaces them.
    pub fn adopt(
        dir: &PinDir,
        hooks: Hooks,
        fd_lookup: &str,
    ) -> anyhow::Result<(Probe, ProtectedMaps, Outputs)> {
        let fd_lookup = match fd_lookup {
            "rdonly_cast" => FdLookup::Cast,
            "probe_read" => FdLookup::ProbeRead {
                reason: "the pinned programs are the build without kfuncs (chosen when they were first loaded)".to_string(),
            },
            "none" => FdLookup::None,
            other => anyhow::bail!("unknown fd lookup {other:?} in the pin marker"),
        };
        let known: Vec<&'static str> = known_hooks();
        let mut attached = Vec::new();
        let mut pinned = Vec::new();
        let entries = dir.entries()?;
        for name in &entries {
            if let Some(hook) = name.strip_prefix(pins::LINK_PREFIX) {
                anyhow::ensure!(known.contains(&hook), "unknown pinned link {name:?}");
            }
        }
        // In the order the agent attaches them, as `agent.started` lists them.
        for hook in known {
            let name = format!("{}{hook}", pins::LINK_PREFIX);
            if !entries.contains(&name) {
                continue;
            }
            let link = PinnedLink::from_pin(dir.path().join(&name))
                .map_err(|e| anyhow::Error::new(e).context(format!("opening pinned {name}")))?;
            attached.push(hook);
            pinned.push(link);
        }
        let main = match hooks {
            Hooks::Lsm => names::LSM_PROGRAM.1,
            Hooks::Fentry => names::FENTRY_PROGRAM.1,
            Hooks::Tracepoint => "sys_exit_openat",
            Hooks::Strict => names::STRICT_PROGRAM.1,
        };
        anyhow::ensure!(
            attached.contains(&main),
            "the pinned link of {main} is missing"
        );
        // What the pinning agent could not attach is not attached now either.
        let mut missing = Vec::new();
        let optional = hooks
            .looks_up_fds()
            .then_some(names::IO_URING_PROGRAM.1)
            .into_iter()
            .chain(names::MOVE_PROGRAMS.iter().map(|(_, tp)| *tp));
        for hook in optional {
            if !attached.contains(&hook) {
                missing.push(format!(
                    "{hook}: not attached by the agent that pinned the programs"
                ));
            }
        }
        let open = |name: &str| -> anyhow::Result<Map> {
            let data = MapData::from_pin(dir.path().join(name))
                .map_err(|e| anyhow::Error::new(e).context(format!("opening pinned map {name}")))?;
            Map::from_map_data(data).map_err(|e| anyhow::anyhow!("pinned map {name}: {e}"))
        };
        let typed = |name: &str, e: aya::maps::MapError| anyhow::anyhow!("pinned map {name}: {e}");
        let protected =
            HashMap::try_from(open(names::PROTECTED)?).map_err(|e| typed(names::PROTECTED, e))?;
        let filter =
            Array::try_from(open(names::INO_FILTER)?).map_err(|e| typed(names::INO_FILTER, e))?;
        let epoch =
            Array::try_from(open(names::SCAN_EPOCH)?).map_err(|e| typed(names::SCAN_EPOCH, e))?;
        let excluded = HashMap::try_from(roomy_excluded(open(names::EXCLUDED_TGIDS)?)?)
            .map_err(|e| typed(names::EXCLUDED_TGIDS, e))?;
        let excluded = std::sync::Arc::new(std::sync::Mutex::new(excluded));
        let events =
            RingBuf::try_from(open(names::EVENTS)?).map_err(|e| typed(names::EVENTS, e))?;
        let lost = Array::try_from(open(names::LOST)?).map_err(|e| typed(names::LOST, e))?;
        let seen = HashMap::try_from(open(names::SEEN)?).map_err(|e| typed(names::SEEN, e))?;
        let generation =
            Array::try_from(open(names::GENERATION)?).map_err(|e| typed(names::GENERATION, e))?;
        let lost_reported = Array::try_from(open(pins::LOST_REPORTED)?)
            .map_err(|e| typed(pins::LOST_REPORTED, e))?;
        let mut maps = ProtectedMaps {
            protected,
            filter,
            epoch,
            excluded,
            current: BTreeSet::new(),
            words: BTreeMap::new(),
        };
        maps.read_back()?;
        let probe = Probe {
            ebpf: None,
            links: Vec::new(),
            pinned,
            unpinnable: None,
            hooks,
            attached,
            missing,
            fd_lookup,
        };
        Ok((
            probe,
            maps,
            Outputs {
                events,
                lost,
                seen,
                lost_reported: Some(lost_reported),
                generation,
            },
        ))
    }
}

/// Every hook name a pinned link can carry, in the order `load_object` attaches them.
fn known_hooks() -> Vec<&'static str> {
    let mut known: Vec<&'static str> = vec![names::LSM_PROGRAM.1, names::FENTRY_PROGRAM.1];
    known.extend(names::OPEN_EXIT_PROGRAMS.iter().map(|(_, _, tp)| *tp));
    known.extend([names::STRICT_PROGRAM.1, names::IO_URING_PROGRAM.1]);
    known.extend(names::MOVE_PROGRAMS.iter().map(|(_, tp)| *tp));
    known
}

/// The slot of `lost_reported` where an agent stopping cleanly leaves the time (Unix ms) from
/// which the reads still queued can date (see `super::StopClock`); 0 when unknown (a crash,
/// or pins made before the slot existed, whose map has one slot only).
pub const STOPPED_SLOT: u32 = 1;

/// Makes and pins the agent's own `lost_reported` counter in `dir`, at zero: slot 0 is how
/// much of `lost` was audited, slot [`STOPPED_SLOT`] the previous agent's stop time.
fn new_lost_reported(dir: &Path) -> anyhow::Result<Array<MapData, u64>> {
    let map: Array<MapData, u64> = Array::create(2, 0)
        .map_err(|e| anyhow::anyhow!("creating the map {}: {e}", pins::LOST_REPORTED))?;
    map.pin(dir.join(pins::LOST_REPORTED))
        .map_err(|e| anyhow::Error::new(e).context(format!("pinning {}", pins::LOST_REPORTED)))?;
    open_lost_reported(dir)
}

/// Opens the pinned `lost_reported` of `dir` (another handle on the same kernel map).
pub fn open_lost_reported(dir: &Path) -> anyhow::Result<Array<MapData, u64>> {
    let data = MapData::from_pin(dir.join(pins::LOST_REPORTED))
        .map_err(|e| anyhow::Error::new(e).context(format!("opening {}", pins::LOST_REPORTED)))?;
    Map::from_map_data(data)
        .map_err(|e| anyhow::anyhow!("{}: {e}", pins::LOST_REPORTED))
        .and_then(|m| {
            Array::try_from(m).map_err(|e| anyhow::anyhow!("{}: {e}", pins::LOST_REPORTED))
        })
}

/// Takes the previous agent's stop time out of `lost_reported` (Unix ms; `None` when it did
/// not stop cleanly), and clears it, so that a crash of this agent leaves it unknown.
pub fn take_stop_time(lost_reported: &mut Array<MapData, u64>) -> Option<i64> {
    let stopped = lost_reported.get(&STOPPED_SLOT, 0).ok()?;
    if stopped == 0 {
        return None;
    }
    if let Err(e) = lost_reported.set(STOPPED_SLOT, 0, 0) {
        tracing::warn!("bypass audit: clearing the pinned stop time: {e}");
    }
    i64::try_from(stopped).ok()
}

/// The pins an earlier agent left that this one replaces: held open so that the old programs
/// stay attached until the new ones are (no window), then detached, and their queue drained.
pub struct OldPins {
    links: Vec<PinnedLink>,
    /// The old ring buffer, to drain once the old programs are detached.
    pub events: Option<RingBuf<MapData>>,
    /// The old loss counter, read once the old programs are detached (losses during the
    /// overlap count too).
    lost: Option<Array<MapData, u64>>,
    /// How much of the old `lost` was audited.
    reported: u64,
    /// When the agent that ran them stopped reading (Unix ms), if it stopped cleanly.
    pub stopped_ms: Option<i64>,
}

impl OldPins {
    /// Opens whatever of an earlier agent's pins in `dir` can be opened (nothing is required:
    /// they may be incomplete, or of another layout).
    pub fn open(dir: &PinDir) -> OldPins {
        let mut links = Vec::new();
        for name in dir.entries().unwrap_or_default() {
            if name.starts_with(pins::LINK_PREFIX) {
                match PinnedLink::from_pin(dir.path().join(&name)) {
                    Ok(l) => links.push(l),
                    Err(e) => tracing::warn!("bypass audit: old pinned link {name}: {e}"),
                }
            }
        }
        let open = |name: &str| {
            MapData::from_pin(dir.path().join(name))
                .ok()
                .and_then(|d| Map::from_map_data(d).ok())
        };
        let events = open(names::EVENTS).and_then(|m| RingBuf::try_from(m).ok());
        let counter = |name: &str| open(name).and_then(|m| Array::<MapData, u64>::try_from(m).ok());
        let lost = counter(names::LOST);
        let mut reported_map = counter(pins::LOST_REPORTED);
        let reported = reported_map
            .as_ref()
            .and_then(|a| a.get(&0, 0).ok())
            .unwrap_or(0);
        let stopped_ms = reported_map.as_mut().and_then(take_stop_time);
        OldPins {
            links,
            events,
            lost,
            reported,
            stopped_ms,
        }
    }

    /// Detaches the old programs (their pins must be gone already): no program starts on the
    /// old ring buffer any more (one already running may still commit the record it
    /// reserved: `drain_old` waits a while for those), which can then be drained to its end.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// The old programs' losses, `(total, already audited)`, read now: call it after
    /// [`OldPins::detach`], so that the losses of the overlap are in.
    pub fn lost(&self) -> Option<(u64, u64)> {
        let total = self.lost.as_ref()?.get(&0, 0).ok()?;
        Some((total, self.reported))
    }
}

/// Loads and attaches a BTF tracepoint program (strict mode's `sys_exit`; `io_uring_complete`,
/// since io_uring opens bypass the syscall tracepoints).
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    function: &str,
    tracepoint: &str,
) -> anyhow::Result<FdLink> {
    let p: &mut BtfTracePoint = program(ebpf, function)?;
    p.load(tracepoint, btf).map_err(refused(function))?;
    let id = p.attach()?;
    Ok(FdLink::from(p.take_link(id)?))
}

/// The fewest entries `excluded_tgids` must hold: the agent, and one `journalctl` for each
/// stream at the highest `limits.max_streams` (a journal stream runs one at a time).
pub const EXCLUDED_TGIDS_NEEDED: usize = 1 + crate::config::MAX_STREAMS_CEILING;

/// `map` (`excluded_tgids`), refused when it cannot hold [`EXCLUDED_TGIDS_NEEDED`] entries:
/// a full map would make journal reads report their own `journalctl` as bypass reads under
/// load. The object is built with room for it; this catches an object built otherwise.
fn roomy_excluded(map: Map) -> anyhow::Result<Map> {
    if let Map::HashMap(data) = &map {
        let max = data
            .info()
            .map_err(|e| anyhow::anyhow!("reading map {}'s size: {e}", names::EXCLUDED_TGIDS))?
            .max_entries();
        if usize::try_from(max).is_ok_and(|max| max < EXCLUDED_TGIDS_NEEDED) {
            anyhow::bail!(
                "map {} holds {max} entries, fewer than the agent and one journalctl per stream ({EXCLUDED_TGIDS_NEEDED}): rebuild the object with `cargo xtask build-ebpf`",
                names::EXCLUDED_TGIDS
            );
        }
    }
    Ok(map)
}

impl ProtectedMaps {
    /// Learns what adopted maps hold (the protected keys, the filter's nonzero words), so
    /// that `sync` changes only the difference, and forgets the processes excluded by the
    /// agent that pinned them (its pid, and its `journalctl` children's, may belong to anyone
    /// by now).
    fn read_back(&mut self) -> anyhow::Result<()> {
        for key in self.protected.keys() {
            self.current
                .insert(key.map_err(|e| anyhow::anyhow!("reading the pinned protected map: {e}"))?);
        }
        for (word, bits) in self.filter.iter().enumerate() {
            let bits = bits.map_err(|e| anyhow::anyhow!("reading the pinned ino_filter: {e}"))?;
            if bits != 0 {
                self.words.insert(u32::try_from(word)?, bits);
            }
        }
        let mut excluded = self.excluded.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<u32> = excluded.keys().filter_map(Result::ok).collect();
        for tgid in stale {
            let _ = excluded.remove(&tgid);
        }
        Ok(())
    }

    /// Never report opens by this thread group (the agent serving a read through the gate).
    /// The entry holds its start time: left behind by a `SIGKILL`, it hides no later process
    /// given that pid (see [`super::exclusions::start_ticks`]).
    pub fn exclude_tgid(&mut self, tgid: u32) -> anyhow::Result<()> {
        let started = super::exclusions::start_ticks(tgid)?;
        self.excluded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tgid, started, 0)
            .map_err(|e| anyhow::anyhow!("excluding tgid {tgid}: {e}"))
    }

    /// The kernel's map of excluded processes, for the agent's own children (see
    /// [`super::ChildExclusions`]).
    pub fn excluded(&self) -> super::exclusions::ExcludedMap {
        self.excluded.clone()
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

impl Drop for ProtectedMaps {
    /// At a stop the pinned programs stay attached: no pid may stay excluded while no agent
    /// runs (another process could be given it before the next agent starts): neither this
    /// process's nor a child's still being ended (its open after this is over-reported, never
    /// hidden).
    fn drop(&mut self) {
        let mut excluded = self.excluded.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<u32> = excluded.keys().filter_map(Result::ok).collect();
        for tgid in all {
            let _ = excluded.remove(&tgid);
        }
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
