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
//! A thread that slept since its last turn (it waited for a backend, or for clients)
//! already gave its CPU away and keeps it this time. Proxied requests mostly wait on their
//! app: yielding as well only put the thread behind the app and the clients again. With
//! a yield every 16 proxied requests regardless, HTTPS/1.1 through the proxy at 8
//! connections had a p99 of 1.16x nginx's (median of 8 rounds) and 0.94x without.
//!
//! Only HTTP/1 requests (plain and over TLS) count. Yielding between the streams of an
//! HTTP/2 connection, which hyper serves in batches, cost proxied HTTP/2 at 64
//! connections about a fifth of its rate (0.86x nginx's instead of 1.13x, more CPU per request).

use std::cell::Cell;
use std::ffi::c_long;

use nix::sys::resource::{UsageWho, getrusage};

/// Requests an ingress thread serves between two turns it gives away: on 2 cores, 8 and
/// 16 both cut the static site's p99 at 64 connections from ~7 ms to ~1 ms; 8 cost
/// requests/s at 256 connections (`scripts/bench.sh`, README "Benchmarks").
const REQUESTS_PER_TURN: u32 = 16;

thread_local! {
    /// Requests served on this thread since its last turn ended.
    static SERVED: Cell<u32> = const { Cell::new(0) };
    /// The thread's voluntary context switches (times it blocked) when its last turn ended.
    static SLEPT: Cell<c_long> = const { Cell::new(-1) };
}

/// Called between two requests of a connection: every [`REQUESTS_PER_TURN`] requests on
/// this thread, the other runnable threads of its CPU go first, unless the thread slept
/// meanwhile.
pub(crate) fn between_requests() {
    if !SERVED.with(turn_over) {
        return;
    }
    // A yield that switches counts as involuntary: only real sleeps move this count.
    let slept = getrusage(UsageWho::RUSAGE_THREAD).ok().map(|usage| usage.voluntary_context_switches());
    if SLEPT.with(|last| stayed_awake(last, slept)) {
        // Fails only for a policy without yielding (none here); the next request goes on.
        let _ = nix::sched::sched_yield();
    }
}

/// Whether the thread did not sleep since `last` was taken, given its sleeps now (`None`
/// if unknown: then it is taken as awake, and gives its turn away); keeps the count in `last`.
fn stayed_awake(last: &Cell<c_long>, slept: Option<c_long>) -> bool {
    slept.is_none_or(|slept| last.replace(slept) == slept)
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

    #[test]
    fn a_thread_that_slept_since_its_last_turn_keeps_the_cpu() {
        let last = Cell::new(-1);
        // The first count is news: as if it slept.
        assert!(!stayed_awake(&last, Some(7)));
        assert!(stayed_awake(&last, Some(7)));
        assert!(!stayed_awake(&last, Some(9)));
        assert!(stayed_awake(&last, Some(9)));
        // Unknown: the turn is given away, and the count kept.
        assert!(stayed_awake(&last, None));
        assert_eq!(last.get(), 9);
    }
}
