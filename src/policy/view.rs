//! A worker's copy of every unit's shared state, so routing to a healthy vendor reads no shared data.
//!
//! Only a phase change or a vendor's first failure can change where a
//! request should go, and whoever makes such a change with compare-and-swap
//! tells every worker at once (the glue sends the vendor's key on each
//! worker's shared queue; the worker then drops its copy). On top of that,
//! each worker re-reads every vendor on its tick, and anything that is not
//! plainly closed (an ejection that may have run out, half-open probing) is
//! always read afresh. A copy is therefore at most one notification behind.

use crate::policy::config::{Table, UnitId};
use crate::policy::health::VendorState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub state: VendorState,
    /// `Ticket::quiet` as of when the copy was taken.
    pub quiet: bool,
}

#[derive(Debug, Clone, Default)]
pub struct View {
    units: Table<UnitId, Option<Cached>>,
}

impl View {
    pub fn new(units: usize) -> Self {
        View {
            units: Table::filled(units, None),
        }
    }

    pub fn get(&self, unit: UnitId) -> Option<&Cached> {
        self.units.get(unit).and_then(Option::as_ref)
    }

    /// Keeps a copy of `state` as read or written at `now_ms`.
    pub fn put(&mut self, unit: UnitId, mut state: VendorState, now_ms: u64) {
        if let Some(slot) = self.units.get_mut(unit) {
            let quiet = state.is_quiet(now_ms);
            // A rate limit that has run out need not be checked again.
            if !state.rate_limited_at(now_ms) {
                state.cooldown_until_ms = 0;
            }
            *slot = Some(Cached { state, quiet });
        }
    }

    /// Drops a copy, so the next request reads shared data.
    pub fn forget(&mut self, unit: UnitId) {
        if let Some(slot) = self.units.get_mut(unit) {
            *slot = None;
        }
    }

    pub fn forget_all(&mut self) {
        self.units.iter_mut().for_each(|(_, v)| *v = None);
    }
}
