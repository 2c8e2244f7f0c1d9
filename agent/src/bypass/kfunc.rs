//! Linking the kernel function (kfunc) the BPF object calls, which aya 0.14 cannot do.
//!
//! logaudit.bpf.c calls `bpf_rdonly_cast` (a typed, fault-tolerant view of any kernel address;
//! the verifier turns the call into a register move) as a raw call instruction: `BPF_JMP |
//! BPF_CALL`, `src_reg` = `BPF_PSEUDO_KFUNC_CALL`, `off` 0 (vmlinux BTF) and a placeholder `imm`.
//! The kernel wants that `imm` to be the kfunc's `FUNC` id in its own BTF, which differs from
//! kernel to kernel, so the agent looks it up in `/sys/kernel/btf/vmlinux` and writes it into a
//! copy of the object before handing the copy to aya (which leaves such calls alone: it only
//! relocates calls with `src_reg` = `BPF_PSEUDO_CALL`).
//!
//! The object is read as an ELF file with bounds checks at every step: only instructions of
//! executable sections are patched, and a malformed file is an error, never a panic.

use aya::Btf;
use aya_obj::btf::BtfKind;

/// The kfunc the object calls.
pub const RDONLY_CAST: &str = "bpf_rdonly_cast";
/// The `imm` of its placeholder call (`RDONLY_CAST_PLACEHOLDER` in logaudit.bpf.c).
const RDONLY_CAST_PLACEHOLDER: u32 = 0x6c67_cafe;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` = `BPF_PSEUDO_KFUNC_CALL` (2) in the high nibble, `dst_reg` 0 in the low one.
const KFUNC_CALL_REGS: u8 = 0x20;
const INSN_LEN: usize = 8;

/// ELF constants (System V gABI).
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const SHF_EXECINSTR: u64 = 0x4;
const SHT_NOBITS: u32 = 8;
const SECTION_HEADER_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the kernel's BTF has no kfunc {RDONLY_CAST}")]
    NoKfunc,
    #[error(
        "the BPF object is not a 64-bit little-endian ELF file with valid section headers: {0}"
    )]
    Malformed(&'static str),
}

/// The `FUNC` id of `bpf_rdonly_cast` in the running kernel's BTF.
pub fn rdonly_cast_id(btf: &Btf) -> Result<u32, LinkError> {
    btf.id_by_type_name_kind(RDONLY_CAST, BtfKind::Func)
        .map_err(|_| LinkError::NoKfunc)
}

/// A copy of `object` whose placeholder `bpf_rdonly_cast` calls call the kfunc `id`, and how
/// many calls were patched (0 for an object that makes none, such as the bench's empty one).
pub fn link_rdonly_cast(object: &[u8], id: u32) -> Result<(Vec<u8>, usize), LinkError> {
    let mut linked = object.to_vec();
    let mut calls = 0;
    for range in executable_sections(object)? {
        let Some(code) = linked.get_mut(range) else {
            return Err(LinkError::Malformed("a section lies outside the file"));
        };
        for insn in code.chunks_exact_mut(INSN_LEN) {
            if is_placeholder_call(insn) {
                insn[4..8].copy_from_slice(&id.to_le_bytes());
                calls += 1;
            }
        }
    }
    Ok((linked, calls))
}

fn is_placeholder_call(insn: &[u8]) -> bool {
    insn[0] == CALL
        && insn[1] == KFUNC_CALL_REGS
        && insn[2..4] == [0, 0]
        && insn[4..8] == RDONLY_CAST_PLACEHOLDER.to_le_bytes()
}

/// The byte ranges, within the file, of its executable sections.
fn executable_sections(elf: &[u8]) -> Result<Vec<std::ops::Range<usize>>, LinkError> {
    use LinkError::Malformed;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(Malformed("no ELF magic"));
    }
    if elf.get(4) != Some(&ELFCLASS64) || elf.get(5) != Some(&ELFDATA2LSB) {
        return Err(Malformed("not ELFCLASS64 little-endian"));
    }
    let shoff = read_u64(elf, 0x28).ok_or(Malformed("truncated ELF header"))?;
    let shentsize = read_u16(elf, 0x3a).ok_or(Malformed("truncated ELF header"))?;
    let shnum = read_u16(elf, 0x3c).ok_or(Malformed("truncated ELF header"))?;
    if shnum > 0 && usize::from(shentsize) != SECTION_HEADER_LEN {
        return Err(Malformed("unexpected section header size"));
    }
    let shoff = usize::try_from(shoff).map_err(|_| Malformed("section headers out of range"))?;
    usize::from(shnum)
        .checked_mul(SECTION_HEADER_LEN)
        .and_then(|len| shoff.checked_add(len))
        .filter(|end| *end <= elf.len())
        .ok_or(Malformed("the section headers lie outside the file"))?;
    let mut ranges = Vec::new();
    for i in 0..usize::from(shnum) {
        let header = i
            .checked_mul(SECTION_HEADER_LEN)
            .and_then(|o| o.checked_add(shoff))
            .ok_or(Malformed("section headers out of range"))?;
        let field = |at: usize| header.checked_add(at);
        let sh_type = field(4).and_then(|o| read_u32(elf, o));
        let sh_flags = field(8).and_then(|o| read_u64(elf, o));
        let sh_offset = field(0x18).and_then(|o| read_u64(elf, o));
        let sh_size = field(0x20).and_then(|o| read_u64(elf, o));
        let (Some(sh_type), Some(sh_flags), Some(sh_offset), Some(sh_size)) =
            (sh_type, sh_flags, sh_offset, sh_size)
        else {
            return Err(Malformed("truncated section header"));
        };
        if sh_flags & SHF_EXECINSTR == 0 || sh_type == SHT_NOBITS {
            continue;
        }
        let start = usize::try_from(sh_offset).map_err(|_| Malformed("section out of range"))?;
        let len = usize::try_from(sh_size).map_err(|_| Malformed("section out of range"))?;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= elf.len())
            .ok_or(Malformed("a section lies outside the file"))?;
        if len % INSN_LEN != 0 {
            return Err(Malformed("an executable section is not whole instructions"));
        }
        ranges.push(start..end);
    }
    Ok(ranges)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholder() -> [u8; 8] {
        let mut insn = [CALL, KFUNC_CALL_REGS, 0, 0, 0, 0, 0, 0];
        insn[4..].copy_from_slice(&RDONLY_CAST_PLACEHOLDER.to_le_bytes());
        insn
    }

    fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn every_placeholder_call_of_the_agents_object_is_linked_and_nothing_else_changes() {
        let object = loggate_agent_ebpf::object();
        let before = occurrences(object, &placeholder());
        assert!(before > 0, "the object makes no bpf_rdonly_cast call");
        let (linked, calls) = link_rdonly_cast(object, 0x0001_2345).expect("the object links");
        assert_eq!(calls, before);
        assert_eq!(occurrences(&linked, &placeholder()), 0);
        let call = [CALL, KFUNC_CALL_REGS, 0, 0, 0x45, 0x23, 0x01, 0x00];
        assert_eq!(occurrences(&linked, &call), calls);
        let changed = object.iter().zip(&linked).filter(|(a, b)| a != b).count();
        assert!(
            changed <= 4 * calls,
            "{changed} bytes changed for {calls} calls"
        );
        assert_eq!(linked.len(), object.len());
    }

    #[test]
    fn objects_without_the_kfunc_link_unchanged() {
        for object in [
            loggate_agent_ebpf::empty_object(),
            loggate_agent_ebpf::probe_read_object(),
        ] {
            let (linked, calls) = link_rdonly_cast(object, 7).expect("the object links");
            assert_eq!(calls, 0);
            assert_eq!(linked, object);
        }
    }

    #[test]
    fn placeholder_bytes_outside_executable_sections_are_left_alone() {
        // A valid header with no sections, followed by the placeholder as data.
        let mut elf = loggate_agent_ebpf::empty_object()[..64].to_vec();
        elf[0x28..0x30].copy_from_slice(&0u64.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        elf.extend_from_slice(&placeholder());
        let (linked, calls) = link_rdonly_cast(&elf, 7).expect("a header-only file links");
        assert_eq!((calls, linked), (0, elf));
    }

    #[test]
    fn truncated_or_corrupt_objects_are_errors_not_panics() {
        let object = loggate_agent_ebpf::object();
        for len in [0, 3, 16, 0x3d, 200, object.len() - 1] {
            // Cutting into the section headers (at the end of the file) must be an error.
            if let Ok((_, calls)) = link_rdonly_cast(&object[..len], 1) {
                panic!("a file cut to {len} bytes linked {calls} calls");
            }
        }
        let mut far = object.to_vec();
        far[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            link_rdonly_cast(&far, 1),
            Err(LinkError::Malformed(_))
        ));
        let mut not_elf = object.to_vec();
        not_elf[0] = 0;
        assert!(matches!(
            link_rdonly_cast(&not_elf, 1),
            Err(LinkError::Malformed(_))
        ));
    }
}
