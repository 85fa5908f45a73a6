//! The sliding window of outcomes: a ring of time buckets.
//!
//! Buckets count successes, failures and slow answers; old outcomes fall
//! out one bucket at a time.
//!
//! An outcome recorded at time `t` lands in bucket `t / bucket_ms` and counts
//! until `now` reaches the start of the bucket `buckets` places later: with
//! 1 s buckets and 10 buckets, an outcome at 12.3 s counts up to 21.999 s and
//! is gone at 22.000 s.

use crate::policy::config::WindowSpec;
use std::num::NonZeroU64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Answers that worked, slow ones included.
    pub successes: u32,
    pub failures: u32,
    /// Of the successes, those that were too slow (see `Verdict::Slow`).
    pub slow: u32,
}

/// Totals over the buckets still inside the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub successes: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.successes + self.failures
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    spec: WindowSpec,
    /// Index (`time / bucket_ms`) of the newest bucket written.
    head: u64,
    /// Ring: the bucket with index `i` lives at `i % buckets`.
    ring: Vec<Bucket>,
}

impl Window {
    pub fn new(spec: WindowSpec) -> Self {
        Window {
            spec,
            head: 0,
            ring: vec![Bucket::default(); spec.buckets.get() as usize],
        }
    }

    /// Rebuilds a window from its stored parts; `None` if they do not fit the spec.
    pub fn from_parts(spec: WindowSpec, head: u64, ring: Vec<Bucket>) -> Option<Self> {
        (ring.len() == spec.buckets.get() as usize).then_some(Window { spec, head, ring })
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn ring(&self) -> &[Bucket] {
        &self.ring
    }

    fn index_at(&self, now_ms: u64) -> u64 {
        now_ms / self.spec.bucket_ms
    }

    fn slot(&self, index: u64) -> usize {
        (index % NonZeroU64::from(self.spec.buckets)) as usize
    }

    /// Counts one success that was too slow at `now_ms`.
    pub fn record_slow(&mut self, now_ms: u64) {
        self.record(now_ms, false);
        let slot = self.slot(self.head);
        if let Some(b) = self.ring.get_mut(slot) {
            b.slow = b.slow.saturating_add(1);
        }
    }

    /// Counts one outcome at `now_ms`.
    pub fn record(&mut self, now_ms: u64, failed: bool) {
        // Workers read the clock a moment apart; an outcome that arrives with a
        // slightly older time than the newest bucket is counted in the newest one
        // rather than dropped, so the window never moves backwards.
        let index = self.index_at(now_ms).max(self.head);
        self.advance(index);
        let slot = self.slot(index);
        if let Some(b) = self.ring.get_mut(slot) {
            if failed {
                b.failures = b.failures.saturating_add(1);
            } else {
                b.successes = b.successes.saturating_add(1);
            }
        }
    }

    /// Adds successes counted elsewhere to bucket `index`; dropped if that
    /// bucket has already left the window.
    pub fn add_successes(&mut self, index: u64, count: u32) {
        let n = u64::from(self.spec.buckets.get());
        if index > self.head {
            self.advance(index);
        } else if self.head - index >= n {
            return;
        }
        let slot = self.slot(index);
        if let Some(b) = self.ring.get_mut(slot) {
            b.successes = b.successes.saturating_add(count);
        }
    }

    /// Clears the buckets between the old head and `index`.
    fn advance(&mut self, index: u64) {
        if index <= self.head {
            return;
        }
        let n = u64::from(self.spec.buckets.get());
        let gap = index - self.head;
        if gap >= n {
            self.ring.iter_mut().for_each(|b| *b = Bucket::default());
        } else {
            for i in self.head + 1..=index {
                let slot = self.slot(i);
                if let Some(b) = self.ring.get_mut(slot) {
                    *b = Bucket::default();
                }
            }
        }
        self.head = index;
    }

    /// Sums the buckets still inside the window at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Totals {
        let now_index = self.index_at(now_ms).max(self.head);
        let n = u64::from(self.spec.buckets.get());
        let mut totals = Totals::default();
        for age in 0..n {
            let Some(index) = self.head.checked_sub(age) else {
                break;
            };
            if now_index - index >= n {
                break;
            }
            if let Some(b) = self.ring.get(self.slot(index)) {
                totals.successes += u64::from(b.successes);
                totals.failures += u64::from(b.failures);
                totals.slow += u64::from(b.slow);
            }
        }
        totals
    }

    pub fn clear(&mut self) {
        self.ring.iter_mut().for_each(|b| *b = Bucket::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: WindowSpec = WindowSpec::DEFAULT;

    #[test]
    fn outcome_counts_until_exactly_one_window_after_its_bucket_starts() {
        let mut w = Window::new(SPEC);
        w.record(12_300, true);
        assert_eq!(w.totals(12_300).failures, 1);
        assert_eq!(w.totals(21_999).failures, 1, "still inside at the last ms");
        assert_eq!(w.totals(22_000).failures, 0, "gone when bucket 22 starts");
    }

    #[test]
    fn bucket_start_boundary_belongs_to_the_new_bucket() {
        let mut w = Window::new(SPEC);
        w.record(9_999, false); // bucket 9, expires at 19_000
        w.record(10_000, false); // bucket 10, expires at 20_000
        assert_eq!(w.totals(18_999).successes, 2);
        assert_eq!(w.totals(19_000).successes, 1);
        assert_eq!(w.totals(19_999).successes, 1);
        assert_eq!(w.totals(20_000).successes, 0);
    }

    #[test]
    fn buckets_are_reused_after_wrapping() {
        let mut w = Window::new(SPEC);
        for second in 0..10 {
            w.record(second * 1_000, true);
        }
        assert_eq!(w.totals(9_000).failures, 10);
        // Bucket 10 reuses bucket 0's slot: bucket 0 must be cleared, not added to.
        w.record(10_500, false);
        let t = w.totals(10_500);
        assert_eq!((t.successes, t.failures), (1, 9));
    }

    #[test]
    fn a_long_gap_clears_everything() {
        let mut w = Window::new(SPEC);
        w.record(1_000, true);
        w.record(1_000_000, false);
        let t = w.totals(1_000_000);
        assert_eq!((t.successes, t.failures), (1, 0));
    }

    #[test]
    fn slightly_late_timestamps_land_in_the_newest_bucket() {
        let mut w = Window::new(SPEC);
        w.record(5_000, false);
        w.record(4_999, true); // another worker's clock read a moment earlier
        let t = w.totals(5_000);
        assert_eq!((t.successes, t.failures), (1, 1));
        assert_eq!(w.head(), 5);
    }

    #[test]
    fn slow_answers_count_as_successes_and_as_slow() {
        let mut w = Window::new(SPEC);
        w.record_slow(3_000);
        w.record(3_500, false);
        w.record_slow(9_000);
        let t = w.totals(9_000);
        assert_eq!((t.successes, t.failures, t.slow), (3, 0, 2));
        assert_eq!(w.totals(13_000).slow, 1, "the first expired with its bucket");
    }

    #[test]
    fn single_bucket_window() {
        let mut w = Window::new(WindowSpec::new(5_000, 1).unwrap());
        w.record(7_000, true);
        assert_eq!(w.totals(9_999).failures, 1);
        assert_eq!(w.totals(10_000).failures, 0);
    }

    #[test]
    fn batched_successes_land_in_their_own_bucket() {
        let mut w = Window::new(SPEC);
        w.record(15_000, true);
        w.add_successes(13, 4); // finished at 13.x s, written later
        w.add_successes(5, 9); // already outside the window: dropped
        w.add_successes(16, 2); // newer than anything written: moves the head
        let t = w.totals(16_000);
        assert_eq!((t.successes, t.failures), (6, 1));
        assert_eq!(w.totals(23_000).successes, 2, "bucket 13 expires at 23 s");
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut w = Window::from_parts(
            SPEC,
            3,
            vec![
                Bucket {
                    successes: u32::MAX,
                    failures: 0,
                    slow: 0
                };
                10
            ],
        )
        .unwrap();
        w.record(3_000, false);
        assert_eq!(w.ring()[3].successes, u32::MAX);
    }
}
