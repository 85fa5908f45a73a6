//! The registry of worker queues that hear of routing changes, and the worker numbering.
//!
//! Each worker VM owns a proxy-wasm shared queue. Queue tokens are process
//! wide, so a worker publishes its token in a shared-data registry; whoever
//! changes a vendor in a way that matters for routing (see `view`) puts the
//! vendor's state key on every other worker's queue, and each of them drops
//! its copy of that vendor. This module holds the pure parts: the registry
//! format and the worker numbering.

/// Shared-data key listing the queue tokens of live workers.
pub const REGISTRY_KEY: &str = "llm_failover.v1.queues";
/// Shared-data key of the counter that names worker queues.
pub const SEQUENCE_KEY: &str = "llm_failover.v1.worker_seq";
/// Registry entries kept: reloaded VMs leave their tokens behind, so only
/// the newest are kept.
pub const MAX_WORKERS: usize = 64;

/// The tokens in a registry blob (little-endian u32 each; a torn tail is ignored).
pub fn tokens(registry: &[u8]) -> Vec<u32> {
    registry
        .chunks_exact(4)
        .filter_map(|c| <[u8; 4]>::try_from(c).ok())
        .map(u32::from_le_bytes)
        .collect()
}

/// The registry with `token` added as the newest entry.
pub fn join(registry: Option<&[u8]>, token: u32) -> Vec<u8> {
    let mut list: Vec<u32> = registry.map(tokens).unwrap_or_default();
    list.retain(|&t| t != token);
    list.push(token);
    let skip = list.len().saturating_sub(MAX_WORKERS);
    list.iter().skip(skip).flat_map(|t| t.to_le_bytes()).collect()
}

/// The next worker number after the stored one, and the value to store.
pub fn next_sequence(current: Option<&[u8]>) -> (Vec<u8>, u32) {
    let n = current
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
        .wrapping_add(1);
    (n.to_le_bytes().to_vec(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_appends_once_and_keeps_the_newest() {
        let r = join(None, 7);
        let r = join(Some(&r), 9);
        let r = join(Some(&r), 7);
        assert_eq!(tokens(&r), vec![9, 7]);
        let mut r = Vec::new();
        for t in 0..100 {
            r = join(Some(&r), t);
        }
        let list = tokens(&r);
        assert_eq!(list.len(), MAX_WORKERS);
        assert_eq!(list.first(), Some(&36));
        assert_eq!(list.last(), Some(&99));
    }

    #[test]
    fn garbage_registry_is_read_as_far_as_it_goes() {
        assert_eq!(tokens(&[1, 0, 0, 0, 9, 9]), vec![1]);
        assert_eq!(tokens(&[]), Vec::<u32>::new());
    }

    #[test]
    fn sequence_counts_up_from_anything() {
        assert_eq!(next_sequence(None).1, 1);
        let (stored, n) = next_sequence(Some(&5u32.to_le_bytes()));
        assert_eq!(n, 6);
        assert_eq!(next_sequence(Some(&stored)).1, 7);
        assert_eq!(next_sequence(Some(b"junk!")).1, 1);
    }
}
