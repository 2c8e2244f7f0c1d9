//! Loading and attaching the kernel program (`loggate-agent-ebpf`) with aya, and the typed
//! handles on its maps. Everything that can fail at load time fails here, with a reason a person
//! can act on; the caller decides whether to fall back.

use super::inventory::{FileKey, Inventory};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use loggate_agent_ebpf::names;
use std::collections::BTreeSet;
use std::path::Path;

/// The loaded, attached program and its maps. The programs stay attached while `ebpf` lives.
pub struct Probe {
    ebpf: Ebpf,
    pub attached: Vec<&'static str>,
    /// Optional hooks that could not be attached, and why.
    pub missing: Vec<String>,
}

/// The maps the agent writes: the protected set and the excluded processes.
pub struct ProtectedMaps {
    protected: HashMap<MapData, FileKey, u32>,
    protected_ino: HashMap<MapData, u64, u32>,
    excluded: HashMap<MapData, u32, u32>,
    /// What is in the kernel maps now.
    current: BTreeSet<FileKey>,
}

/// The maps the agent reads.
pub struct Outputs {
    pub events: RingBuf<MapData>,
    pub lost: Array<MapData, u64>,
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

impl Probe {
    /// Loads the object with the running kernel's BTF (for CO-RE) and attaches the open-exit
    /// tracepoints that exist on this kernel. `sys_exit_openat` is required; the others are
    /// attached when present.
    pub fn load_tracepoints() -> anyhow::Result<Probe> {
        ensure_tracefs()?;
        let btf = Btf::from_sys_fs().map_err(|e| {
            anyhow::Error::new(e).context("no kernel BTF (/sys/kernel/btf/vmlinux)")
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(loggate_agent_ebpf::object())
            .map_err(|e| anyhow::Error::new(e).context("loading the BPF object failed"))?;
        let mut attached = Vec::new();
        for (function, category, tracepoint) in names::OPEN_EXIT_PROGRAMS {
            if !tracepoint_exists(category, tracepoint) {
                if tracepoint == "sys_exit_openat" {
                    anyhow::bail!("this kernel has no {category}/{tracepoint} tracepoint");
                }
                continue;
            }
            let program: &mut TracePoint = ebpf
                .program_mut(function)
                .ok_or_else(|| anyhow::anyhow!("program {function} missing from the object"))?
                .try_into()
                .map_err(|e| anyhow::Error::new(e).context(format!("program {function}")))?;
            program.load().map_err(|e| {
                anyhow::Error::new(e).context(format!("the kernel refused program {function}"))
            })?;
            program.attach(category, tracepoint).map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("attaching {function} to {category}/{tracepoint}"))
            })?;
            attached.push(tracepoint);
        }
        let mut missing = Vec::new();
        match attach_io_uring(&mut ebpf, &btf) {
            Ok(()) => attached.push(names::IO_URING_PROGRAM.1),
            Err(e) => missing.push(format!("{}: {e:#}", names::IO_URING_PROGRAM.1)),
        }
        Ok(Probe {
            ebpf,
            attached,
            missing,
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
        let protected_ino = HashMap::try_from(take(names::PROTECTED_INO)?)
            .map_err(|e| typed(names::PROTECTED_INO, e))?;
        let excluded = HashMap::try_from(take(names::EXCLUDED_TGIDS)?)
            .map_err(|e| typed(names::EXCLUDED_TGIDS, e))?;
        let events =
            RingBuf::try_from(take(names::EVENTS)?).map_err(|e| typed(names::EVENTS, e))?;
        let lost = Array::try_from(take(names::LOST)?).map_err(|e| typed(names::LOST, e))?;
        Ok((
            ProtectedMaps {
                protected,
                protected_ino,
                excluded,
                current: BTreeSet::new(),
            },
            Outputs { events, lost },
        ))
    }
}

/// io_uring opens bypass the syscall tracepoints; a BTF tracepoint on `io_uring_complete` sees
/// them. Optional: kernels without io_uring, or that refuse BTF tracepoints, still get the rest.
fn attach_io_uring(ebpf: &mut Ebpf, btf: &Btf) -> anyhow::Result<()> {
    let (function, tracepoint) = names::IO_URING_PROGRAM;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(function)
        .ok_or_else(|| anyhow::anyhow!("program {function} missing from the object"))?
        .try_into()?;
    program
        .load(tracepoint, btf)
        .map_err(|e| anyhow::Error::new(e).context(format!("the kernel refused {function}")))?;
    program.attach()?;
    Ok(())
}

impl ProtectedMaps {
    /// Never report opens by this thread group (the agent serving a read through the gate).
    pub fn exclude_tgid(&mut self, tgid: u32) -> anyhow::Result<()> {
        self.excluded
            .insert(tgid, 1, 0)
            .map_err(|e| anyhow::anyhow!("excluding tgid {tgid}: {e}"))
    }

    /// Makes the kernel maps hold exactly `inventory`: adds new entries first, then removes
    /// the ones gone (a rotated-away inode may be reused by an unrelated file).
    pub fn sync(&mut self, inventory: &Inventory) -> anyhow::Result<()> {
        for (key, kind) in inventory.keys() {
            if !self.current.contains(key) {
                self.protected
                    .insert(*key, kind.map_value(), 0)
                    .map_err(|e| anyhow::anyhow!("protected map insert: {e}"))?;
                self.protected_ino
                    .insert(key.ino, 1, 0)
                    .map_err(|e| anyhow::anyhow!("protected_ino map insert: {e}"))?;
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
            if !self.current.iter().any(|k| k.ino == key.ino) {
                let _ = self.protected_ino.remove(&key.ino);
            }
        }
        Ok(())
    }
}
