//! The JSON reader: typed fields with their full path, durations, and refusal of unknown fields.

use super::ConfigError;
use serde_json::{Map, Value};
use std::num::{NonZeroU32, NonZeroU64};

pub(super) fn err<T>(field: &str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    })
}

/// Parses "250ms", "10s", "1.5s", "5m", "1h" into milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let ms = value * scale;
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) || ms.fract() != 0.0 {
        return None;
    }
    Some(ms as u64)
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read: remembers its path and which keys were used,
/// so unknown keys are reported instead of silently ignored.
///
/// The JSON is walked by hand rather than derived with serde so that every
/// error names the full field path (`trip.failure_ratio`) and the bad value.
pub(super) struct Fields<'a> {
    prefix: String,
    map: &'a Map<String, Value>,
    known: std::cell::RefCell<Vec<&'static str>>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(prefix: &str, value: &'a Value) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Fields {
                prefix: prefix.to_string(),
                map,
                known: std::cell::RefCell::new(Vec::new()),
            }),
            other => err(
                if prefix.is_empty() { "(root)" } else { prefix },
                format!("must be a JSON object, got {}", kind(other)),
            ),
        }
    }

    pub(super) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(super) fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.known.borrow_mut().push(key);
        self.map.get(key)
    }

    /// Fails on the first key that no accessor asked for.
    pub(super) fn finish(&self) -> Result<(), ConfigError> {
        let known = self.known.borrow();
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => {
                let mut expected: Vec<&str> = known.clone();
                expected.sort_unstable();
                err(
                    &self.path(unknown),
                    format!("is not a known field (expected one of: {})", expected.join(", ")),
                )
            }
            None => Ok(()),
        }
    }

    pub(super) fn section(&self, key: &'static str) -> Result<Option<Fields<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Fields::new(&self.path(key), v).map(Some),
        }
    }

    pub(super) fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => err(&self.path(key), format!("must be a string, got {}", kind(other))),
        }
    }

    pub(super) fn boolean(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => err(&self.path(key), format!("must be true or false, got {}", kind(other))),
        }
    }

    /// A whole number from `min` to `max`.
    pub(super) fn integer_in(&self, key: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.whole(key, default, min, max, Some)
    }

    /// A whole number from `min` to `max`, as a `u32`.
    pub(super) fn u32_in(&self, key: &'static str, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
        self.whole(key, default, u64::from(min), u64::from(max), |n| u32::try_from(n).ok())
    }

    /// A count from 1 to `max`.
    pub(super) fn count_in(&self, key: &'static str, default: NonZeroU32, max: u32) -> Result<NonZeroU32, ConfigError> {
        self.whole(key, default, 1, u64::from(max), |n| {
            u32::try_from(n).ok().and_then(NonZeroU32::new)
        })
    }

    /// A whole number from `min` to `max` that `convert` turns into a `T`;
    /// one that it refuses is out of range like any other.
    fn whole<T>(
        &self,
        key: &'static str,
        default: T,
        min: u64,
        max: u64,
        convert: impl FnOnce(u64) -> Option<T>,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_u64().filter(|n| (min..=max).contains(n)).and_then(convert) {
                Some(n) => Ok(n),
                None => err(
                    &self.path(key),
                    format!("must be a whole number from {min} to {max}, got {v}"),
                ),
            },
        }
    }

    pub(super) fn duration_in(
        &self,
        key: &'static str,
        default_ms: u64,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<u64, ConfigError> {
        self.duration(key, default_ms, min_ms, max_ms, Some)
    }

    /// A duration from `min_ms` to `max_ms` that cannot be zero.
    pub(super) fn positive_duration_in(
        &self,
        key: &'static str,
        default: NonZeroU64,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<NonZeroU64, ConfigError> {
        self.duration(key, default, min_ms, max_ms, NonZeroU64::new)
    }

    /// A duration from `min_ms` to `max_ms` that `convert` turns into a `T`;
    /// one that it refuses is out of range like any other.
    fn duration<T>(
        &self,
        key: &'static str,
        default: T,
        min_ms: u64,
        max_ms: u64,
        convert: impl FnOnce(u64) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(default);
        };
        match parse_duration(&text) {
            Some(ms) => match Some(ms).filter(|ms| (min_ms..=max_ms).contains(ms)).and_then(convert) {
                Some(v) => Ok(v),
                None => err(
                    &self.path(key),
                    format!("{text:?} ({ms} ms) must be from {min_ms} ms to {max_ms} ms"),
                ),
            },
            None => err(
                &self.path(key),
                format!("{text:?} is not a duration; write it like \"250ms\", \"10s\", \"5m\" or \"1h\""),
            ),
        }
    }

    /// A share: greater than 0, at most 1.
    pub(super) fn ratio(&self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(r) if r > 0.0 && r <= 1.0 => Ok(r),
                _ => err(
                    &self.path(key),
                    format!("must be greater than 0 and at most 1, got {n}"),
                ),
            },
            Some(other) => err(
                &self.path(key),
                format!("must be a number between 0 and 1, got {}", kind(other)),
            ),
        }
    }

    /// A duration, or `"off"` / `null` for none.
    pub(super) fn optional_duration(
        &self,
        key: &'static str,
        default_ms: Option<u64>,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<Option<u64>, ConfigError> {
        match self.map.get(key) {
            Some(Value::Null) => {
                self.get(key);
                Ok(None)
            }
            Some(Value::String(s)) if s == "off" => {
                self.get(key);
                Ok(None)
            }
            None => {
                self.get(key);
                Ok(default_ms)
            }
            Some(_) => self.duration_in(key, 0, min_ms, max_ms).map(Some),
        }
    }

    pub(super) fn header_name(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.header_name_or_empty(key, default)?;
        if name.is_empty() {
            return err(&self.path(key), "must not be empty");
        }
        Ok(name)
    }

    pub(super) fn header_name_or_empty(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.string(key)?.unwrap_or_else(|| default.to_string());
        let valid = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid || name.len() > 128 {
            return err(
                &self.path(key),
                format!("{name:?} must be a lowercase HTTP header name (a-z, 0-9, '-', '_')"),
            );
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        for bad in [
            "", "10", "s", "10 s", "-1s", "1.s", ".5s", "1e3s", "10sec", "0.0001s", "1..2s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
