//! Who listens on a model's port: refusing a start on a port someone else holds, and
//! proving that the process answering the health check is the model's own.
//!
//! A listening TCP socket is found in `/proc/net/tcp` and `/proc/net/tcp6` (state
//! `0A`, LISTEN) by its local port; the line gives its inode and its owner's uid. A
//! process holds it when one of its `/proc/<pid>/fd/*` links reads `socket:[inode]`.
//! Reading another user's `fd` directory needs `CAP_SYS_PTRACE`, which llmvisor drops,
//! so for processes we cannot look into (a systemd unit with `DynamicUser=`), the
//! socket's uid is compared with theirs instead. Everything here is best effort on
//! the facts `/proc` shows; see [`owner`] for what counts as proof.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

/// A socket listening on a port, from `/proc/net/tcp*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Socket inode.
    pub inode: u64,
    /// uid of the process that created it.
    pub uid: u32,
}

/// Whether `127.0.0.1:port` is free: bind it (and let go at once). Returns the
/// error text when it is taken.
pub fn port_taken(port: u16) -> Option<String> {
    match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(e.to_string()),
        // Anything else (no permission for a low port…) is the backend's problem.
        Err(_) => None,
    }
}

/// The listening sockets on `port` (IPv4 and IPv6), from this network namespace.
pub fn listeners(port: u16) -> Vec<Listener> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(parse_net_tcp(&text, port));
        }
    }
    out
}

/// LISTEN lines of a `/proc/net/tcp` text on `port`.
fn parse_net_tcp(text: &str, port: u16) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let local_port = f[1].rsplit(':').next()?;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            Some(Listener {
                uid: f[7].parse().ok()?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// Socket inodes `pid` holds; `None` when its descriptors cannot be read (the
/// directory may list while the links refuse to be read).
fn socket_inodes(pid: u32) -> Option<HashSet<u64>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut out = HashSet::new();
    for e in dir.flatten() {
        match std::fs::read_link(e.path()) {
            Ok(l) => {
                if let Some(inode) = l
                    .to_str()
                    .and_then(|l| l.strip_prefix("socket:["))
                    .and_then(|l| l.strip_suffix(']'))
                    .and_then(|l| l.parse().ok())
                {
                    out.insert(inode);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
            // Closed meanwhile.
            Err(_) => {}
        }
    }
    Some(out)
}

/// The short command name of a process.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Real uid of a process.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every pid on the system (numeric entries of `/proc`).
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Who holds a socket listening on `port`, as `pid 1234 (python3)`, when a process
/// whose descriptors we may read holds it; otherwise the socket's uid, if there is a
/// listener at all.
pub fn describe_holder(port: u16) -> Option<String> {
    let found = listeners(port);
    if found.is_empty() {
        return None;
    }
    let inodes: HashSet<u64> = found.iter().map(|l| l.inode).collect();
    let me = std::process::id();
    let holders: Vec<String> = all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| socket_inodes(p).is_some_and(|s| !s.is_disjoint(&inodes)))
        .take(3)
        .map(|p| format!("pid {p} ({})", comm(p)))
        .collect();
    if !holders.is_empty() {
        return Some(holders.join(", "));
    }
    let uids: Vec<String> = found.iter().map(|l| l.uid.to_string()).collect();
    Some(format!(
        "a process of uid {} (not one llmvisor may inspect)",
        uids.join(", ")
    ))
}

/// Whose socket answers on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// One of the unit's processes holds the listening socket.
    Ours,
    /// The listening socket is someone else's (described).
    Foreign(String),
    /// Cannot tell: no listener visible in `/proc/net/tcp*` (another network
    /// namespace), or no process of the unit is known.
    Unknown,
}

/// Whether a process among `pids` (the unit's processes) holds the socket listening
/// on `port`. Proof is a descriptor of one of them naming the socket's inode; where
/// their descriptors cannot be read, a socket whose uid is one of theirs counts (a
/// `DynamicUser=` unit's uid is its own); a socket of any other uid, or, with every
/// descriptor readable, no match at all, is foreign.
pub fn owner(port: u16, pids: &[u32]) -> Owner {
    let found = listeners(port);
    if found.is_empty() || pids.is_empty() {
        return Owner::Unknown;
    }
    let inodes: HashSet<u64> = found.iter().map(|l| l.inode).collect();
    let mut unreadable = Vec::new();
    for &pid in pids {
        match socket_inodes(pid) {
            Some(s) if !s.is_disjoint(&inodes) => return Owner::Ours,
            Some(_) => {}
            None => unreadable.push(pid),
        }
    }
    if !unreadable.is_empty() {
        let uids: HashSet<u32> = unreadable.iter().filter_map(|&p| uid_of(p)).collect();
        if found.iter().any(|l| uids.contains(&l.uid)) {
            return Owner::Ours;
        }
        if uids.is_empty() {
            // They all exited meanwhile.
            return Owner::Unknown;
        }
    }
    Owner::Foreign(describe_holder(port).unwrap_or_else(|| "another process".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lines_are_found_by_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(
            parse_net_tcp(text, 8080),
            vec![Listener {
                inode: 4242,
                uid: 1000
            }]
        );
        assert_eq!(parse_net_tcp(text, 80).len(), 1);
        assert!(parse_net_tcp(text, 81).is_empty());
    }

    #[test]
    fn a_socket_of_this_process_is_found_and_owned() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_taken(port).is_some());
        let me = std::process::id();
        assert_eq!(owner(port, &[me]), Owner::Ours);
        // pid 1 exists and is not us: its descriptors hold no such socket (or cannot
        // be read as another user, and then its uid decides).
        if uid_of(1) != uid_of(me) {
            assert!(matches!(owner(port, &[1]), Owner::Foreign(_)));
        }
        drop(l);
        assert!(port_taken(port).is_none());
        assert_eq!(owner(port, &[me]), Owner::Unknown);
    }
}
