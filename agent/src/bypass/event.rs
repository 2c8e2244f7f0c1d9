//! The record the kernel program emits for one bypass open, as read from the ring buffer.

use std::mem::size_of;
use std::path::PathBuf;

/// `struct event` in `agent-ebpf/src/logaudit.bpf.c`, field for field (no implicit padding: the
/// fields are laid out so every one is naturally aligned, and the size is a multiple of 8).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawEvent {
    pub cgroup_id: u64,
    pub ino: u64,
    pub dir_ino: u64,
    pub dev: u32,
    pub dir_dev: u32,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub fd: i32,
    pub flags: u32,
    pub matched: u16,
    pub hook: u16,
    pub comm: [u8; 16],
    pub name: [u8; 256],
    pub cmdline_len: u32,
    /// The adoption generation when the program reached the open (the map `generation`).
    pub generation: u32,
    pub cmdline: [u8; 256],
    pub exe_depth: u32,
    pub exe_reach: u32,
    pub exe: [[u8; 64]; 8],
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub pad2: u32,
    pub dir_depth: u32,
    pub sub_depth: u32,
    pub sub: [[u8; 128]; 7],
}

const _: () = assert!(size_of::<RawEvent>() == 2040);

/// `exe_reach` values: how far up the kernel's walk from the executable got.
const EXE_ROOT: u32 = 1;

/// `hook` values of moves (`HOOK_RENAME`... in logaudit.bpf.c; 0x100 marks a 32-bit syscall).
const HOOK_RENAME: u16 = 8;
const HOOK_LINK: u16 = 9;
const HOOK_MOVE_IO_URING: u16 = 10;

/// `matched` values.
pub const MATCH_FILE: u16 = 1;
pub const MATCH_DIR: u16 = 2;

impl RawEvent {
    /// Copies one ring-buffer record; `None` when it is shorter than an event (never expected:
    /// the kernel reserves exactly `sizeof(struct event)`).
    pub fn parse(bytes: &[u8]) -> Option<RawEvent> {
        if bytes.len() < size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: the slice holds at least size_of::<RawEvent>() bytes (checked above);
        // RawEvent is repr(C) and made only of integers and byte arrays, so every bit pattern is
        // a valid value; read_unaligned makes no assumption about the buffer's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
    }

    /// Copies a record queued by pinned programs, which may be an earlier agent's with another
    /// `struct event`: `None` unless it is exactly this layout's size (a longer record parsed
    /// as this layout would be misread, a shorter one cannot be read).
    pub fn parse_exact(bytes: &[u8]) -> Option<RawEvent> {
        if bytes.len() != size_of::<RawEvent>() {
            return None;
        }
        RawEvent::parse(bytes)
    }

    pub fn comm(&self) -> String {
        c_string(&self.comm)
    }

    /// The opener's argv as the kernel read it at the open (NUL-separated, at most 256 bytes),
    /// `None` when it could not be read (a kernel thread, or argv paged out).
    pub fn cmdline_bytes(&self) -> Option<&[u8]> {
        let len = (self.cmdline_len as usize).min(self.cmdline.len());
        (len > 0).then(|| &self.cmdline[..len])
    }

    /// The executable's path as the kernel read it at the open: `/usr/bin/cat` when the walk
    /// reached the opener's root; starting with `…/` when its leading components are unknown
    /// (a path deeper than 8 components, or a file on another mount, whose mount point is not
    /// read); `None` when nothing was read (a kernel thread, a name that could not be read).
    pub fn exe(&self) -> Option<String> {
        let depth = (self.exe_depth as usize).min(self.exe.len());
        if depth == 0 {
            return None;
        }
        let names: Vec<String> = self.exe[..depth]
            .iter()
            .rev()
            .map(|n| c_string(n))
            .collect();
        if names.iter().any(|n| n.is_empty() || n.contains('/')) {
            return None;
        }
        let prefix = if self.exe_reach == EXE_ROOT {
            ""
        } else {
            "…"
        };
        Some(format!("{prefix}/{}", names.join("/")))
    }

    /// The executable's (device in the kernel's encoding, inode) at the open, if read.
    pub fn exe_id(&self) -> Option<(u32, u64)> {
        (self.exe_ino != 0).then_some((self.exe_dev, self.exe_ino))
    }

    /// For a file matched through a protected folder (`MATCH_DIR`): its path relative to that
    /// folder, from the names of the folders between (nearest last) and its own name; `None`
    /// when the kernel could not read one of those names whole.
    pub fn path_below_folder(&self) -> Option<PathBuf> {
        let between = (self.dir_depth as usize).checked_sub(1)?;
        if between > self.sub.len() || (self.sub_depth as usize) < between {
            return None;
        }
        let mut rel = PathBuf::new();
        for name in self.sub[..between].iter().rev() {
            let name = c_string(name);
            if name.is_empty() || name.contains('/') || name == ".." {
                return None;
            }
            rel.push(name);
        }
        let own = self.name();
        if own.is_empty() || own.contains('/') || own == ".." {
            return None;
        }
        rel.push(own);
        Some(rel)
    }

    /// The basename the opener's path resolved to (the dentry's name: for a hard link, the
    /// link's own name).
    pub fn name(&self) -> String {
        c_string(&self.name)
    }

    /// Whether this is a move (a rename or link of a protected file, `moves`), not an open.
    pub fn is_move(&self) -> bool {
        matches!(
            self.hook & 0xff,
            HOOK_RENAME | HOOK_LINK | HOOK_MOVE_IO_URING
        )
    }

    /// The hook that saw the open (or move); `_ia32` marks a 32-bit syscall (an open: seen in
    /// strict mode only).
    pub fn hook(&self) -> &'static str {
        match self.hook {
            1 => "open",
            2 => "openat",
            3 => "openat2",
            4 => "open_by_handle_at",
            5 => "io_uring",
            11 => "io_uring_fixed",
            6 => "lsm",
            7 => "fentry",
            0x101 => "open_ia32",
            0x102 => "openat_ia32",
            0x103 => "openat2_ia32",
            0x104 => "open_by_handle_at_ia32",
            8 => "rename",
            9 => "link",
            10 => "io_uring",
            0x108 => "rename_ia32",
            0x109 => "link_ia32",
            _ => "unknown",
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `open(2)` flags as `O_RDONLY|O_CLOEXEC|…` (access mode first, then the set bits we know).
pub fn flags_text(flags: u32) -> String {
    let access = match flags & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    };
    let known: [(u32, &str); 11] = [
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o40000, "O_DIRECT"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o100000, "O_LARGEFILE"),
    ];
    let mut out = String::from(access);
    for (bit, name) in known {
        if flags & bit != 0 {
            out.push('|');
            out.push_str(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_record_is_refused_and_full_record_is_decoded() {
        assert!(RawEvent::parse(&[0u8; 100]).is_none());
        let mut bytes = vec![0u8; size_of::<RawEvent>() + 3];
        bytes[32..36].copy_from_slice(&4242u32.to_ne_bytes()); // pid
        bytes[44..48].copy_from_slice(&65534u32.to_ne_bytes()); // uid
        bytes[64..67].copy_from_slice(b"cat");
        bytes[80..87].copy_from_slice(b"api.log");
        let e = RawEvent::parse(&bytes).expect("long enough");
        assert_eq!((e.pid, e.uid), (4242, 65534));
        assert_eq!(e.comm(), "cat");
        assert_eq!(e.name(), "api.log");
    }

    #[test]
    fn a_queued_record_of_another_layout_is_refused_whether_shorter_or_longer() {
        let size = size_of::<RawEvent>();
        assert!(RawEvent::parse_exact(&vec![0u8; size - 8]).is_none());
        assert!(RawEvent::parse_exact(&vec![0u8; size + 8]).is_none());
        assert!(RawEvent::parse_exact(&vec![0u8; size]).is_some());
    }

    #[test]
    fn the_executable_path_is_joined_from_the_kernels_names() {
        let mut e = RawEvent::parse(&vec![0u8; size_of::<RawEvent>()]).expect("event");
        assert_eq!(e.exe(), None);
        for (i, name) in ["cat", "bin", "usr"].iter().enumerate() {
            e.exe[i][..name.len()].copy_from_slice(name.as_bytes());
        }
        e.exe_depth = 3;
        e.exe_reach = EXE_ROOT;
        assert_eq!(e.exe().as_deref(), Some("/usr/bin/cat"));
        // Not up to the opener's root: the leading components are unknown.
        e.exe_reach = 0;
        assert_eq!(e.exe().as_deref(), Some("…/usr/bin/cat"));
        // A depth beyond the array is bounded; an empty name makes it unknown.
        e.exe_depth = 99;
        assert_eq!(e.exe(), None);
    }

    #[test]
    fn a_file_below_a_protected_folder_is_named_by_the_folders_between() {
        let mut e = RawEvent::parse(&vec![0u8; size_of::<RawEvent>()]).expect("event");
        e.name[..7].copy_from_slice(b"api.log");
        // Its own folder is protected: the path below it is its name.
        e.dir_depth = 1;
        assert_eq!(e.path_below_folder(), Some(PathBuf::from("api.log")));
        // Two folders made after the last scan: 2026/12-04/api.log (nearest folder first).
        e.sub[0][..5].copy_from_slice(b"12-04");
        e.sub[1][..4].copy_from_slice(b"2026");
        e.dir_depth = 3;
        e.sub_depth = 2;
        assert_eq!(
            e.path_below_folder(),
            Some(PathBuf::from("2026/12-04/api.log"))
        );
        // A name the kernel could not read whole: unknown, never a wrong path.
        e.sub_depth = 1;
        assert_eq!(e.path_below_folder(), None);
        e.sub_depth = 2;
        e.sub[1][..4].copy_from_slice(b"..\0\0");
        assert_eq!(e.path_below_folder(), None);
        e.dir_depth = 0;
        assert_eq!(e.path_below_folder(), None);
    }

    #[test]
    fn flags_are_named_access_mode_first() {
        assert_eq!(flags_text(0o2000000), "O_RDONLY|O_CLOEXEC");
        assert_eq!(flags_text(0o2 | 0o2000), "O_RDWR|O_APPEND");
    }
}
