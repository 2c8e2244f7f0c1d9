//! `cargo xtask build-ebpf`: rebuilds `agent-ebpf/bpf/logaudit.bpf.o` from its C source, and the
//! check `cargo xtask test` runs first: a rebuild must equal the committed object byte for byte.
//!
//! The build is reproducible: `-fdebug-prefix-map` replaces the checkout's absolute path (which
//! clang writes into DWARF and into `.BTF.ext` line info), and `llvm-strip -g` drops DWARF (which
//! also names the clang version) while keeping `.BTF`/`.BTF.ext` for CO-RE. The same clang major
//! version gives the same bytes; the committed object is built with Debian 12's clang 14.

use crate::{run, workspace_root};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "logaudit.bpf.c";

fn crate_dir() -> PathBuf {
    workspace_root().join("agent-ebpf")
}

/// The committed object.
pub fn committed_object() -> PathBuf {
    crate_dir().join("bpf/logaudit.bpf.o")
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
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !available("apt-get") {
        bail!(
            "building the eBPF object needs {clang} and {strip}; install clang and llvm \
             (Debian: apt-get install clang llvm) or set CLANG / LLVM_STRIP"
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "clang",
            "llvm",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Compiles the program into `out` (created or replaced).
pub fn build(out: &Path) -> anyhow::Result<()> {
    let src = crate_dir().join("src");
    let src = std::fs::canonicalize(&src).with_context(|| format!("{}", src.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    run(Command::new(tool("CLANG", "clang"))
        .current_dir(&src)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-fdebug-prefix-map={}=.", src.display()))
        .args(["-c", SOURCE, "-o"])
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

/// Rebuilds into the target folder and fails unless it equals the committed object.
pub fn check(target: &Path) -> anyhow::Result<()> {
    let rebuilt = target.join("ebpf-check").join("logaudit.bpf.o");
    build(&rebuilt)?;
    let (a, b) = (std::fs::read(committed_object())?, std::fs::read(&rebuilt)?);
    if a != b {
        bail!(
            "agent-ebpf/bpf/logaudit.bpf.o does not match its source: a rebuild with {} gives \
             {} bytes ({}), the committed object has {} bytes. Run `cargo xtask build-ebpf` and \
             commit the object (it is built with Debian 12's clang 14; another clang major \
             version produces different bytes).",
            clang_version(),
            b.len(),
            rebuilt.display(),
            a.len()
        );
    }
    eprintln!("xtask: the committed eBPF object matches a rebuild of its source");
    Ok(())
}
