//! A local process's resident memory, and the local process listening on a TCP port (Linux
//! `/proc`), for benchmarks that watch a server's memory.

use std::net::SocketAddr;

/// `VmRSS` of process `pid`, in bytes; `None` if it cannot be read (no such process, not Linux).
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// The process listening on `addr`'s port on this machine, if `addr` is a loopback address and
/// that process's descriptors are readable (same user, or root).
pub fn pid_listening_on(addr: SocketAddr) -> Option<u32> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| listening_inode(line, addr.port()))
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()))
            .then_some(pid)
    })
}

/// The socket inode of a `/proc/net/tcp` line if it listens (state 0A) on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local_port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    (local_port == port && *fields.get(3)? == "0A").then(|| fields.get(9)?.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening_and_its_memory() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(pid_listening_on(addr), Some(std::process::id()));
        assert!(vm_rss_bytes(std::process::id()).unwrap() > 1024 * 1024);
        drop(listener);
        assert_eq!(pid_listening_on(addr), None, "nobody listens once it is closed");
        assert_eq!(pid_listening_on("192.0.2.1:80".parse().unwrap()), None, "not a local address");
    }

    #[test]
    fn reads_the_listening_sockets_of_proc_net_tcp() {
        let listen =
            "   0: 0100007F:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1";
        let established =
            "   1: 0100007F:C350 0100007F:D000 01 00000000:00000000 00:00000000 00000000     0        0 654321 1";
        assert_eq!(listening_inode(listen, 50000), Some(123456));
        assert_eq!(listening_inode(listen, 50001), None);
        assert_eq!(listening_inode(established, 50000), None);
    }
}
