//! Warm-ups (`POST /v1/workspaces/{workspace}/warm`) take turns on a host, first come first
//! served. One runs at a time: each fetches up to half the object cache, and two would only
//! evict each other's objects. An account has at most one warm-up waiting or running, so a
//! tenant that asks again and again gets `warm_busy` for its own second call and holds up
//! every other account for at most one warm-up of its own per turn. Without turns, one slot
//! taken by whoever asked first, such a tenant kept the slot and everyone else got 503.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;

use crate::error::{ApiError, ApiResult, ErrorKind};

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
    /// Waits for `account`'s turn; `warm_busy` at once if it has a warm-up waiting or running.
    pub(crate) fn wait(&self, account: &str) -> ApiResult<Turn<'_>> {
        let mut queue = self.queue.lock();
        if queue.iter().any(|a| a == account) {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                "warm_busy",
                "a warm-up of this account waits or runs on this host; retry once it is done",
            ));
        }
        queue.push_back(account.to_string());
        while queue.front().map(String::as_str) != Some(account) {
            self.next.wait(&mut queue);
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
        let alice = turns.wait("alice").unwrap();
        assert_eq!(turns.wait("alice").err().unwrap().code, "warm_busy");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let _bob = turns.wait("bob").unwrap();
                tx.send(()).unwrap();
            })
        };
        // Bob waits for alice's turn to end.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(alice);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiting.join().unwrap();
        drop(turns.wait("alice").unwrap());
    }
}
