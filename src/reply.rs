//! The filter's own answer when every vendor is ejected and `all_down` is
//! `reject`: a 503 in OpenAI's error format, naming each vendor and when it
//! is due back, with `retry-after` set to the soonest.

use crate::choice::Due;
use crate::config::Config;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u32,
    pub retry_after_s: u64,
    pub body: String,
}

/// Seconds from `now_ms` to `due_ms`, rounded up, at least 1.
fn seconds_until(due_ms: u64, now_ms: u64) -> u64 {
    due_ms.saturating_sub(now_ms).div_ceil(1_000).max(1)
}

pub fn all_vendors_down(config: &Config, due: &[Due], now_ms: u64) -> Rejection {
    let vendors: Vec<_> = due
        .iter()
        .filter_map(|d| {
            let v = config.vendors.get(d.vendor)?;
            Some((v.name.as_str(), seconds_until(d.due_ms, now_ms)))
        })
        .collect();
    let retry_after_s = vendors.iter().map(|v| v.1).min().unwrap_or(1);
    let listed: Vec<String> = vendors
        .iter()
        .map(|(name, s)| format!("{name} in {s}s"))
        .collect();
    let message = format!(
        "Every LLM vendor is temporarily unavailable; due back: {}. Retry after {retry_after_s}s.",
        listed.join(", ")
    );
    let body = json!({
        "error": {
            "message": message,
            "type": "service_unavailable",
            "param": null,
            "code": "all_vendors_unavailable",
            "vendors": vendors
                .iter()
                .map(|(name, s)| json!({"name": name, "retry_after_s": s}))
                .collect::<Vec<_>>(),
        }
    });
    Rejection {
        status: 503,
        retry_after_s,
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_vendor_and_the_soonest_retry() {
        let config =
            Config::parse(br#"{"vendors":[{"name":"anthropic"},{"name":"openai"}]}"#).unwrap();
        let due = [
            Due {
                vendor: 1,
                due_ms: 12_001,
            },
            Due {
                vendor: 0,
                due_ms: 30_000,
            },
        ];
        let r = all_vendors_down(&config, &due, 10_000);
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after_s, 3);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "service_unavailable");
        assert_eq!(v["error"]["code"], "all_vendors_unavailable");
        assert_eq!(v["error"]["vendors"][0]["name"], "openai");
        assert_eq!(v["error"]["vendors"][1]["retry_after_s"], 20);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("openai in 3s, anthropic in 20s"), "{msg}");
    }

    #[test]
    fn never_says_retry_after_zero() {
        let config = Config::parse(br#"{"vendors":[{"name":"a"}]}"#).unwrap();
        let r = all_vendors_down(
            &config,
            &[Due {
                vendor: 0,
                due_ms: 5,
            }],
            10,
        );
        assert_eq!(r.retry_after_s, 1);
    }
}
