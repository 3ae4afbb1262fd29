//! Taking turns on the CPU with the machine's other threads.
//!
//! An ingress thread under load always has another request ready, so it never sleeps.
//! The kernel then takes the CPU from it only at a scheduler tick (4 ms at HZ=250): a
//! thread woken meanwhile on the same CPU (an app the ingress proxies to, a client,
//! another ingress thread) waits all that time, and so does every request queued behind
//! it. `perf sched` showed exactly that in the static-site benchmark: runs of ~4 ms with
//! a woken thread waiting beside them, while the threads that serve a request and then
//! sleep (nginx's workers) gave the CPU up every few requests. Giving it away every
//! [`REQUESTS_PER_TURN`] requests bounds that wait to a few requests' work; with nothing
//! else runnable on the CPU, `sched_yield` returns at once.
//!
//! Only HTTP/1 requests (plain and over TLS) count. Yielding between the streams of an
//! HTTP/2 connection, which hyper serves in batches, cost proxied HTTP/2 at 64
//! connections about a fifth of its rate (0.86x nginx's instead of 1.13x, more CPU per request).

use std::cell::Cell;

/// Requests an ingress thread serves between two turns it gives away: on 2 cores, 8 and
/// 16 both cut the static site's p99 at 64 connections from ~7 ms to ~1 ms; 8 cost
/// requests/s at 256 connections (`scripts/bench.sh`, README "Benchmarks").
const REQUESTS_PER_TURN: u32 = 16;

thread_local! {
    /// Requests served on this thread since it last gave its CPU away.
    static SERVED: Cell<u32> = const { Cell::new(0) };
}

/// Called between two requests of a connection: every [`REQUESTS_PER_TURN`] requests on
/// this thread, the other runnable threads of its CPU go first.
pub(crate) fn between_requests() {
    if SERVED.with(turn_over) {
        // Fails only for a policy without yielding (none here); the next request goes on.
        let _ = nix::sched::sched_yield();
    }
}

/// Counts a request in `served`; true when that ends a turn.
fn turn_over(served: &Cell<u32>) -> bool {
    let n = served.get() + 1;
    let over = n >= REQUESTS_PER_TURN;
    served.set(if over { 0 } else { n });
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_ends_every_so_many_requests() {
        let served = Cell::new(0);
        let ends: Vec<u32> = (1..=3 * REQUESTS_PER_TURN).filter(|_| turn_over(&served)).collect();
        assert_eq!(ends, [REQUESTS_PER_TURN, 2 * REQUESTS_PER_TURN, 3 * REQUESTS_PER_TURN]);
    }
}
