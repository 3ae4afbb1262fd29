//! Loopback ports for instances to listen on.
//!
//! `bind(0)` hands out a port from the kernel's ephemeral range, the same range it draws
//! the local end of every outgoing connection from (the ingress's own connections to
//! apps among them). Between choosing such a port and the app binding it, a connection
//! may take it, and the app fails to start. Ports below that range are only ever taken by
//! an explicit bind, so instances get theirs from there.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports below this are left to services an operator configures by hand.
const LOWEST: u16 = 10_000;
/// The kernel's default ephemeral range starts here.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Fewer candidate ports than this and the range is not worth keeping to.
const SMALLEST_SPAN: u16 = 1_000;

/// A loopback port nothing is bound to right now, outside the kernel's ephemeral range
/// when the machine leaves room below it. Successive calls in one process walk the range
/// from a random start, so two instances started together do not get the same port
/// before either has bound it.
pub fn free_loopback_port() -> io::Result<u16> {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(RandomState::new().hash_one(std::process::id()) as u32));
    free_port_below(ephemeral_low().unwrap_or(DEFAULT_EPHEMERAL_LOW), next)
}

/// The first port from `next` on in `LOWEST..low` that binds.
fn free_port_below(low: u16, next: &AtomicU32) -> io::Result<u16> {
    let span = low.saturating_sub(LOWEST);
    if span < SMALLEST_SPAN {
        return kernel_chosen_port();
    }
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % u32::from(span);
        let port = LOWEST + offset as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    kernel_chosen_port()
}

fn kernel_chosen_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// The first port of the ephemeral range, on Linux.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A listening TCP socket of this network namespace, as `/proc/net/tcp{,6}` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Where it listens (an IPv4-mapped IPv6 address as the IPv4 one).
    pub addr: SocketAddr,
    /// The uid that made it.
    pub uid: u32,
    /// Its inode: what a process's descriptor of it links to (`socket:[INODE]`).
    pub inode: u64,
}

impl Listener {
    /// Whether a connection to `addr` can reach this socket: the same port, on that
    /// address or on the unspecified one.
    pub fn takes(&self, addr: SocketAddr) -> bool {
        self.addr.port() == addr.port() && (self.addr.ip() == addr.ip() || self.addr.ip().is_unspecified())
    }
}

/// Every listening TCP socket of this network namespace (none where `/proc` is not).
pub fn listeners() -> Vec<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).filter_map(listener).collect::<Vec<_>>())
        .collect()
}

/// The socket inode a file descriptor (`/proc/PID/fd/N`) refers to, if it is a socket.
pub fn socket_inode(fd: &Path) -> Option<u64> {
    let link = std::fs::read_link(fd).ok()?;
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// One line of `/proc/net/tcp{,6}`, if it is a listening socket.
fn listener(line: &str) -> Option<Listener> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
    if fields.len() < 10 || fields[3] != "0A" {
        return None;
    }
    let (ip, port) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Addresses are printed as 32-bit words in the kernel's byte order.
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(Listener { addr: SocketAddr::new(ip, port), uid: fields[7].parse().ok()?, inode: fields[9].parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets() {
        let v4 = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 12345 1 0000000000000000 100 0 0 10 0";
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
        assert_eq!(listener(v4), Some(Listener { addr: local, uid: 1001, inode: 12345 }));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listener(&established), None);
        let v6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1";
        let v6 = listener(v6).expect("a v6 listener");
        assert_eq!((v6.addr, v6.uid, v6.inode), (SocketAddr::from((Ipv6Addr::LOCALHOST, 80)), 0, 777));
        let any = "   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1";
        let any = listener(any).expect("a listener on every address");
        assert!(any.takes(local) && !any.takes(SocketAddr::from((Ipv4Addr::LOCALHOST, 8081))));
        assert!(!v6.takes(local), "::1 is not 127.0.0.1");
    }

    #[test]
    fn a_listener_of_this_process_is_found_with_its_inode() {
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = held.local_addr().expect("addr");
        let found: Vec<Listener> = listeners().into_iter().filter(|l| l.takes(addr)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        let fds = std::fs::read_dir("/proc/self/fd").expect("fds");
        assert!(fds.flatten().any(|fd| socket_inode(&fd.path()) == Some(found[0].inode)), "its descriptor links to it");
    }

    #[test]
    fn ports_are_below_the_ephemeral_range_and_not_repeated() {
        let low = ephemeral_low().unwrap_or(DEFAULT_EPHEMERAL_LOW);
        let ports: Vec<u16> = (0..50).map(|_| free_loopback_port().expect("a free port")).collect();
        if low - LOWEST >= SMALLEST_SPAN {
            assert!(ports.iter().all(|&p| (LOWEST..low).contains(&p)), "{ports:?} outside {LOWEST}..{low}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
    }

    #[test]
    fn a_bound_port_is_skipped() {
        let low = 40_000;
        // Find two free neighbours, hold the first, and start the walk there.
        let start = (0..u32::from(low - LOWEST - 1))
            .find(|&n| {
                let port = LOWEST + n as u16;
                TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
                    && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
            })
            .expect("two free neighbouring ports");
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, LOWEST + start as u16)).expect("hold the port");
        let port = free_port_below(low, &AtomicU32::new(start)).expect("a free port");
        assert_eq!(port, LOWEST + start as u16 + 1, "the held port is skipped");
        drop(held);
    }
}
