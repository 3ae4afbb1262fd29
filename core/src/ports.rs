//! Loopback ports for instances to listen on.
//!
//! `bind(0)` hands out a port from the kernel's ephemeral range, the same range it draws
//! the local end of every outgoing connection from (the ingress's own connections to
//! apps among them). Between choosing such a port and the app binding it, a connection
//! may take it, and the app fails to start. Ports below that range are only ever taken by
//! an explicit bind, so instances get theirs from there.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
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

#[cfg(test)]
mod tests {
    use super::*;

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
