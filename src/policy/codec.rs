//! The binary, versioned, checksummed form of a unit's state in shared data.
//!
//! Fixed little-endian layout, a format version and a checksum: a blob from
//! another layout, another window shape or a corrupted write is detected and
//! replaced by a fresh state, never trusted. 84 bytes plus 12 per bucket
//! (208 bytes for the default 10 buckets).
//!
//! ```text
//!  0  magic "LF", format version (u8)
//!  3  phase: 0 closed, 1 open, 2 half-open (u8)
//!  4  generation, level, consecutive failures, ejections (u32 each)
//! 20  closed_at_ms (u64)
//! 28  phase data: until_ms / last_probe_ms (u64), taken, successes (u32)
//! 44  rate-limit cooldown until (u64)
//! 52  owner: the requested model a model slot serves (u64 hash; 0: none)
//! 60  touched_ms: the last write (u64)
//! 68  window: bucket_ms (u32), buckets (u32), head (u64)
//! 84  buckets: successes, failures, slow (u32 each)
//!  .  FNV-1a 32 of everything before it (u32)
//! ```

use crate::policy::config::WindowSpec;
use crate::policy::health::{Phase, VendorState};
use crate::policy::window::{Bucket, Window};
use std::fmt;

pub const FORMAT_VERSION: u8 = 3;
const MAGIC: [u8; 2] = *b"LF";
const HEADER_LEN: usize = 84;

/// Why a stored blob was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not ours, truncated or corrupted.
    Corrupt(&'static str),
    /// Written by another format version.
    Version(u8),
    /// Written for another window shape (the configuration changed).
    WindowChanged,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Corrupt(why) => write!(f, "corrupt state ({why})"),
            DecodeError::Version(v) => write!(f, "state written by format version {v}, this is {FORMAT_VERSION}"),
            DecodeError::WindowChanged => f.write_str("window shape changed by the configuration"),
        }
    }
}

pub fn encoded_len(buckets: u32) -> usize {
    HEADER_LEN + 12 * buckets as usize + 4
}

pub fn encode(state: &VendorState) -> Vec<u8> {
    let spec = state.window.spec();
    let mut out = Vec::with_capacity(encoded_len(spec.buckets.get()));
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    let (tag, a, b, c) = match state.phase {
        Phase::Closed => (0u8, 0u64, 0u32, 0u32),
        Phase::Open { until_ms } => (1, until_ms, 0, 0),
        Phase::HalfOpen {
            taken,
            successes,
            last_probe_ms,
        } => (2, last_probe_ms, taken, successes),
    };
    out.push(tag);
    for v in [
        state.generation,
        state.level,
        state.consecutive_failures,
        state.ejections,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&state.closed_at_ms.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(&state.cooldown_until_ms.to_le_bytes());
    out.extend_from_slice(&state.owner.to_le_bytes());
    out.extend_from_slice(&state.touched_ms.to_le_bytes());
    out.extend_from_slice(&(spec.bucket_ms.get().min(u64::from(u32::MAX)) as u32).to_le_bytes());
    out.extend_from_slice(&spec.buckets.get().to_le_bytes());
    out.extend_from_slice(&state.window.head().to_le_bytes());
    for bucket in state.window.ring() {
        out.extend_from_slice(&bucket.successes.to_le_bytes());
        out.extend_from_slice(&bucket.failures.to_le_bytes());
        out.extend_from_slice(&bucket.slow.to_le_bytes());
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes a blob written for `spec`.
pub fn decode(bytes: &[u8], spec: WindowSpec) -> Result<VendorState, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(2)? != MAGIC {
        return Err(DecodeError::Corrupt("bad magic"));
    }
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let (body, sum) = bytes.split_last_chunk::<4>().ok_or(DecodeError::Corrupt("too short"))?;
    if fnv1a(body) != u32::from_le_bytes(*sum) {
        return Err(DecodeError::Corrupt("checksum mismatch"));
    }
    let tag = r.u8()?;
    let generation = r.u32()?;
    let level = r.u32()?;
    let consecutive_failures = r.u32()?;
    let ejections = r.u32()?;
    let closed_at_ms = r.u64()?;
    let a = r.u64()?;
    let b = r.u32()?;
    let c = r.u32()?;
    let cooldown_until_ms = r.u64()?;
    let owner = r.u64()?;
    let touched_ms = r.u64()?;
    let phase = match tag {
        0 => Phase::Closed,
        1 => Phase::Open { until_ms: a },
        2 => Phase::HalfOpen {
            taken: b,
            successes: c,
            last_probe_ms: a,
        },
        _ => return Err(DecodeError::Corrupt("unknown phase")),
    };
    let bucket_ms = u64::from(r.u32()?);
    let buckets = r.u32()?;
    let stored = WindowSpec::new(bucket_ms, buckets).ok_or(DecodeError::Corrupt("zero window shape"))?;
    if stored != spec {
        return Err(DecodeError::WindowChanged);
    }
    if bytes.len() != encoded_len(buckets) {
        return Err(DecodeError::Corrupt("length does not match bucket count"));
    }
    let head = r.u64()?;
    let mut ring = Vec::with_capacity(buckets as usize);
    for _ in 0..buckets {
        ring.push(Bucket {
            successes: r.u32()?,
            failures: r.u32()?,
            slow: r.u32()?,
        });
    }
    let window = Window::from_parts(spec, head, ring).ok_or(DecodeError::Corrupt("bucket count"))?;
    Ok(VendorState {
        phase,
        generation,
        level,
        closed_at_ms,
        consecutive_failures,
        ejections,
        cooldown_until_ms,
        owner,
        touched_ms,
        window,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Corrupt("too short"))?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError::Corrupt("too short"))?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// FNV-1a, 32 bits: cheap and good enough to catch torn or foreign writes.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: WindowSpec = WindowSpec::DEFAULT;

    fn busy_state() -> VendorState {
        let mut s = VendorState::new(SPEC);
        s.phase = Phase::HalfOpen {
            taken: 2,
            successes: 1,
            last_probe_ms: 1_700_000_000_123,
        };
        s.generation = 7;
        s.level = 3;
        s.consecutive_failures = 2;
        s.ejections = 9;
        s.closed_at_ms = 1_699_999_999_000;
        s.cooldown_until_ms = 1_700_000_000_777;
        for i in 0..25 {
            s.window.record(1_700_000_000_000 + i * 400, i % 3 == 0);
        }
        s.window.record_slow(1_700_000_000_000 + 9_000);
        s
    }

    #[test]
    fn round_trips_every_phase() {
        for phase in [
            Phase::Closed,
            Phase::Open { until_ms: 42 },
            Phase::HalfOpen {
                taken: 3,
                successes: 2,
                last_probe_ms: 99,
            },
        ] {
            let mut s = busy_state();
            s.phase = phase;
            let blob = encode(&s);
            assert_eq!(blob.len(), encoded_len(10));
            assert_eq!(blob.len(), 208);
            assert_eq!(decode(&blob, SPEC), Ok(s));
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let blob = encode(&busy_state());
        for byte in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode(&bad, SPEC).is_err(), "flip at byte {byte} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn truncated_and_foreign_blobs_are_refused() {
        let blob = encode(&busy_state());
        for len in 0..blob.len() {
            assert!(decode(&blob[..len], SPEC).is_err(), "length {len} accepted");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(decode(&longer, SPEC).is_err());
        assert!(decode(b"{\"state\":\"closed\"}", SPEC).is_err());
        assert!(decode(&[0xff; 208], SPEC).is_err());
    }

    #[test]
    fn other_version_and_window_shape_are_reported_as_such() {
        let mut blob = encode(&busy_state());
        blob[2] = 9;
        assert_eq!(decode(&blob, SPEC), Err(DecodeError::Version(9)));
        let blob = encode(&busy_state());
        let other = WindowSpec::new(2_000, 10).unwrap();
        assert_eq!(decode(&blob, other), Err(DecodeError::WindowChanged));
    }

    #[test]
    fn a_zero_window_shape_is_corrupt_even_with_a_good_checksum() {
        for at in [68, 72] {
            let mut blob = encode(&busy_state());
            blob[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            let body = blob.len() - 4;
            let sum = fnv1a(&blob[..body]);
            blob[body..].copy_from_slice(&sum.to_le_bytes());
            assert_eq!(
                decode(&blob, SPEC),
                Err(DecodeError::Corrupt("zero window shape")),
                "zero at byte {at}"
            );
        }
    }
}
