//! `cargo xtask build-ebpf`: rebuilds the committed eBPF objects in `agent-ebpf/bpf/` from their C
//! sources (`logaudit`, the agent's program, and `empty`, the cost floor `cargo xtask bench ebpf`
//! measures against), and the check `cargo xtask test` runs first: a rebuild must equal each
//! committed object byte for byte.
//!
//! The build is reproducible: `-fdebug-prefix-map` replaces the checkout's absolute path (which
//! clang writes into DWARF and into `.BTF.ext` line info), and `llvm-strip -g` drops DWARF (which
//! also names the clang version) while keeping `.BTF`/`.BTF.ext` for CO-RE. The same clang major
//! version gives the same bytes; the committed object is built with Debian 12's clang 14.

use crate::{run, workspace_root};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs, by stem: `src/STEM.bpf.c` is compiled into `bpf/STEM.bpf.o`
/// (`logaudit_probe_read` is logaudit's build without kfuncs, the agent's fallback).
pub const OBJECTS: [&str; 3] = ["logaudit", "logaudit_probe_read", "empty"];

fn crate_dir() -> PathBuf {
    workspace_root().join("agent-ebpf")
}

/// The committed object of `stem`.
pub fn committed_object(stem: &str) -> PathBuf {
    crate_dir().join(format!("bpf/{stem}.bpf.o"))
}

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs clang and llvm (for `llvm-strip`) from the distribution when missing: as root with
/// apt-get (Debian/Ubuntu, as in CI); anywhere else, says what to install.
pub fn ensure_tools() -> anyhow::Result<()> {
    let (clang, strip) = (tool("CLANG", "clang"), tool("LLVM_STRIP", "llvm-strip"));
    if available(&clang) && available(&strip) {
        return Ok(());
    }
    crate::apt_install(&["clang", "llvm"]).with_context(|| {
        format!("building the eBPF object needs {clang} and {strip} (or set CLANG / LLVM_STRIP)")
    })
}

/// The bypass tests build a tiny static i386 program (`gcc -m32`) to prove strict mode sees
/// 32-bit opens; installs gcc-multilib as root with apt-get when gcc cannot target i386.
pub fn ensure_ia32_gcc() -> anyhow::Result<()> {
    let probe = std::env::temp_dir().join(format!("xtask-m32-{}", std::process::id()));
    let targets_i386 = Command::new("gcc")
        .args(["-m32", "-x", "c", "-c", "-o"])
        .arg(&probe)
        .arg("/dev/null")
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&probe);
    if targets_i386 {
        return Ok(());
    }
    crate::apt_install(&["gcc-multilib"])
}

/// Compiles `src/STEM.bpf.c` into `out` (created or replaced).
pub fn build(stem: &str, out: &Path) -> anyhow::Result<()> {
    let src = crate_dir().join("src");
    let src = std::fs::canonicalize(&src).with_context(|| format!("{}", src.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    run(Command::new(tool("CLANG", "clang"))
        .current_dir(&src)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-fdebug-prefix-map={}=.", src.display()))
        .args(["-c", &format!("{stem}.bpf.c"), "-o"])
        .arg(out))?;
    run(Command::new(tool("LLVM_STRIP", "llvm-strip"))
        .arg("-g")
        .arg(out))?;
    Ok(())
}

fn clang_version() -> String {
    Command::new(tool("CLANG", "clang"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown clang".into())
}

/// Rebuilds every committed object.
pub fn build_all() -> anyhow::Result<()> {
    for stem in OBJECTS {
        let out = committed_object(stem);
        build(stem, &out)?;
        eprintln!("xtask: wrote {}", out.display());
    }
    Ok(())
}

/// Rebuilds every object into the target folder and fails unless each equals its committed one.
pub fn check(target: &Path) -> anyhow::Result<()> {
    for stem in OBJECTS {
        let rebuilt = target.join("ebpf-check").join(format!("{stem}.bpf.o"));
        build(stem, &rebuilt)?;
        let (a, b) = (
            std::fs::read(committed_object(stem))?,
            std::fs::read(&rebuilt)?,
        );
        if a != b {
            bail!(
                "agent-ebpf/bpf/{stem}.bpf.o does not match its source: a rebuild with {} gives \
                 {} bytes ({}), the committed object has {} bytes. Run `cargo xtask build-ebpf` \
                 and commit the objects (they are built with Debian 12's clang 14; another clang \
                 major version produces different bytes).",
                clang_version(),
                b.len(),
                rebuilt.display(),
                a.len()
            );
        }
    }
    eprintln!("xtask: the committed eBPF objects match a rebuild of their sources");
    Ok(())
}
