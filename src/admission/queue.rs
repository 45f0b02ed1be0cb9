//! Registration queue 62 of seed 002: bounded, served priority > token > initial
//! (FIG. 3 items 82–86), with aging so a steady stream of higher classes cannot
//! starve the lower ones ("a combination of priority and time waiting in
//! registration queue 62 to select the registration request to process").
//!
//! Aging rule: an entry's effective rank improves by one class per `aging`
//! waited (initial → token after one interval, → priority after two); among
//! equal effective ranks the longest-waiting entry goes first. Each class is a
//! FIFO, so only the three heads ever compete: `pop` is O(1).
//!
//! No entry waits longer than `max_wait`: well below the client's Timer F
//! (64·T1 = 32 s, RFC 3261 §17.1.2.2), so it is told to come back later (503 +
//! Retry-After) instead of timing out in silence and retrying at once.

use super::RegistrationClass;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const CLASSES: [RegistrationClass; 3] = [
    RegistrationClass::Priority,
    RegistrationClass::TokenHolder,
    RegistrationClass::Initial,
];

fn index(class: RegistrationClass) -> usize {
    match class {
        RegistrationClass::Priority => 0,
        RegistrationClass::TokenHolder => 1,
        RegistrationClass::Initial => 2,
    }
}

/// Per-class capacities, highest class first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub priority: usize,
    pub token: usize,
    pub initial: usize,
}

impl Capacity {
    fn of(&self, class: RegistrationClass) -> usize {
        match class {
            RegistrationClass::Priority => self.priority,
            RegistrationClass::TokenHolder => self.token,
            RegistrationClass::Initial => self.initial,
        }
    }
}

/// The class was full; the item comes back (the front turns this into a 503
/// with a scheduled Retry-After).
#[derive(Debug, PartialEq, Eq)]
pub struct Full<T>(pub T);

struct Entry<T> {
    item: T,
    since: Instant,
}

/// One registration that left the queue: served or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued<T> {
    pub item: T,
    pub class: RegistrationClass,
    pub waited: Duration,
}

pub struct RegistrationQueue<T> {
    classes: [VecDeque<Entry<T>>; 3],
    capacity: Capacity,
    aging: Duration,
    max_wait: Duration,
    expired: VecDeque<Dequeued<T>>,
}

impl<T> RegistrationQueue<T> {
    pub fn new(capacity: Capacity, aging: Duration, max_wait: Duration) -> RegistrationQueue<T> {
        RegistrationQueue {
            classes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            capacity,
            aging: aging.max(Duration::from_millis(1)),
            max_wait,
            expired: VecDeque::new(),
        }
    }

    /// Queues `item` in `class`, or gives it back when the class is full.
    pub fn push(&mut self, now: Instant, item: T, class: RegistrationClass) -> Result<(), Full<T>> {
        if self.classes[index(class)].len() >= self.capacity.of(class) {
            return Err(Full(item));
        }
        self.push_over_capacity(now, item, class);
        Ok(())
    }

    /// Queues `item` whatever the capacity: for refreshes, which are never
    /// refused (one per binding this node holds, so still bounded).
    pub fn push_over_capacity(&mut self, now: Instant, item: T, class: RegistrationClass) {
        self.classes[index(class)].push_back(Entry { item, since: now });
    }

    /// The next registration to serve: best effective rank, then longest wait.
    pub fn pop(&mut self, now: Instant) -> Option<Dequeued<T>> {
        let aging = self.aging.as_nanos();
        let best = (0..3)
            .filter_map(|i| {
                let e = self.classes[i].front()?;
                let waited = now.saturating_duration_since(e.since);
                let promoted = (waited.as_nanos() / aging).min(i as u128) as usize;
                Some(((i - promoted, e.since), i))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, i)| i)?;
        let e = self.classes[best].pop_front()?;
        Some(Dequeued {
            item: e.item,
            class: CLASSES[best],
            waited: now.saturating_duration_since(e.since),
        })
    }

    /// Expires the entries that waited `max_wait`; collect them with
    /// [`poll_expired`](Self::poll_expired).
    pub fn handle_timeout(&mut self, now: Instant) {
        for (i, q) in self.classes.iter_mut().enumerate() {
            while q.front().is_some_and(|e| e.since + self.max_wait <= now) {
                let Some(e) = q.pop_front() else { break };
                self.expired.push_back(Dequeued {
                    item: e.item,
                    class: CLASSES[i],
                    waited: now.saturating_duration_since(e.since),
                });
            }
        }
    }

    pub fn poll_expired(&mut self) -> Option<Dequeued<T>> {
        self.expired.pop_front()
    }

    /// When the oldest entry reaches `max_wait`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.classes
            .iter()
            .filter_map(|q| q.front().map(|e| e.since + self.max_wait))
            .min()
    }

    pub fn len(&self) -> usize {
        self.classes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len_of(&self, class: RegistrationClass) -> usize {
        self.classes[index(class)].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegistrationClass::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn queue(cap: usize) -> RegistrationQueue<&'static str> {
        let c = Capacity {
            priority: cap,
            token: cap,
            initial: cap,
        };
        RegistrationQueue::new(c, ms(2000), ms(8000))
    }

    fn order(q: &mut RegistrationQueue<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop(now).map(|d| d.item)).collect()
    }

    #[test]
    fn serves_priority_then_token_then_initial_each_in_arrival_order() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.push(t0, "i1", Initial).unwrap();
        q.push(t0 + ms(1), "t1", TokenHolder).unwrap();
        q.push(t0 + ms(2), "i2", Initial).unwrap();
        q.push(t0 + ms(3), "p1", Priority).unwrap();
        q.push(t0 + ms(4), "t2", TokenHolder).unwrap();
        assert_eq!(q.len(), 5);
        let first = q.pop(t0 + ms(10)).unwrap();
        assert_eq!(
            first,
            Dequeued {
                item: "p1",
                class: Priority,
                waited: ms(7)
            }
        );
        assert_eq!(order(&mut q, t0 + ms(10)), ["t1", "t2", "i1", "i2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn aging_promotes_a_starved_initial_entry_one_class_per_interval() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.push(t0, "old-initial", Initial).unwrap();
        // 1.9 s later a token holder arrives: the initial entry has not aged yet
        q.push(t0 + ms(1900), "token", TokenHolder).unwrap();
        q.push(t0 + ms(1900), "prio", Priority).unwrap();
        assert_eq!(q.pop(t0 + ms(1900)).unwrap().item, "prio");
        assert_eq!(q.pop(t0 + ms(1999)).unwrap().item, "token");
        q.push(t0 + ms(2000), "token2", TokenHolder).unwrap();
        // at 2 s it ranks as a token holder and has waited longer
        assert_eq!(q.pop(t0 + ms(2000)).unwrap().item, "old-initial");
        q.push(t0 + ms(2000), "initial2", Initial).unwrap();
        q.push(t0 + ms(5000), "prio2", Priority).unwrap();
        // after 3 s an initial entry ranks as a token holder, below priority
        assert_eq!(q.pop(t0 + ms(5000)).unwrap().item, "token2");
        q.push(t0 + ms(5000), "token3", TokenHolder).unwrap();
        assert_eq!(q.pop(t0 + ms(5000)).unwrap().item, "prio2");
        // after 4 s it ranks with priority entries and has waited longest
        q.push(t0 + ms(6000), "prio3", Priority).unwrap();
        assert_eq!(
            order(&mut q, t0 + ms(6000)),
            ["initial2", "prio3", "token3"]
        );
    }

    #[test]
    fn a_full_class_refuses_at_once_and_the_others_still_accept() {
        let t0 = Instant::now();
        let mut q = queue(2);
        q.push(t0, "i1", Initial).unwrap();
        q.push(t0, "i2", Initial).unwrap();
        assert_eq!(q.push(t0, "i3", Initial), Err(Full("i3")));
        q.push(t0, "t1", TokenHolder).unwrap();
        q.push_over_capacity(t0, "i3", Initial);
        assert_eq!(q.len_of(Initial), 3);
        assert_eq!(q.len_of(TokenHolder), 1);
    }

    #[test]
    fn entries_expire_at_max_wait_and_not_before() {
        let t0 = Instant::now();
        let mut q = queue(10);
        q.push(t0, "i1", Initial).unwrap();
        q.push(t0 + ms(500), "t1", TokenHolder).unwrap();
        q.push(t0 + ms(3000), "i2", Initial).unwrap();
        assert_eq!(q.poll_timeout(), Some(t0 + ms(8000)));
        q.handle_timeout(t0 + ms(7999));
        assert_eq!(q.poll_expired(), None);
        q.handle_timeout(t0 + ms(8500));
        let got: Vec<_> = std::iter::from_fn(|| q.poll_expired()).collect();
        assert_eq!(
            got,
            [
                Dequeued {
                    item: "t1",
                    class: TokenHolder,
                    waited: ms(8000)
                },
                Dequeued {
                    item: "i1",
                    class: Initial,
                    waited: ms(8500)
                },
            ]
        );
        assert_eq!(q.poll_timeout(), Some(t0 + ms(11_000)));
        assert_eq!(q.len(), 1);
    }
}
