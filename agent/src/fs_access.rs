//! Confined opening of requested log files beneath the agent's configured log roots.
//!
//! Threat model: the requested path is chosen by a remote grant holder, and any local user who
//! can write inside a root (e.g. the application whose logs are served) may plant or swap in
//! symlinks, hard links, FIFOs, devices, sockets or directories at any moment, including between
//! our checks and our open. The roots themselves and the directories above them are trusted
//! (writable only by root). A request is lexically validated (absolute, no `..`, no NUL or control
//! characters), matched component-wise to the longest root, and opened relative to an `O_PATH`
//! handle on that root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: the kernel refuses every symlink, mount crossing and
//! escape during the same resolution that opens the file, so there is no check-then-open window.
//! Kernels without openat2 get an `openat(O_NOFOLLOW)` walk, one component at a time. The opened
//! descriptor is then `fstat`ed: only a regular file with exactly one link is returned. Out of
//! scope: content a local user could already move or rename into a root themselves.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MAX_PATH_BYTES: usize = 4096;
const ROOT_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
const DIR_FLAGS: libc::c_int = ROOT_FLAGS | libc::O_NOFOLLOW;
const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
const RESOLVE_FLAGS: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// The kernel's `struct open_how` (linux/openat2.h); libc's copy is `#[non_exhaustive]`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const _: () = assert!(std::mem::size_of::<OpenHow>() == std::mem::size_of::<libc::open_how>());

/// A configured log root: an absolute, canonical directory path (canonicalised once at config load).
#[derive(Debug, Clone)]
pub struct LogRoot {
    path: PathBuf,
}

impl LogRoot {
    /// Canonicalises `path` and requires it to be an existing directory.
    pub fn new(path: &Path) -> Result<LogRoot, PathDenied> {
        let bad = |why: &str| PathDenied::InvalidPath(format!("log root {} {why}", path.display()));
        match std::fs::canonicalize(path) {
            Ok(canonical) if canonical.is_dir() => Ok(LogRoot { path: canonical }),
            Ok(_) => Err(bad("is not a directory")),
            Err(e) => Err(bad(&format!("cannot be resolved: {e}"))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A file opened for reading beneath a root.
#[derive(Debug)]
pub struct OpenedLog {
    /// Blocking mode (O_NONBLOCK cleared), O_CLOEXEC, read-only.
    pub file: File,
    /// The normalised absolute path that was opened (root + relative).
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

/// Why a request was refused; each message is one sentence fit for users and the audit log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PathDenied {
    #[error("path must be absolute")]
    NotAbsolute,
    #[error("path must not contain '..' components")]
    Traversal,
    #[error("{0}")]
    InvalidPath(String),
    #[error("path {0} is outside the agent's log roots")]
    OutsideRoots(String),
    #[error("refusing to follow a symbolic link")]
    SymlinkRefused,
    /// `RESOLVE_NO_XDEV` (or the fallback walk's device check): a mount point, a bind mount
    /// included, lies between the root and the file.
    #[error("refusing to cross onto another mount beneath the log root; configure that mount as a root of its own if it should be served")]
    CrossesMount,
    #[error("the requested file does not exist")]
    NotFound,
    #[error("{path} is a {kind}, not a regular file")]
    NotRegularFile { path: String, kind: &'static str },
    #[error("refusing to open a file with {0} hard links")]
    HardLinked(u64),
    #[error("could not open the file: {0}")]
    Io(String),
}

/// Validates `requested` (absolute, no `..`, no NUL or control characters, at most 4096 bytes)
/// and normalises it: `.` components and repeated or trailing slashes are removed.
pub fn normalise_request(requested: &str) -> Result<PathBuf, PathDenied> {
    let invalid = |why: &str| Err(PathDenied::InvalidPath(why.to_string()));
    match requested {
        "" => return invalid("path is empty"),
        r if r.len() > MAX_PATH_BYTES => return invalid("path is longer than 4096 bytes"),
        r if r.contains('\0') => return invalid("path contains a NUL byte"),
        r if r.chars().any(char::is_control) => {
            return invalid("path contains a control character")
        }
        r if !r.starts_with('/') => return Err(PathDenied::NotAbsolute),
        _ => {}
    }
    let mut out = PathBuf::from("/");
    for part in requested.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathDenied::Traversal),
            name => out.push(name),
        }
    }
    Ok(out)
}

/// Normalises `requested`, picks the root it is beneath (component-wise prefix, longest root
/// wins, so a nested root on its own mount is not refused by RESOLVE_NO_XDEV), then opens it.
pub fn open_beneath(roots: &[LogRoot], requested: &str) -> Result<OpenedLog, PathDenied> {
    open_beneath_with(roots, requested, resolve_beneath)
}

/// Opens `relative` beneath the root descriptor; returns the errno on failure.
type Resolver = fn(BorrowedFd<'_>, &Path) -> Result<OwnedFd, i32>;

fn open_beneath_with(
    roots: &[LogRoot],
    requested: &str,
    resolve: Resolver,
) -> Result<OpenedLog, PathDenied> {
    let path = normalise_request(requested)?;
    let (root, relative) = select_root(roots, &path)
        .ok_or_else(|| PathDenied::OutsideRoots(path.display().to_string()))?;
    let root_fd = open_root(root)?;
    let relative = Some(relative).filter(|r| !r.as_os_str().is_empty());
    let relative = relative.unwrap_or(Path::new("."));
    let fd = resolve(root_fd.as_fd(), relative).map_err(|e| deny(e, &path))?;
    inspect(fd, path)
}

/// A folder beneath a root, held by an `O_PATH` descriptor that was opened without following a
/// symlink or crossing a mount (the same rules as [`open_beneath`]): a listing walks folders by
/// these descriptors, so a folder swapped for a symlink (to `/`, `/proc`, a hung NFS mount)
/// between two steps of the walk is refused, never followed out of the roots.
#[derive(Debug)]
pub struct DirBeneath {
    fd: OwnedFd,
}

impl DirBeneath {
    /// Opens folder `dir` beneath its root (`None` when it is outside the roots, missing, a
    /// symlink or a mount, or not a folder).
    pub fn open(roots: &[LogRoot], dir: &Path) -> Option<DirBeneath> {
        let path = normalise_request(dir.to_str()?).ok()?;
        let (root, relative) = select_root(roots, &path)?;
        let root_fd = open_root(root).ok()?;
        if relative.as_os_str().is_empty() {
            return Some(DirBeneath { fd: root_fd });
        }
        let fd = resolve_dir_beneath(root_fd.as_fd(), relative).ok()?;
        Some(DirBeneath { fd })
    }

    /// Opens the sub-folder `name` (one component) of this folder, by descriptor, under the
    /// same rules (`None` when it is a symlink, a mount, or not a folder any more).
    pub fn child(&self, name: &std::ffi::OsStr) -> Option<DirBeneath> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
            return None;
        }
        let fd = resolve_dir_beneath(self.fd.as_fd(), Path::new(name)).ok()?;
        Some(DirBeneath { fd })
    }

    /// The folder's entries, read through the descriptor (`/proc/self/fd/N` re-opens the very
    /// folder held, re-resolving no name).
    pub fn entries(&self) -> std::io::Result<std::fs::ReadDir> {
        std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Opens folder `relative` beneath `root` as an `O_PATH` handle: openat2 with the read path's
/// confinement, or the component walk (each folder `O_NOFOLLOW`, on the root's device).
fn resolve_dir_beneath(root: BorrowedFd<'_>, relative: &Path) -> Result<OwnedFd, i32> {
    let name = cstring(relative)?;
    let how = OpenHow {
        flags: DIR_FLAGS as u64,
        mode: 0,
        resolve: RESOLVE_FLAGS,
    };
    match sys_openat2(root.as_raw_fd(), &name, &how) {
        Err(libc::ENOSYS | libc::EPERM) => {
            let root_dev = stat_at(root.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?.st_dev;
            let mut dir: Option<OwnedFd> = None;
            for part in relative.iter() {
                let at = dir.as_ref().map_or(root.as_raw_fd(), AsRawFd::as_raw_fd);
                let next = sys_openat(at, &cstring(part)?, DIR_FLAGS)?;
                same_device(&next, root_dev)?;
                dir = Some(next);
            }
            dir.ok_or(libc::ENOENT)
        }
        other => other,
    }
}

/// Opens the root directory itself as an `O_PATH` handle for `*at` resolution.
fn open_root(root: &LogRoot) -> Result<OwnedFd, PathDenied> {
    let fd = cstring(root.path()).and_then(|c| sys_openat(libc::AT_FDCWD, &c, ROOT_FLAGS));
    fd.map_err(|e| {
        let (shown, why) = (root.path().display(), errno_text(e));
        PathDenied::Io(format!("log root {shown} is unavailable: {why}"))
    })
}

fn select_root<'a>(roots: &'a [LogRoot], path: &'a Path) -> Option<(&'a LogRoot, &'a Path)> {
    roots
        .iter()
        .filter_map(|root| path.strip_prefix(&root.path).ok().map(|rel| (root, rel)))
        .max_by_key(|(root, _)| root.path.components().count())
}

/// openat2 with kernel-enforced confinement; falls back to the component walk when the syscall
/// is missing (ENOSYS) or blocked by an older container seccomp profile (EPERM). The fallback
/// enforces the same rules, so a spurious EPERM merely reproduces the real error there.
fn resolve_beneath(root: BorrowedFd<'_>, relative: &Path) -> Result<OwnedFd, i32> {
    let name = cstring(relative)?;
    let how = OpenHow {
        flags: FILE_FLAGS as u64,
        mode: 0,
        resolve: RESOLVE_FLAGS,
    };
    match sys_openat2(root.as_raw_fd(), &name, &how) {
        Err(libc::ENOSYS | libc::EPERM) => walk_beneath(root, relative),
        other => other,
    }
}

/// Fallback for kernels without openat2: opens one component at a time with O_NOFOLLOW, holding a
/// descriptor to each directory, so no symlink is followed and nothing re-resolves a path. Crossing
/// onto another filesystem is caught by comparing st_dev with the root's (EXDEV; a bind mount of
/// the same filesystem is not); a symlinked directory yields ELOOP. `relative` must already be
/// normalised (no `..`), as `open_beneath` guarantees.
fn walk_beneath(root: BorrowedFd<'_>, relative: &Path) -> Result<OwnedFd, i32> {
    let root_dev = stat_at(root.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?.st_dev;
    let parts: Vec<_> = relative.iter().collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(libc::ENOENT);
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        let at = dir.as_ref().map_or(root.as_raw_fd(), AsRawFd::as_raw_fd);
        let name = cstring(part)?;
        let next = match sys_openat(at, &name, DIR_FLAGS) {
            // O_PATH|O_NOFOLLOW|O_DIRECTORY reports a symlink as ENOTDIR; classify it for the
            // error message only (the open has already been refused).
            Err(libc::ENOTDIR) => match stat_at(at, &name, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(libc::ELOOP),
                _ => Err(libc::ENOTDIR),
            },
            other => other,
        }?;
        same_device(&next, root_dev)?;
        dir = Some(next);
    }
    let at = dir.as_ref().map_or(root.as_raw_fd(), AsRawFd::as_raw_fd);
    let file = sys_openat(at, &cstring(last)?, FILE_FLAGS)?;
    same_device(&file, root_dev)?;
    Ok(file)
}

fn same_device(fd: &OwnedFd, root_dev: libc::dev_t) -> Result<(), i32> {
    match stat_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?.st_dev == root_dev {
        true => Ok(()),
        false => Err(libc::EXDEV),
    }
}

/// Checks what was actually opened: a regular file with one link. Then clears O_NONBLOCK.
#[allow(clippy::unnecessary_cast)] // st_nlink/st_dev/st_ino are not u64 on every architecture
fn inspect(fd: OwnedFd, path: PathBuf) -> Result<OpenedLog, PathDenied> {
    let st = stat_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH).map_err(|e| deny(e, &path))?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("directory"),
        libc::S_IFIFO => Some("fifo"),
        libc::S_IFCHR => Some("character device"),
        libc::S_IFBLK => Some("block device"),
        libc::S_IFSOCK => Some("socket"),
        libc::S_IFLNK => Some("symbolic link"),
        _ => Some("special file"),
    };
    if let Some(kind) = kind {
        return Err(not_regular(&path, kind));
    }
    let links = st.st_nlink as u64;
    if links > 1 {
        return Err(PathDenied::HardLinked(links));
    }
    let len = u64::try_from(st.st_size).map_err(|_| PathDenied::Io("invalid file size".into()))?;
    clear_nonblock(&fd).map_err(|e| deny(e, &path))?;
    let (file, dev, ino) = (File::from(fd), st.st_dev as u64, st.st_ino as u64);
    Ok(OpenedLog {
        file,
        path,
        dev,
        ino,
        len,
    })
}

fn deny(errno: i32, path: &Path) -> PathDenied {
    match errno {
        libc::ENOENT | libc::ENOTDIR => PathDenied::NotFound,
        libc::ELOOP => PathDenied::SymlinkRefused,
        libc::EXDEV => PathDenied::CrossesMount,
        libc::EACCES | libc::EPERM => PathDenied::Io("permission denied".into()),
        libc::ENAMETOOLONG => PathDenied::InvalidPath("path is too long".into()),
        // open(2) on a socket, or on a device without a driver.
        libc::ENXIO => not_regular(path, "socket or device"),
        e => PathDenied::Io(errno_text(e)),
    }
}

fn not_regular(path: &Path, kind: &'static str) -> PathDenied {
    PathDenied::NotRegularFile {
        path: path.display().to_string(),
        kind,
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn last_errno() -> i32 {
    let err = std::io::Error::last_os_error();
    err.raw_os_error().unwrap_or(libc::EIO)
}

fn cstring(path: impl AsRef<Path>) -> Result<CString, i32> {
    CString::new(path.as_ref().as_os_str().as_bytes()).map_err(|_| libc::EINVAL)
}

/// Wraps the return value of an open-like call, reading errno immediately on failure.
fn own_fd(ret: libc::c_long) -> Result<OwnedFd, i32> {
    if ret < 0 {
        return Err(last_errno());
    }
    let fd = RawFd::try_from(ret).map_err(|_| libc::EBADF)?;
    // SAFETY: `fd` was just returned by a successful open call, so it is a valid open descriptor
    // that nothing else owns; OwnedFd becomes its sole owner and closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sys_openat(dir: RawFd, name: &CStr, flags: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: `name` is a NUL-terminated string alive for the whole call and not retained by the
    // kernel; without O_CREAT/O_TMPFILE no mode argument is read; a bad `dir` only yields EBADF.
    let ret = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    own_fd(ret.into())
}

fn sys_openat2(dir: RawFd, name: &CStr, how: &OpenHow) -> Result<OwnedFd, i32> {
    let (how, size): (*const OpenHow, usize) = (how, std::mem::size_of::<OpenHow>());
    // SAFETY: openat2(int dirfd, const char *path, struct open_how *how, size_t size). `name` is
    // NUL-terminated, `how` points to a live #[repr(C)] struct laid out like the kernel's open_how
    // (three u64; size asserted at compile time) and `size` is exactly its size. The kernel only
    // reads both during the call; a bad `dir` only yields EBADF.
    let ret = unsafe { libc::syscall(libc::SYS_openat2, dir, name.as_ptr(), how, size) };
    own_fd(ret)
}

fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> Result<libc::stat, i32> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and alive for the call; `st.as_mut_ptr()` points to writable
    // memory of exactly size_of::<stat>() bytes, which the kernel fills on success.
    if unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), flags) } < 0 {
        return Err(last_errno());
    }
    // SAFETY: fstatat returned 0, so the whole struct has been initialised.
    Ok(unsafe { st.assume_init() })
}

fn clear_nonblock(fd: &OwnedFd) -> Result<(), i32> {
    // SAFETY: F_GETFL takes no argument and touches no memory; `fd` is open for this call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(last_errno());
    }
    // SAFETY: F_SETFL takes a plain int argument and touches no memory; `fd` is open.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::PathDenied::*;
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;
    use tempfile::TempDir;

    /// `<tmp>/root` is the log root; `<tmp>/outside/secret.txt` must never be served.
    struct Fx(TempDir, LogRoot);

    fn fixture() -> Fx {
        let tmp = TempDir::new().expect("tempdir");
        fs::create_dir(tmp.path().join("outside")).expect("mkdir");
        fs::write(tmp.path().join("outside/secret.txt"), "OUTSIDE").expect("write");
        let root = LogRoot::new(&make_dir(&tmp.path().join("root"))).expect("root");
        Fx(tmp, root)
    }

    fn make_dir(path: &Path) -> PathBuf {
        fs::create_dir_all(path).expect("mkdir");
        path.to_owned()
    }

    impl Fx {
        fn secret(&self) -> PathBuf {
            self.0.path().join("outside/secret.txt")
        }
        fn at(&self, rel: &str) -> PathBuf {
            self.1.path().join(rel)
        }
        fn req(&self, rel: &str) -> String {
            self.at(rel).display().to_string()
        }
        fn write(&self, rel: &str, content: &str) {
            fs::write(self.at(rel), content).expect("write");
        }
        fn open(&self, rel: &str) -> Result<OpenedLog, PathDenied> {
            open_beneath(std::slice::from_ref(&self.1), &self.req(rel))
        }
        fn deny(&self, rel: &str) -> PathDenied {
            self.open(rel).expect_err("must be refused")
        }
    }

    fn read(mut file: File) -> String {
        let mut s = String::new();
        file.read_to_string(&mut s).expect("read");
        s
    }

    fn kind(denied: Option<PathDenied>) -> &'static str {
        match denied {
            Some(NotRegularFile { kind, .. }) => kind,
            other => panic!("expected NotRegularFile, got {other:?}"),
        }
    }

    #[test]
    fn opens_regular_file_beneath_root() {
        let f = fixture();
        make_dir(&f.at("app"));
        f.write("app/a.log", "hello\n");
        let log = f.open("./app//a.log").expect("open");
        let meta = fs::metadata(f.at("app/a.log")).expect("stat");
        assert_eq!(log.path, f.at("app/a.log"));
        assert_eq!((log.dev, log.ino, log.len), (meta.dev(), meta.ino(), 6));
        let raw = log.file.as_raw_fd();
        // SAFETY: only called below with F_GETFL/F_GETFD, which take no third argument and touch
        // no memory; `raw` belongs to `log.file`, which stays open past the closure's last use.
        let fcntl = |cmd| unsafe { libc::fcntl(raw, cmd) };
        let nonblock_or_mode = fcntl(libc::F_GETFL) & (libc::O_NONBLOCK | libc::O_ACCMODE);
        assert_eq!(nonblock_or_mode, libc::O_RDONLY);
        assert_eq!(fcntl(libc::F_GETFD) & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert_eq!(read(log.file), "hello\n");
    }

    #[test]
    fn normalise_request_cleans_and_rejects_invalid_paths() {
        assert_eq!(normalise_request("/a/./b//c/"), Ok(PathBuf::from("/a/b/c")));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        for bad in ["", "/a\0b", "/a\nb", long.as_str()] {
            assert!(matches!(normalise_request(bad), Err(InvalidPath(_))));
        }
        let f = fixture();
        for bad_root in [f.secret(), f.at("missing")] {
            assert!(matches!(LogRoot::new(&bad_root), Err(InvalidPath(_))));
        }
    }

    #[test]
    fn refuses_relative_path() {
        assert_eq!(normalise_request("var/log/a.log"), Err(NotAbsolute));
        let f = fixture();
        assert_eq!(open_beneath(&[f.1], "a.log").err(), Some(NotAbsolute));
    }

    #[test]
    fn refuses_dotdot_traversal() {
        assert_eq!(fixture().deny("../outside/secret.txt"), Traversal);
        assert_eq!(normalise_request("/a/b/.."), Err(Traversal));
    }

    #[test]
    fn refuses_path_outside_roots() {
        let f = fixture();
        let secret = f.secret().display().to_string();
        let err = open_beneath(&[f.1], &secret).expect_err("refused");
        let msg = format!("path {secret} is outside the agent's log roots");
        assert_eq!(err.to_string(), msg);
    }

    #[test]
    fn refuses_symlink_pointing_outside_root() {
        let f = fixture();
        symlink(f.secret(), f.at("evil.log")).expect("symlink");
        assert_eq!(f.deny("evil.log"), SymlinkRefused);
    }

    #[test]
    fn refuses_symlink_even_inside_root() {
        let f = fixture();
        f.write("real.log", "x");
        symlink("real.log", f.at("alias.log")).expect("symlink");
        assert_eq!(f.deny("alias.log"), SymlinkRefused);
        assert!(f.open("real.log").is_ok());
    }

    #[test]
    fn refuses_symlinked_directory_component() {
        let f = fixture();
        symlink(f.0.path().join("outside"), f.at("sub")).expect("symlink");
        assert_eq!(f.deny("sub/secret.txt"), SymlinkRefused);
        make_dir(&f.at("real"));
        f.write("real/a.log", "x");
        symlink("real", f.at("alias")).expect("symlink inside the root");
        assert_eq!(f.deny("alias/a.log"), SymlinkRefused);
    }

    #[test]
    fn refuses_directory() {
        let f = fixture();
        make_dir(&f.at("d"));
        let msg = format!("{} is a directory, not a regular file", f.at("d").display());
        assert_eq!(f.deny("d").to_string(), msg);
        assert_eq!(kind(f.open("").err()), "directory", "the root itself");
    }

    #[test]
    fn refuses_fifo() {
        let f = fixture();
        let fifo = cstring(f.at("p")).expect("cstring");
        // SAFETY: `fifo` is a NUL-terminated path alive for the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (tx, rx) = mpsc::channel();
        let (root, request) = (f.1.clone(), f.req("p"));
        std::thread::spawn(move || tx.send(open_beneath(&[root], &request).err()));
        let denied = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(kind(denied.expect("open must not block")), "fifo");
    }

    #[test]
    fn refuses_socket() {
        let f = fixture();
        let _sock = std::os::unix::net::UnixListener::bind(f.at("s")).expect("bind");
        assert_eq!(kind(f.open("s").err()), "socket or device");
    }

    #[test]
    fn refuses_hard_link_to_outside_file() {
        let f = fixture();
        fs::hard_link(f.secret(), f.at("h.log")).expect("link");
        assert_eq!(f.deny("h.log"), HardLinked(2));
    }

    /// A thread keeps renaming a fresh regular file or a symlink to the secret over `app.log`.
    fn race(resolve: Resolver) {
        let f = fixture();
        f.write("app.log", "INSIDE");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, secret) = (stop.clone(), f.secret());
        let (reg, lnk, target) = (f.at(".r"), f.at(".l"), f.at("app.log"));
        let swapper = std::thread::spawn(move || {
            while !flag.load(Relaxed) {
                fs::write(&reg, "INSIDE").expect("write");
                fs::rename(&reg, &target).expect("rename file");
                symlink(&secret, &lnk).expect("symlink");
                fs::rename(&lnk, &target).expect("rename link");
            }
        });
        let (roots, request) = (std::slice::from_ref(&f.1), f.req("app.log"));
        let (mut ok, mut refused) = (0, 0);
        for i in 0..100_000 {
            if i >= 5000 && ok > 0 && refused > 0 {
                break;
            }
            match open_beneath_with(roots, &request, resolve) {
                Ok(log) => {
                    assert_eq!(read(log.file), "INSIDE", "outside content leaked");
                    ok += 1;
                }
                Err(SymlinkRefused) => refused += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        stop.store(true, Relaxed);
        swapper.join().expect("swapper");
        assert!(
            ok * refused > 0,
            "race not exercised: {ok} ok, {refused} refused"
        );
    }

    #[test]
    fn symlink_swapped_in_after_check_cannot_win() {
        race(resolve_beneath);
        race(walk_beneath);
    }

    #[test]
    fn fallback_walk_refuses_symlink_and_opens_regular_file() {
        let f = fixture();
        make_dir(&f.at("sub"));
        f.write("sub/a.log", "walked");
        symlink(f.secret(), f.at("sub/evil.log")).expect("symlink");
        symlink(f.0.path().join("outside"), f.at("dir")).expect("symlink");
        let root = open_root(&f.1).expect("open root");
        let walk = |rel: &str| walk_beneath(root.as_fd(), Path::new(rel));
        assert_eq!(read(File::from(walk("sub/a.log").expect("walk"))), "walked");
        assert_eq!(walk("sub/evil.log").err(), Some(libc::ELOOP));
        assert_eq!(walk("dir/secret.txt").err(), Some(libc::ELOOP));
        let roots = std::slice::from_ref(&f.1);
        let via_walk = |rel| open_beneath_with(roots, &f.req(rel), walk_beneath).err();
        assert_eq!(via_walk("sub/evil.log"), Some(SymlinkRefused));
        assert_eq!(via_walk("sub/missing.log"), Some(NotFound));
        assert_eq!(kind(via_walk("sub")), "directory");
    }

    #[test]
    fn a_mount_crossing_is_reported_as_what_it_is() {
        let p = Path::new("/var/log/app/mnt/a.log");
        assert_eq!(deny(libc::EXDEV, p), CrossesMount);
        assert_eq!(deny(libc::ELOOP, p), SymlinkRefused);
        assert!(CrossesMount.to_string().contains("another mount"));
    }

    #[test]
    fn longest_root_wins() {
        let f = fixture();
        let inner = LogRoot::new(&make_dir(&f.at("inner"))).expect("root");
        f.write("inner/a.log", "nested");
        let (path, outer) = (f.at("inner/a.log"), f.1.clone());
        for roots in [[outer.clone(), inner.clone()], [inner.clone(), outer]] {
            let (chosen, rel) = select_root(&roots, &path).expect("beneath a root");
            assert_eq!((chosen.path(), rel), (inner.path(), Path::new("a.log")));
            let log = open_beneath(&roots, &f.req("inner/a.log")).expect("open");
            assert_eq!(read(log.file), "nested");
        }
    }

    #[test]
    fn root_prefix_is_component_wise() {
        let f = fixture();
        let app = LogRoot::new(&make_dir(&f.at("app"))).expect("root");
        make_dir(&f.at("apple"));
        f.write("apple/a.log", "x");
        let err = open_beneath(&[app], &f.req("apple/a.log")).err();
        assert!(matches!(err, Some(OutsideRoots(_))));
    }
}
