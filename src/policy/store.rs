//! The shared store behind a compare-and-swap trait, the update loop, and an in-memory store.
//!
//! Every change to a unit's state goes through the compare-and-swap loop.
//!
//! In Envoy the store is one map per process shared by all worker VMs; a
//! write carries the token of the value it was computed from and fails if
//! another worker wrote in between. `update` then re-reads and recomputes, so
//! no outcome is lost and none is counted twice. `MemoryStore` is the same
//! contract in memory, with hooks to inject conflicts, for tests.

use crate::policy::codec::{self, DecodeError};
use crate::policy::config::WindowSpec;
use crate::policy::health::VendorState;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;

/// How many times `update` re-reads after losing a race before giving up.
pub const MAX_ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since it was read (compare-and-swap lost).
    Conflict,
    /// Lost the race `MAX_ATTEMPTS` times in a row.
    Contended,
    /// The host refused the call.
    Host(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("compare-and-swap conflict"),
            StoreError::Contended => write!(f, "still conflicting after {MAX_ATTEMPTS} attempts"),
            StoreError::Host(why) => write!(f, "shared data call failed: {why}"),
        }
    }
}

/// A key-value store with compare-and-swap.
pub trait Store {
    /// The value and its token, or `None` if the key does not exist.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's token is still `cas`; `cas == 0` writes
    /// unconditionally (only used to create a missing key).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// The shared-data key of a vendor's state. The format version and the
/// window shape are part of the key: a new layout never reads an old one, and
/// two filter configurations that share a VM (`vm_id`) and a vendor name but
/// not a window keep separate state instead of resetting each other's.
/// Configurations with the same window share the vendor's health.
pub fn vendor_key(vendor: &str, window: WindowSpec) -> String {
    format!(
        "llm_failover.v{}.{vendor}.{}msx{}",
        codec::FORMAT_VERSION,
        window.bucket_ms,
        window.buckets
    )
}

/// A vendor's state as read, with the reason it had to be reset, if it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub state: VendorState,
    pub cas: u32,
    /// Set when the stored blob was unusable and a fresh state stands in.
    pub reset: Option<DecodeError>,
    pub existed: bool,
}

pub fn load<S: Store + ?Sized>(store: &S, key: &str, spec: WindowSpec) -> Result<Loaded, StoreError> {
    Ok(match store.get(key)? {
        None => Loaded {
            state: VendorState::new(spec),
            cas: 0,
            reset: None,
            existed: false,
        },
        Some((bytes, cas)) => match codec::decode(&bytes, spec) {
            Ok(state) => Loaded {
                state,
                cas,
                reset: None,
                existed: true,
            },
            Err(e) => Loaded {
                state: VendorState::new(spec),
                cas,
                reset: Some(e),
                existed: true,
            },
        },
    })
}

/// Writes a fresh state for a key that does not exist yet. Called when the
/// filter is configured, before the worker serves traffic, because a write
/// to a missing key cannot be compare-and-swapped.
pub fn create_if_missing<S: Store + ?Sized>(store: &S, key: &str, spec: WindowSpec) -> Result<bool, StoreError> {
    if store.get(key)?.is_some() {
        return Ok(false);
    }
    store.set(key, &codec::encode(&VendorState::new(spec)), 0)?;
    Ok(true)
}

/// The result of a successful `update`.
#[derive(Debug)]
pub struct Updated<R> {
    pub result: R,
    /// The state as written (or as read, when the step changed nothing).
    pub state: VendorState,
    /// Set when an unusable blob was replaced.
    pub reset: Option<DecodeError>,
    /// Races lost on the way.
    pub conflicts: u32,
}

/// Applies `step` to the stored state of `key` with compare-and-swap,
/// retrying on conflict. `step` must be pure: it may run several times and
/// only the run whose write lands counts. Nothing is written when the step
/// leaves the state unchanged.
pub fn update<S, R, F>(store: &S, key: &str, spec: WindowSpec, mut step: F) -> Result<Updated<R>, StoreError>
where
    S: Store + ?Sized,
    F: FnMut(&mut VendorState) -> R,
{
    let mut conflicts = 0;
    for _ in 0..MAX_ATTEMPTS {
        let loaded = load(store, key, spec)?;
        let mut state = loaded.state.clone();
        let result = step(&mut state);
        if state == loaded.state && loaded.reset.is_none() && loaded.existed {
            return Ok(Updated {
                result,
                state,
                reset: None,
                conflicts,
            });
        }
        match store.set(key, &codec::encode(&state), loaded.cas) {
            Ok(()) => {
                return Ok(Updated {
                    result,
                    state,
                    reset: loaded.reset,
                    conflicts,
                })
            }
            Err(StoreError::Conflict) => conflicts += 1,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

/// Compare-and-swap update of a plain byte value: `step` gets the current
/// value (`None` if the key does not exist) and returns the new one and a
/// result. Used for the small bookkeeping keys beside vendor state.
pub fn update_bytes<S, R, F>(store: &S, key: &str, mut step: F) -> Result<R, StoreError>
where
    S: Store + ?Sized,
    F: FnMut(Option<&[u8]>) -> (Vec<u8>, R),
{
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(key)?;
        let (value, result) = step(current.as_ref().map(|(v, _)| v.as_slice()));
        let cas = current.map_or(0, |(_, cas)| cas);
        match store.set(key, &value, cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

type Hook = Box<dyn FnOnce(&MemoryStore)>;

/// In-memory `Store` for tests. Tokens start at 1 and grow with every write,
/// like Envoy's. `before_next_set` runs a closure just before the next write
/// is checked, to play another worker slipping a write in between.
#[derive(Default)]
pub struct MemoryStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    hooks: RefCell<Vec<Hook>>,
    in_hook: Cell<bool>,
    pub writes: Cell<u32>,
    pub reads: Cell<u32>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn before_next_set(&self, hook: impl FnOnce(&MemoryStore) + 'static) {
        self.hooks.borrow_mut().push(Box::new(hook));
    }

    /// Overwrites a key with arbitrary bytes, as a bad writer would.
    pub fn put_raw(&self, key: &str, bytes: &[u8]) {
        let cas = self.bump();
        self.map.borrow_mut().insert(key.to_string(), (bytes.to_vec(), cas));
    }

    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.map.borrow().get(key).map(|(v, _)| v.clone())
    }

    fn bump(&self) -> u32 {
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        next
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.map.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // A hook's own writes do not fire further hooks.
        let hook = {
            let mut hooks = self.hooks.borrow_mut();
            if hooks.is_empty() || self.in_hook.get() {
                None
            } else {
                Some(hooks.remove(0))
            }
        };
        if let Some(hook) = hook {
            self.in_hook.set(true);
            hook(self);
            self.in_hook.set(false);
        }
        let current = self.map.borrow().get(key).map(|(_, c)| *c);
        if let Some(current) = current {
            if cas != 0 && cas != current {
                return Err(StoreError::Conflict);
            }
        }
        let next = self.bump();
        self.map.borrow_mut().insert(key.to_string(), (value.to_vec(), next));
        self.writes.set(self.writes.get() + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::health::{Ticket, Verdict};

    const SPEC: WindowSpec = WindowSpec::DEFAULT;

    fn add_success(store: &MemoryStore, key: &str) {
        update(store, key, SPEC, |s| {
            s.window.record(0, false);
        })
        .unwrap();
    }

    fn successes(store: &MemoryStore, key: &str) -> u64 {
        load(store, key, SPEC).unwrap().state.window.totals(0).successes
    }

    #[test]
    fn racing_writer_is_neither_lost_nor_double_counted() {
        let store = MemoryStore::new();
        let key = vendor_key("a", SPEC);
        create_if_missing(&store, &key, SPEC).unwrap();
        // Another worker records twice between our read and our write.
        store.before_next_set(move |s| {
            let k = vendor_key("a", SPEC);
            add_success(s, &k);
            add_success(s, &k);
        });
        let mut runs = 0;
        let done = update(&store, &key, SPEC, |s| {
            runs += 1;
            s.window.record(0, false);
        })
        .unwrap();
        assert_eq!(done.conflicts, 1);
        assert_eq!(runs, 2, "the step is recomputed on the fresh value");
        assert_eq!(successes(&store, &key), 3);
    }

    #[test]
    fn gives_up_after_bounded_attempts() {
        let store = MemoryStore::new();
        let key = vendor_key("a", SPEC);
        create_if_missing(&store, &key, SPEC).unwrap();
        for _ in 0..MAX_ATTEMPTS {
            store.before_next_set(|s| add_success(s, &vendor_key("a", SPEC)));
        }
        let r = update(&store, &key, SPEC, |s| s.window.record(0, false));
        assert_eq!(r.unwrap_err(), StoreError::Contended);
        assert_eq!(successes(&store, &key), u64::from(MAX_ATTEMPTS));
    }

    #[test]
    fn corrupt_blob_is_reset_not_trusted() {
        let store = MemoryStore::new();
        let key = vendor_key("a", SPEC);
        store.put_raw(&key, b"garbage that is long enough to be read as something");
        let done = update(&store, &key, SPEC, |s| s.window.record(0, true)).unwrap();
        assert!(matches!(done.reset, Some(DecodeError::Corrupt(_))));
        let state = load(&store, &key, SPEC).unwrap();
        assert_eq!(state.reset, None);
        assert_eq!(state.state.window.totals(0).failures, 1);
    }

    #[test]
    fn unchanged_state_is_not_written() {
        let store = MemoryStore::new();
        let key = vendor_key("a", SPEC);
        create_if_missing(&store, &key, SPEC).unwrap();
        let writes = store.writes.get();
        let stale = Ticket {
            generation: 99,
            probe: false,
            quiet: false,
        };
        let rules = crate::policy::health::Rules::from_config(
            &crate::policy::config::Config::parse(br#"{"vendors":[{"name":"a"}]}"#).unwrap(),
        );
        update(&store, &key, SPEC, |s| s.record(0, Verdict::Failure, stale, &rules)).unwrap();
        assert_eq!(store.writes.get(), writes);
    }

    #[test]
    fn create_if_missing_keeps_existing_state() {
        let store = MemoryStore::new();
        let key = vendor_key("a", SPEC);
        assert!(create_if_missing(&store, &key, SPEC).unwrap());
        add_success(&store, &key);
        assert!(!create_if_missing(&store, &key, SPEC).unwrap());
        assert_eq!(successes(&store, &key), 1);
    }

    #[test]
    fn byte_update_retries_like_the_state_update() {
        let store = MemoryStore::new();
        let bump = |s: &MemoryStore| {
            update_bytes(s, "n", |v| {
                let n = v.and_then(|b| b.first().copied()).unwrap_or(0) + 1;
                (vec![n], n)
            })
            .unwrap()
        };
        assert_eq!(bump(&store), 1);
        store.before_next_set(move |s| {
            bump(s);
        });
        assert_eq!(bump(&store), 3, "recomputed after the racing write");
    }

    #[test]
    fn key_carries_the_format_version() {
        assert_eq!(vendor_key("openai", SPEC), "llm_failover.v3.openai.1000msx10");
    }
}
