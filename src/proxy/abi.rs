//! Byte layouts of the proxy-wasm ABI (header maps), tested on the host.
//!
//! A header map is: the pair count (u32), then each pair's name length and
//! value length (u32 each), then each name and value followed by a NUL.
//! All integers are little-endian.

/// Decodes a header map. Lengths come from the host but are still checked:
/// a malformed map yields the pairs read before the damage. Names are
/// lowercased; values stay bytes.
pub fn parse_pairs(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(w) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(256));
    let mut at = count.saturating_mul(8).saturating_add(4);
    for i in 0..count {
        let lengths = i.checked_mul(8).and_then(|o| Some((word(o + 4)?, word(o + 8)?)));
        let Some((name_len, value_len)) = lengths else {
            break;
        };
        let Some(name) = b.get(at..at.saturating_add(name_len)) else {
            break;
        };
        at = at.saturating_add(name_len).saturating_add(1);
        let Some(value) = b.get(at..at.saturating_add(value_len)) else {
            break;
        };
        at = at.saturating_add(value_len).saturating_add(1);
        out.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()));
    }
    out
}

/// Encodes a header map.
pub fn serialize_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(n, v)| 10 + n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs: [(&str, &[u8]); 3] = [(":status", b"429"), ("Retry-After", b"2"), ("x-bin", b"\xff\x00\xfe")];
        let parsed = parse_pairs(&serialize_pairs(&pairs));
        assert_eq!(
            parsed,
            vec![
                (":status".to_string(), b"429".to_vec()),
                ("retry-after".to_string(), b"2".to_vec()),
                ("x-bin".to_string(), b"\xff\x00\xfe".to_vec()),
            ]
        );
    }

    #[test]
    fn malformed_maps_never_panic() {
        let good = serialize_pairs(&[("a", b"1"), ("b", b"22")]);
        for len in 0..good.len() {
            let _ = parse_pairs(&good[..len]);
        }
        assert_eq!(parse_pairs(&good[..good.len() - 3]).len(), 1);
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_pairs(&huge).len() <= 2);
        let mut lying = good.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_pairs(&lying).is_empty());
        assert!(parse_pairs(&[]).is_empty());
    }
}
