//! A worker's batch of quiet successes, written to shared data in one go.
//!
//! Writing every outcome to shared data costs a read, a compare-and-swap
//! write and an encode per request. A success routed while its vendor was
//! quiet (closed, no failure in the window, no run of failures; see
//! `Ticket::quiet`) cannot change any decision, so each worker counts such
//! successes here and writes them in one go: on its next tick, or together
//! with the next outcome it must write at once for that vendor. Failures,
//! probes and anything routed while a vendor was not quiet are written
//! immediately. The window thus lags by at most one tick of this worker's
//! quiet successes.

use crate::policy::health::Deferred;

/// Entries kept before the batch asks to be written early.
pub const MAX_ENTRIES: usize = 32;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    entries: Vec<Deferred>,
}

impl Batch {
    /// Counts one success; returns true when the batch should be written now.
    pub fn add(&mut self, generation: u32, bucket: u64) -> bool {
        match self.entries.last_mut() {
            Some(last) if last.generation == generation && last.bucket == bucket => {
                last.successes = last.successes.saturating_add(1);
            }
            _ => self.entries.push(Deferred {
                generation,
                bucket,
                successes: 1,
            }),
        }
        self.entries.len() >= MAX_ENTRIES
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn successes(&self) -> u64 {
        self.entries.iter().map(|d| u64::from(d.successes)).sum()
    }

    /// Empties the batch, handing its entries to the writer.
    pub fn take(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.entries)
    }

    /// Puts entries back after a write that did not land.
    pub fn restore(&mut self, mut entries: Vec<Deferred>) {
        entries.append(&mut self.entries);
        self.entries = entries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::WindowSpec;
    use crate::policy::health::{Phase, Ticket, VendorState, Verdict};

    const SPEC: WindowSpec = WindowSpec::DEFAULT;

    #[test]
    fn successes_of_one_bucket_share_an_entry() {
        let mut b = Batch::default();
        for _ in 0..1_000 {
            assert!(!b.add(0, 7));
        }
        b.add(0, 8);
        b.add(1, 8);
        assert_eq!(b.successes(), 1_002);
        let entries = b.take();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].successes, 1_000);
        assert!(b.is_empty());
    }

    #[test]
    fn asks_to_be_written_before_it_grows() {
        let mut b = Batch::default();
        let flush_at = (0..100u64).position(|i| b.add(0, i)).unwrap();
        assert_eq!(flush_at + 1, MAX_ENTRIES);
    }

    #[test]
    fn restored_entries_keep_their_order() {
        let mut b = Batch::default();
        b.add(0, 1);
        let taken = b.take();
        b.add(0, 2);
        b.restore(taken);
        let order: Vec<u64> = b.take().iter().map(|d| d.bucket).collect();
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn merged_batch_counts_in_the_window_but_not_after_a_change() {
        let mut s = VendorState::new(SPEC);
        let mut b = Batch::default();
        for _ in 0..5 {
            b.add(0, 3);
        }
        for d in b.take() {
            s.merge(&d);
        }
        assert_eq!(s.window.totals(3_000).successes, 5);
        // Routed before the vendor changed generation: ignored.
        s.phase = Phase::Open { until_ms: 9_000 };
        s.generation = 1;
        b.add(0, 3);
        for d in b.take() {
            s.merge(&d);
        }
        assert_eq!(s.window.totals(3_000).successes, 5);
    }

    #[test]
    fn merged_successes_do_not_break_a_run_of_failures() {
        let mut s = VendorState::new(SPEC);
        let rules = crate::policy::health::Rules::from_config(
            &crate::policy::config::Config::parse(br#"{"vendors":[{"name":"a"}],"trip":{"consecutive_failures":5}}"#)
                .unwrap(),
        );
        let t = Ticket {
            generation: 0,
            probe: false,
            quiet: false,
        };
        for _ in 0..4 {
            s.record(1_000, Verdict::Failure, t, &rules);
        }
        s.merge(&Deferred {
            generation: 0,
            bucket: 0,
            successes: 50,
        });
        assert_eq!(s.consecutive_failures, 4);
        assert!(
            s.record(1_000, Verdict::Failure, t, &rules).is_some(),
            "5th in a row trips"
        );
    }

    #[test]
    fn quiet_only_while_nothing_has_failed() {
        let rules = crate::policy::health::Rules::from_config(
            &crate::policy::config::Config::parse(br#"{"vendors":[{"name":"a"}]}"#).unwrap(),
        );
        let mut s = VendorState::new(SPEC);
        let quiet = |s: &VendorState, now| match s.availability(now, &rules) {
            crate::policy::health::Availability::Routable(t) => t.quiet,
            _ => false,
        };
        assert!(quiet(&s, 0));
        let t = Ticket {
            generation: 0,
            probe: false,
            quiet: false,
        };
        s.record(1_000, Verdict::Failure, t, &rules);
        assert!(!quiet(&s, 1_000));
        s.record(1_500, Verdict::Success, t, &rules);
        assert!(!quiet(&s, 1_500), "the failure is still in the window");
        assert!(quiet(&s, 11_000), "it left the window at 11 s");
    }
}
