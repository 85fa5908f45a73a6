//! How long a vendor that answered 429 asks to be left alone, read from its headers.
//!
//! Understood, in this order of trust:
//! - `retry-after-ms` (OpenAI, Azure): milliseconds;
//! - `retry-after`: seconds, or an HTTP date;
//! - the reset time of each limit: `x-ratelimit-reset-requests` /
//!   `-tokens` (OpenAI: durations like `1s`, `6m0s`, `20ms`) and
//!   `anthropic-ratelimit-*-reset` (RFC 3339 times). When a matching
//!   `…-remaining` header says which limit ran out, its reset counts (the
//!   latest, if several ran out); otherwise the soonest reset.
//!
//! Anything unparsable is ignored, as if the header were absent.

/// Milliseconds from `now_ms` until the vendor may be used again, if the
/// headers say. `headers` are (lowercase name, value) pairs.
pub fn retry_after_ms(headers: &[(&str, &[u8])], now_ms: u64) -> Option<u64> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    if let Some(ms) = get("retry-after-ms")
        .and_then(parse_number)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(ms.ceil() as u64);
    }
    if let Some(v) = get("retry-after") {
        if let Some(s) = parse_number(v).filter(|s| s.is_finite() && *s >= 0.0) {
            return Some((s * 1000.0).ceil() as u64);
        }
        if let Some(at) = parse_http_date(v) {
            return Some(at.saturating_sub(now_ms));
        }
    }
    let mut exhausted: Option<u64> = None;
    let mut soonest: Option<u64> = None;
    for (name, value) in headers {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let (reset, remaining_name) = if let Some(kind) = name.strip_prefix("x-ratelimit-reset-") {
            (parse_go_duration(value), format!("x-ratelimit-remaining-{kind}"))
        } else if let Some(kind) = name
            .strip_prefix("anthropic-ratelimit-")
            .and_then(|k| k.strip_suffix("-reset"))
        {
            (
                parse_rfc3339(value).map(|at| at.saturating_sub(now_ms)),
                format!("anthropic-ratelimit-{kind}-remaining"),
            )
        } else {
            continue;
        };
        let Some(reset) = reset else { continue };
        soonest = Some(soonest.map_or(reset, |s| s.min(reset)));
        if get(&remaining_name).and_then(parse_number) == Some(0.0) {
            exhausted = Some(exhausted.map_or(reset, |e| e.max(reset)));
        }
    }
    exhausted.or(soonest)
}

fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    s.parse().ok()
}

/// Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(s: &str) -> Option<u64> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    total.is_finite().then(|| total.ceil() as u64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A civil date and time of day, as written in a header.
struct Stamp {
    year: i64,
    month: u32,
    day: u32,
    hms: (u32, u32, u32),
    frac_ms: u64,
    offset_min: i64,
}

impl Stamp {
    fn epoch_ms(&self) -> Option<u64> {
        let (h, m, s) = self.hms;
        if !(1..=12).contains(&self.month) || !(1..=31).contains(&self.day) || h > 23 || m > 59 || s > 60 {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = days * 86_400 + i64::from(h) * 3_600 + i64::from(m) * 60 + i64::from(s) - self.offset_min * 60;
        u64::try_from(secs).ok()?.checked_mul(1_000)?.checked_add(self.frac_ms)
    }
}

/// IMF-fixdate, the HTTP date: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    if *zone != "GMT" && *zone != "UTC" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    Stamp {
        year: year.parse().ok()?,
        month,
        day: day.parse().ok()?,
        hms: parse_hms(time)?,
        frac_ms: 0,
        offset_min: 0,
    }
    .epoch_ms()
}

fn parse_hms(t: &str) -> Option<(u32, u32, u32)> {
    let mut it = t.split(':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    it.next().is_none().then_some((h, m, s))
}

/// RFC 3339: `2026-11-25T10:00:00Z`, `2026-11-25T10:00:00.250+01:00`.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if d.next().is_some() {
        return None;
    }
    let zone_at = rest.find(['Z', 'z', '+', '-'])?;
    let (time, zone) = rest.split_at(zone_at);
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let hms = parse_hms(hms)?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ms = format!("{frac:0<3}").get(..3)?.parse::<u64>().ok()?;
    let offset_min = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (oh, om) = zone.get(1..)?.split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
        }
    };
    Stamp {
        year,
        month,
        day,
        hms,
        frac_ms,
        offset_min,
    }
    .epoch_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_064_800_000; // 2025-11-25T10:00:00Z

    fn after(headers: &[(&str, &str)]) -> Option<u64> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        retry_after_ms(&h, NOW)
    }

    #[test]
    fn clock_reference_is_right() {
        assert_eq!(parse_rfc3339("2025-11-25T10:00:00Z"), Some(NOW));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
    }

    #[test]
    fn retry_after_in_seconds_and_ms() {
        assert_eq!(after(&[("retry-after", "2")]), Some(2_000));
        assert_eq!(after(&[("retry-after", " 0.5 ")]), Some(500));
        assert_eq!(after(&[("retry-after-ms", "1500"), ("retry-after", "9")]), Some(1_500));
        assert_eq!(after(&[("retry-after", "0")]), Some(0));
    }

    #[test]
    fn retry_after_as_an_http_date() {
        assert_eq!(after(&[("retry-after", "Tue, 25 Nov 2025 10:00:07 GMT")]), Some(7_000));
        // Already past: no wait.
        assert_eq!(after(&[("retry-after", "Tue, 25 Nov 2025 09:00:00 GMT")]), Some(0));
    }

    #[test]
    fn openai_reset_headers() {
        assert_eq!(parse_go_duration("1s"), Some(1_000));
        assert_eq!(parse_go_duration("6m0s"), Some(360_000));
        assert_eq!(parse_go_duration("20ms"), Some(20));
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(3_723_500));
        // The exhausted limit decides.
        let h = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-remaining-tokens", "5000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ];
        assert_eq!(after(&h), Some(2_000));
        // Without remaining counts: the soonest reset.
        assert_eq!(
            after(&[("x-ratelimit-reset-requests", "3s"), ("x-ratelimit-reset-tokens", "1s")]),
            Some(1_000)
        );
    }

    #[test]
    fn anthropic_reset_headers() {
        let h = [
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", "2025-11-25T10:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "2025-11-25T10:00:04.500Z"),
        ];
        assert_eq!(after(&h), Some(4_500));
        assert_eq!(
            after(&[("anthropic-ratelimit-input-tokens-reset", "2025-11-25T11:00:03+01:00")]),
            Some(3_000)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        for v in [
            "",
            "soon",
            "-1",
            "1e9",
            "NaN",
            "Tue, 99 Nov 2025 10:00:07 GMT",
            "1 2",
            "0x10",
        ] {
            assert_eq!(after(&[("retry-after", v)]), None, "{v:?}");
        }
        for v in ["", "s", "1x", "1.2.3s", "m5"] {
            assert_eq!(parse_go_duration(v), None, "{v:?}");
        }
        for v in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-11-25 10:00",
            "2025-11-25T10:00:00",
            "2025-11-25T10:00:00.x1Z",
        ] {
            assert_eq!(parse_rfc3339(v), None, "{v:?}");
        }
        assert_eq!(after(&[("x-ratelimit-reset-requests", "later")]), None);
        assert_eq!(after(&[]), None);
        // Non-UTF-8 values are skipped.
        let h: [(&str, &[u8]); 1] = [("retry-after", b"\xff\xfe")];
        assert_eq!(retry_after_ms(&h, NOW), None);
    }
}
