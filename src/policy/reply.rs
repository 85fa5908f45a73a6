//! The filter's own answers in the client's API format: 503 when no vendor is left, 404 for an unserved model.
//!
//! The 503 names each vendor and when it is due back, with `retry-after`
//! set to the soonest.

use crate::policy::choice::Due;
use crate::policy::config::{Config, Format, VendorId};
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

/// Every vendor is ejected, or every one that could serve has failed
/// (`tried`, in the order tried): names each vendor and when it is due back.
pub fn unavailable(format: Option<Format>, config: &Config, due: &[Due], now_ms: u64, tried: &[VendorId]) -> Rejection {
    let vendors: Vec<(&str, u64)> = due
        .iter()
        .filter_map(|d| {
            let v = config.vendors.get(d.vendor)?;
            Some((v.name.as_str(), seconds_until(d.due_ms, now_ms)))
        })
        .collect();
    let retry_after_s = vendors.iter().map(|v| v.1).min().unwrap_or(1);
    let listed: Vec<String> = vendors.iter().map(|(name, s)| format!("{name} in {s}s")).collect();
    let mut message = if listed.is_empty() {
        // Nothing is ejected: the vendors tried each failed this request.
        format!("No vendor could serve this request. Retry after {retry_after_s}s.")
    } else {
        format!(
            "Every LLM vendor is temporarily unavailable; due back: {}. Retry after {retry_after_s}s.",
            listed.join(", ")
        )
    };
    let tried: Vec<&str> = tried
        .iter()
        .filter_map(|&v| config.vendors.get(v).map(|x| x.name.as_str()))
        .collect();
    if !tried.is_empty() {
        message = format!("Tried {} without success. {message}", tried.join(", "));
    }
    let body = match format {
        Some(Format::Anthropic) => json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        _ => {
            let mut error = json!({
                "message": message,
                "type": "service_unavailable",
                "param": null,
                "code": "all_vendors_unavailable",
                "vendors": vendors
                    .iter()
                    .map(|(name, s)| json!({"name": name, "retry_after_s": s}))
                    .collect::<Vec<_>>(),
            });
            if let (false, Some(fields)) = (tried.is_empty(), error.as_object_mut()) {
                fields.insert("tried".into(), json!(tried));
            }
            json!({ "error": error })
        }
    };
    Rejection {
        status: 503,
        retry_after_s,
        body: body.to_string(),
    }
}

/// No vendor serves the requested model in the client's API format.
pub fn model_not_served(format: Option<Format>, model: &str) -> Rejection {
    let message = format!("No configured vendor serves the model {model:?}.");
    let body = match format {
        Some(Format::Anthropic) => json!({"type": "error", "error": {"type": "not_found_error", "message": message}}),
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
        }
    };
    Rejection {
        status: 404,
        retry_after_s: 0,
        body: body.to_string(),
    }
}

/// Envoy's own reply for a vendor that gave no proper answer (a reset, a
/// refused connection, a timeout), said again in the client's API format
/// with the same status.
pub fn vendor_failed(format: Option<Format>, status: u32, vendor: &str, reason: &str) -> Rejection {
    let message = format!("llm-failover: vendor {vendor} gave no answer ({reason}).");
    let body = match format {
        Some(Format::Anthropic) => json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        _ => {
            json!({"error": {"message": message, "type": "server_error", "param": null, "code": format!("upstream_{reason}")}})
        }
    };
    Rejection {
        status,
        retry_after_s: 0,
        body: body.to_string(),
    }
}

/// A rescue's answer larger than the filter holds (502).
pub fn answer_too_large(format: Option<Format>, vendor: &str, limit: u64) -> Rejection {
    let message = format!(
        "llm-failover: vendor {vendor} answered, but its answer is larger than {limit} bytes (rescue.max_answer_bytes) and cannot be relayed."
    );
    let body = match format {
        Some(Format::Anthropic) => json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        _ => json!({"error": {"message": message, "type": "server_error", "param": null, "code": "answer_too_large"}}),
    };
    Rejection {
        status: 502,
        retry_after_s: 0,
        body: body.to_string(),
    }
}

/// A request the filter will not forward, because it cannot read it (400).
pub fn bad_request(format: Option<Format>, why: &str) -> Rejection {
    let message = format!("llm-failover: {why}.");
    let body = match format {
        Some(Format::Anthropic) => {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
        }
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_request_body"}})
        }
    };
    Rejection {
        status: 400,
        retry_after_s: 0,
        body: body.to_string(),
    }
}

/// A request whose body is larger than the filter reads, which a route
/// group or a model map would have to change (413).
pub fn too_large(format: Option<Format>, limit: u64) -> Rejection {
    let message = format!(
        "llm-failover: the request body is larger than {limit} bytes (rescue.max_body_bytes), so its model cannot be read for routing."
    );
    let body = match format {
        Some(Format::Anthropic) => json!({"type": "error", "error": {"type": "request_too_large", "message": message}}),
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "request_too_large"}})
        }
    };
    Rejection {
        status: 413,
        retry_after_s: 0,
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{UnitId, VendorId};

    #[test]
    fn names_every_vendor_and_the_soonest_retry() {
        let config = Config::parse(br#"{"vendors":[{"name":"anthropic"},{"name":"openai"}]}"#).unwrap();
        let due = [
            Due {
                unit: UnitId(1),
                planned: UnitId(1),
                vendor: VendorId(1),
                due_ms: 12_001,
            },
            Due {
                unit: UnitId(0),
                planned: UnitId(0),
                vendor: VendorId(0),
                due_ms: 30_000,
            },
        ];
        let r = unavailable(None, &config, &due, 10_000, &[]);
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
    fn answers_in_the_clients_format() {
        let config = Config::parse(br#"{"vendors":[{"name":"a"},{"name":"b"}]}"#).unwrap();
        let due = [Due {
            unit: UnitId(1),
            planned: UnitId(1),
            vendor: VendorId(1),
            due_ms: 4_000,
        }];
        let r = unavailable(
            Some(Format::Anthropic),
            &config,
            &due,
            1_000,
            &[VendorId(0), VendorId(1)],
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("Tried a, b without success."), "{msg}");
        assert_eq!(r.retry_after_s, 3);
        let r = unavailable(Some(Format::OpenAi), &config, &due, 1_000, &[VendorId(0)]);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "all_vendors_unavailable");
        assert_eq!(v["error"]["tried"], json!(["a"]));
        let r = model_not_served(Some(Format::OpenAi), "gpt-9");
        assert_eq!(r.status, 404);
        assert!(r.body.contains("model_not_found"));
        assert!(model_not_served(Some(Format::Anthropic), "x")
            .body
            .contains("not_found_error"));
    }

    #[test]
    fn with_nothing_ejected_it_lists_no_vendors_due_back() {
        let config = Config::parse(br#"{"vendors":[{"name":"a"},{"name":"b"}]}"#).unwrap();
        let r = unavailable(None, &config, &[], 0, &[VendorId(0), VendorId(1)]);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert_eq!(
            msg,
            "Tried a, b without success. No vendor could serve this request. Retry after 1s."
        );
        assert!(!msg.contains("due back"));
    }

    #[test]
    fn never_says_retry_after_zero() {
        let config = Config::parse(br#"{"vendors":[{"name":"a"}]}"#).unwrap();
        let due = [Due {
            unit: UnitId(0),
            planned: UnitId(0),
            vendor: VendorId(0),
            due_ms: 5,
        }];
        let r = unavailable(None, &config, &due, 10, &[]);
        assert_eq!(r.retry_after_s, 1);
    }
}
