//! The TCP sockets a process holds open, read from `/proc`: its socket inodes
//! (`/proc/<pid>/fd`) joined with the rows of `/proc/<pid>/net/tcp` and `tcp6` (the tables of
//! its network namespace). The multi-host tests bound the CLI's sockets by `--parallel` with
//! it, and `cargo xtask bench reads` reports its peak connections to the agents.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// One row of `/proc/<pid>/net/tcp{,6}` that is one of the process's own sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    /// The row came from `tcp6` (an IPv6 socket, IPv4-mapped addresses included).
    pub v6: bool,
    /// The remote address as the kernel prints it (`0100007F:1F90`: hex, the address in the
    /// host's byte order).
    pub remote: String,
    /// The socket listens (state `0A`).
    pub listening: bool,
}

impl TcpRow {
    /// The remote IPv4 address of a `tcp` row; `None` for `tcp6` or an unreadable column.
    pub fn remote_v4(&self) -> Option<Ipv4Addr> {
        if self.v6 {
            return None;
        }
        let hex = self.remote.split(':').next()?;
        let raw = u32::from_str_radix(hex, 16).ok()?;
        // The kernel prints the address's four bytes read as one native integer.
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    }
}

/// How many TCP sockets process `pid` holds open now that `keep` accepts (a listening socket
/// is a row too: filter it out where only connections count); `None` once the process is
/// gone (its fd folder cannot be read).
pub fn open_tcp_sockets(pid: u32, keep: impl Fn(&TcpRow) -> bool) -> Option<usize> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    if inodes.is_empty() {
        return Some(0);
    }
    let mut open = 0;
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(rows) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        open += rows
            .lines()
            .skip(1)
            .filter_map(|row| {
                let cols: Vec<&str> = row.split_whitespace().collect();
                // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                match (cols.get(2), cols.get(3), cols.get(9)) {
                    (Some(remote), Some(state), Some(inode)) if inodes.contains(*inode) => {
                        Some(TcpRow {
                            v6,
                            remote: (*remote).to_string(),
                            listening: *state == "0A",
                        })
                    }
                    _ => None,
                }
            })
            .filter(|row| keep(row))
            .count();
    }
    Some(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_loopback_connection_counts_on_both_ends_and_the_listener_only_when_asked() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let me = std::process::id();
        let to_loopback = |r: &TcpRow| !r.listening && r.remote_v4() == Some(Ipv4Addr::LOCALHOST);
        // Other tests of this process may hold loopback sockets too: at least ours.
        assert!(open_tcp_sockets(me, to_loopback).expect("alive") >= 2);
        let listening = open_tcp_sockets(me, |r| r.listening).expect("alive");
        assert!(listening >= 1);
        drop((client, server, listener));
        assert_eq!(
            open_tcp_sockets(u32::MAX, |_| true),
            None,
            "no such process"
        );
    }

    #[test]
    fn the_remote_address_is_read_in_the_hosts_byte_order() {
        let row = |remote: &str, v6| TcpRow {
            v6,
            remote: remote.to_string(),
            listening: false,
        };
        let loopback = u32::from_ne_bytes([127, 2, 0, 5]);
        assert_eq!(
            row(&format!("{loopback:08X}:1F90"), false).remote_v4(),
            Some(Ipv4Addr::new(127, 2, 0, 5))
        );
        assert_eq!(
            row("00000000000000000000000001000000:0016", true).remote_v4(),
            None
        );
        assert_eq!(row("zz:0016", false).remote_v4(), None);
    }
}
