//! Warm-ups (`POST /v1/workspaces/{workspace}/warm`) take turns on a host, first come first
//! served. One runs at a time: each fetches up to half the object cache, and two would only
//! evict each other's objects. An account has at most one warm-up waiting or running, so a
//! tenant that asks again and again gets `warm_busy` for its own second call and holds up
//! every other account for at most one warm-up of its own per turn. Without turns, one slot
//! taken by whoever asked first, such a tenant kept the slot and everyone else got 503.
//! A call waits [`TURN_WAIT`] at most, and none once the daemon stops, so queued calls hold
//! up neither a stop nor a reload for long.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ApiError, ApiResult, ErrorKind};

/// How long a warm-up waits for its turn before it gets `warm_busy`.
const TURN_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting warm-up looks whether the daemon is stopping.
const STOP_CHECK: Duration = Duration::from_millis(500);

#[derive(Default)]
pub(crate) struct WarmTurns {
    /// The accounts whose warm-ups wait or run, in turn order: the front one runs.
    queue: Mutex<VecDeque<String>>,
    /// Signalled when a turn ends.
    next: Condvar,
}

/// An account's turn: held while its warm-up runs, then passed on.
pub(crate) struct Turn<'a> {
    turns: &'a WarmTurns,
}

impl WarmTurns {
    /// Waits for `account`'s turn; `warm_busy` at once if it has a warm-up waiting or running,
    /// or after [`TURN_WAIT`] without its turn, or once `stopping` is set.
    pub(crate) fn wait(&self, account: &str, stopping: &AtomicBool) -> ApiResult<Turn<'_>> {
        let busy = |why: &str| Err(ApiError::new(ErrorKind::Unavailable, "warm_busy", why));
        let mut queue = self.queue.lock();
        if queue.iter().any(|a| a == account) {
            return busy(
                "a warm-up of this account waits or runs on this host; retry once it is done",
            );
        }
        queue.push_back(account.to_string());
        let deadline = Instant::now() + TURN_WAIT;
        while queue.front().map(String::as_str) != Some(account) {
            let stop = stopping.load(Ordering::SeqCst);
            if stop || Instant::now() >= deadline {
                // Not at the front, so no turn passes on: the others' order stands.
                queue.retain(|a| a != account);
                return busy(match stop {
                    true => "the daemon is stopping",
                    false => "other accounts' warm-ups kept this host busy; retry later",
                });
            }
            self.next.wait_for(&mut queue, STOP_CHECK);
        }
        Ok(Turn { turns: self })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.queue.lock().pop_front();
        self.turns.next.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn accounts_take_turns_and_one_account_waits_once() {
        let turns = Arc::new(WarmTurns::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let alice = turns.wait("alice", &stopping).unwrap();
        let again = turns.wait("alice", &stopping);
        assert_eq!(again.err().unwrap().code, "warm_busy");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let (turns, stopping) = (turns.clone(), stopping.clone());
            std::thread::spawn(move || {
                let _bob = turns.wait("bob", &stopping).unwrap();
                tx.send(()).unwrap();
            })
        };
        // Bob waits for alice's turn to end.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(alice);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiting.join().unwrap();
        drop(turns.wait("alice", &stopping).unwrap());
    }

    #[test]
    fn a_stopping_daemon_ends_the_wait_and_the_queue_goes_on() {
        let turns = Arc::new(WarmTurns::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let alice = turns.wait("alice", &stopping).unwrap();
        let waiting = {
            let (turns, stopping) = (turns.clone(), stopping.clone());
            std::thread::spawn(move || turns.wait("bob", &stopping).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(100));
        stopping.store(true, Ordering::SeqCst);
        let bob = waiting.join().unwrap();
        assert_eq!(bob.err().unwrap().code, "warm_busy");
        // Bob left the queue: once alice's turn ends, another account's comes at once.
        drop(alice);
        stopping.store(false, Ordering::SeqCst);
        drop(turns.wait("carol", &stopping).unwrap());
    }
}
