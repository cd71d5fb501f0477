//! The concurrency gate of one instance: `max_concurrent` slots and a queue per
//! priority. A freed slot goes to the longest-waiting `interactive` request, and to
//! a `batch` request only when no interactive one waits; within a priority, first
//! come first served.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::config::Priority;

/// A slot; dropping it frees the slot for the next waiter.
pub struct Permit {
    gate: Option<Arc<Gate>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.release();
        }
    }
}

struct Inner {
    free: usize,
    /// Slots taken away by a resize while they were in use: the next releases pay
    /// them back instead of freeing.
    debt: usize,
    /// Waiters by priority: [interactive, batch].
    waiting: [VecDeque<oneshot::Sender<Permit>>; 2],
}

/// Slots and queues.
pub struct Gate {
    inner: Mutex<Inner>,
}

fn lane(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl Gate {
    /// A gate with `slots` slots.
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: slots,
                debt: 0,
                waiting: [VecDeque::new(), VecDeque::new()],
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Whether a request of `priority` has someone ahead of it (waiters that went
    /// away are dropped first).
    fn ahead(&mut self, priority: Priority) -> bool {
        for q in &mut self.waiting {
            q.retain(|tx| !tx.is_closed());
        }
        match priority {
            Priority::Interactive => !self.waiting[0].is_empty(),
            Priority::Batch => self.waiting.iter().any(|q| !q.is_empty()),
        }
    }
}

impl Gate {
    /// A slot now, if one is free and nobody of the same or a higher priority waits.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<Permit> {
        let mut g = self.lock();
        if g.free > 0 && !g.ahead(priority) {
            g.free -= 1;
            Some(Permit {
                gate: Some(self.clone()),
            })
        } else {
            None
        }
    }

    /// Wait for a slot. Cancel-safe: a waiter that goes away gives a slot it was
    /// handed straight back.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        if let Some(p) = self.try_acquire(priority) {
            return p;
        }
        let rx = {
            let mut g = self.lock();
            // Re-check under the lock: a slot may have been freed meanwhile.
            if g.free > 0 && !g.ahead(priority) {
                g.free -= 1;
                return Permit {
                    gate: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            g.waiting[lane(priority)].push_back(tx);
            rx
        };
        match rx.await {
            Ok(p) => p,
            // The sender is only dropped with the gate itself, which outlives us.
            Err(_) => std::future::pending().await,
        }
    }

    /// Change the number of slots from `from` to `to` (an out-of-memory restart
    /// lowers it, a reload puts it back). Slots in use stay in use; the change
    /// applies as they are released.
    pub fn resize(self: &Arc<Self>, from: usize, to: usize) {
        let mut g = self.lock();
        if to < from {
            let cut = from - to;
            let now = cut.min(g.free);
            g.free -= now;
            g.debt += cut - now;
        } else {
            let mut add = to - from;
            let paid = add.min(g.debt);
            g.debt -= paid;
            add -= paid;
            drop(g);
            // Each new slot goes to a waiter if there is one (no debt is left).
            for _ in 0..add {
                self.release();
            }
        }
    }

    /// Hand a freed slot to the next waiter, or keep it free.
    fn release(self: &Arc<Self>) {
        let mut g = self.lock();
        if g.debt > 0 {
            g.debt -= 1;
            return;
        }
        loop {
            let next = if let Some(tx) = g.waiting[0].pop_front() {
                tx
            } else if let Some(tx) = g.waiting[1].pop_front() {
                tx
            } else {
                g.free += 1;
                return;
            };
            // The permit carries the freed slot. If the waiter has gone, disarm it
            // (its Drop would re-enter this lock) and try the next one.
            match next.send(Permit {
                gate: Some(self.clone()),
            }) {
                Ok(()) => return,
                Err(mut p) => drop(p.gate.take()),
            }
        }
    }

    /// Requests waiting, by priority.
    pub fn waiting(&self) -> [usize; 2] {
        let g = self.lock();
        [g.waiting[0].len(), g.waiting[1].len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn interactive_goes_before_batch() {
        let gate = Gate::new(1);
        let held = gate.acquire(Priority::Interactive).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, p) in [
            (0, Priority::Batch),
            (1, Priority::Batch),
            (2, Priority::Interactive),
            (3, Priority::Interactive),
        ] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire(p).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gate.waiting(), [2, 2]);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 3, 0, 1]);
        assert!(gate.try_acquire(Priority::Batch).is_some());
    }

    #[tokio::test]
    async fn resize_takes_effect_as_slots_are_released() {
        let gate = Gate::new(3);
        let a = gate.acquire(Priority::Interactive).await;
        let b = gate.acquire(Priority::Interactive).await;
        gate.resize(3, 1);
        assert!(gate.try_acquire(Priority::Interactive).is_none());
        drop(a);
        assert!(gate.try_acquire(Priority::Interactive).is_none());
        drop(b);
        let c = gate.try_acquire(Priority::Interactive);
        assert!(c.is_some());
        assert!(gate.try_acquire(Priority::Interactive).is_none());
        gate.resize(1, 2);
        assert!(gate.try_acquire(Priority::Interactive).is_some());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_the_slot() {
        let gate = Gate::new(1);
        let held = gate.acquire(Priority::Interactive).await;
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.acquire(Priority::Interactive).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        let only = gate.try_acquire(Priority::Batch);
        assert!(only.is_some());
        assert!(gate.try_acquire(Priority::Batch).is_none());
    }

    #[tokio::test]
    async fn batch_waits_behind_a_waiting_interactive_request() {
        let gate = Gate::new(1);
        let held = gate.acquire(Priority::Batch).await;
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.acquire(Priority::Interactive).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let p = waiter.await.unwrap();
        assert!(gate.try_acquire(Priority::Batch).is_none());
        drop(p);
        assert!(gate.try_acquire(Priority::Batch).is_some());
    }
}
