//! The operator's side: the status document, draining and undraining vendors and models, who may ask.
//!
//! Served by the filter itself on `admin.path`, only to a caller with the
//! bearer token read from `admin.token_env`; anyone else's request goes on
//! as if the path did not exist. Drains live in shared data (one list for
//! every worker); `disabled: true` in the filter JSON drains declaratively.

use crate::policy::config::{Config, UnitId, VendorId};
use crate::policy::health::{PhaseKind, VendorState};
use crate::policy::plan::Candidate;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Shared-data key of the operator's drains (JSON).
pub const DRAINS_KEY: &str = "llm_failover.v1.drains";
/// At most this many drains are kept (a bound on the shared blob).
pub const MAX_DRAINS: usize = 256;

/// What an operator request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Status {
        html: bool,
    },
    Drain {
        vendor: String,
        model: Option<String>,
        force: bool,
    },
    Undrain {
        vendor: String,
        model: Option<String>,
    },
    /// On the admin path, but no such operation: 404 (for an authorized caller).
    Unknown,
}

/// Reads an operator request: `GET <path>` (JSON; HTML for a browser, or
/// `?format=html`), `POST <path>/drain?vendor=V[&model=M][&force=true]`,
/// `POST <path>/undrain?vendor=V[&model=M]`. `None`: not the admin path.
pub fn read(admin_path: &str, method: &[u8], path: &[u8], accept: Option<&[u8]>) -> Option<Ask> {
    let path = std::str::from_utf8(path).ok()?;
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let rest = route.strip_prefix(admin_path)?;
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    let ask = match (method, rest) {
        (b"GET" | b"HEAD", "" | "/") => {
            let html = match param("format").as_deref() {
                Some("html") => true,
                Some(_) => false,
                None => accept.is_some_and(|a| crate::policy::sse::find(a, b"text/html").is_some()),
            };
            Ask::Status { html }
        }
        (b"POST", "/drain") => match param("vendor") {
            Some(vendor) => Ask::Drain {
                vendor,
                model: param("model").filter(|m| !m.is_empty()),
                force: matches!(param("force").as_deref(), Some("true" | "1" | "yes")),
            },
            None => Ask::Unknown,
        },
        (b"POST", "/undrain") => match param("vendor") {
            Some(vendor) => Ask::Undrain {
                vendor,
                model: param("model").filter(|m| !m.is_empty()),
            },
            None => Ask::Unknown,
        },
        (_, r) if r.is_empty() || r.starts_with('/') => Ask::Unknown,
        _ => return None, // `/llm-failoverx`: another path
    };
    Some(ask)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |at: usize| b.get(at).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an `authorization` header carries `token` as a bearer token,
/// compared in constant time.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    diff == 0 && !want.is_empty()
}

/// One drain: a vendor, or one of its models, taken out of routing by an
/// operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub vendor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// When it was asked (ms since the epoch).
    pub since_ms: u64,
    /// Asked to drain the last vendor that could serve.
    #[serde(default)]
    pub forced: bool,
}

/// Every drain the operators asked for, as kept in shared data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drains {
    pub list: Vec<Drain>,
}

impl Drains {
    /// Reads the shared blob; an unreadable one counts as no drains.
    pub fn decode(bytes: Option<&[u8]>) -> Drains {
        bytes
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn position(&self, vendor: &str, model: Option<&str>) -> Option<usize> {
        self.list
            .iter()
            .position(|d| d.vendor == vendor && d.model.as_deref() == model)
    }
}

/// Why a drain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    UnknownVendor(String),
    /// Every vendor would be drained: nothing could serve.
    LastVendor(String),
    TooMany,
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::UnknownVendor(v) => format!("no vendor named {v:?} is configured"),
            Refused::LastVendor(v) => format!(
                "draining {v} would leave no vendor to serve: every other vendor is drained or disabled; \
                 add force=true to drain it anyway (requests then get 503)"
            ),
            Refused::TooMany => format!("at most {MAX_DRAINS} drains are kept"),
        }
    }
}

/// `drains` with `vendor` (or its `model`) drained at `now_ms`: refused for
/// an unknown vendor, or for the last vendor that could serve unless
/// `force`. Draining again what is drained changes nothing.
pub fn drain(
    drains: &Drains,
    config: &Config,
    vendor: &str,
    model: Option<&str>,
    force: bool,
    now_ms: u64,
) -> Result<Drains, Refused> {
    let Some(v) = config.vendors.position(|x| x.name == vendor) else {
        return Err(Refused::UnknownVendor(vendor.to_string()));
    };
    if drains.position(vendor, model).is_some() {
        return Ok(drains.clone());
    }
    if drains.list.len() >= MAX_DRAINS {
        return Err(Refused::TooMany);
    }
    if model.is_none() && !force {
        let others_serve = config
            .vendors
            .iter()
            .any(|(id, x)| id != v && !x.disabled && drains.position(&x.name, None).is_none());
        if !others_serve {
            return Err(Refused::LastVendor(vendor.to_string()));
        }
    }
    let mut out = drains.clone();
    out.list.push(Drain {
        vendor: vendor.to_string(),
        model: model.map(str::to_string),
        since_ms: now_ms,
        forced: force,
    });
    Ok(out)
}

/// `drains` without the drain of `vendor` (or its `model`); `None` if it
/// was not drained.
pub fn undrain(drains: &Drains, vendor: &str, model: Option<&str>) -> Option<Drains> {
    let at = drains.position(vendor, model)?;
    let mut out = drains.clone();
    out.list.remove(at);
    Some(out)
}

/// The drains in force, as routing sees them: the operators' and the
/// configuration's (`disabled: true`), by vendor, and by vendor model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    vendors: Vec<VendorId>,
    models: Vec<(VendorId, String)>,
}

impl Drained {
    pub fn of(config: &Config, drains: &Drains) -> Drained {
        let mut out = Drained::default();
        for (id, v) in config.vendors.iter() {
            if v.disabled {
                out.vendors.push(id);
            }
            for m in v.models.iter().flatten().filter(|m| m.disabled) {
                out.models.push((id, m.model.clone()));
            }
        }
        for d in &drains.list {
            let Some(id) = config.vendors.position(|v| v.name == d.vendor) else {
                continue; // a vendor this configuration does not have
            };
            match &d.model {
                None => out.vendors.push(id),
                Some(m) => out.models.push((id, m.clone())),
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty() && self.models.is_empty()
    }

    pub fn vendor(&self, v: VendorId) -> bool {
        self.vendors.contains(&v)
    }

    /// Whether `candidate` is drained for a request for `requested`: its
    /// vendor, or the model it would be asked for (its mapped model, or the
    /// requested one where it passes models through).
    pub fn candidate(&self, c: &Candidate, requested: Option<&str>) -> bool {
        if self.vendor(c.vendor) {
            return true;
        }
        let model = c.model.as_deref().or(requested);
        model.is_some_and(|m| self.models.iter().any(|(v, dm)| *v == c.vendor && dm == m))
    }
}

/// One unit's line of the status document.
#[derive(Debug, Clone, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    pub vendor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub state: &'static str,
    pub window: WindowStatus,
    pub consecutive_failures: u32,
    pub ejections: u32,
    pub backoff_level: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_until_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited_until_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    pub length_ms: u64,
    pub requests: u64,
    pub failures: u64,
    pub slow: u64,
    pub failure_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probes {
    pub taken: u32,
    pub successes: u32,
    pub budget: u32,
}

/// One vendor's line: its drain, and its lifetime failure counts by reason.
#[derive(Debug, Clone, Serialize)]
pub struct VendorStatus {
    pub name: String,
    pub cluster: String,
    pub priority: u32,
    /// Its own unit's state (its models' units are listed with the units).
    pub state: &'static str,
    /// `"api"` (an operator's drain), `"config"` (`disabled: true`), or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drained_models: Vec<String>,
    /// Since this Envoy started (Envoy's counters), not the window.
    pub failures_by_reason: Vec<(String, u64)>,
}

/// The whole status document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub now_ms: u64,
    pub vendors: Vec<VendorStatus>,
    pub units: Vec<UnitStatus>,
    pub drains: Vec<Drain>,
}

/// A unit's status line from its shared state.
pub fn unit_status(
    config: &Config,
    unit: UnitId,
    label: String,
    state: &VendorState,
    probe_budget: u32,
    now_ms: u64,
) -> Option<UnitStatus> {
    let u = config.units.get(unit)?;
    let vendor = config.vendors.get(u.vendor)?;
    let totals = state.window.totals(now_ms);
    let requests = totals.requests();
    let kind = state.effective_kind(now_ms);
    let (ejected_until_ms, probes) = match state.phase {
        crate::policy::health::Phase::Open { until_ms } => (Some(until_ms), None),
        crate::policy::health::Phase::HalfOpen { taken, successes, .. } => (
            None,
            Some(Probes {
                taken,
                successes,
                budget: probe_budget,
            }),
        ),
        crate::policy::health::Phase::Closed => (None, None),
    };
    Some(UnitStatus {
        unit: label,
        vendor: vendor.name.clone(),
        model: u.model.clone(),
        state: kind_name(kind),
        window: WindowStatus {
            length_ms: config.window.length_ms(),
            requests,
            failures: totals.failures,
            slow: totals.slow,
            failure_ratio: if requests == 0 {
                0.0
            } else {
                totals.failures as f64 / requests as f64
            },
        },
        consecutive_failures: state.consecutive_failures,
        ejections: state.ejections,
        backoff_level: state.level,
        ejected_until_ms,
        probes,
        rate_limited_until_ms: (state.cooldown_until_ms > now_ms).then_some(state.cooldown_until_ms),
    })
}

pub fn kind_name(kind: PhaseKind) -> &'static str {
    match kind {
        PhaseKind::Closed => "closed",
        PhaseKind::Open => "open",
        PhaseKind::HalfOpen => "half-open",
        PhaseKind::RateLimited => "rate-limited",
    }
}

impl Status {
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// The same document as a plain HTML page: tables, no script.
    pub fn html(&self) -> String {
        let mut h = String::with_capacity(4096);
        h.push_str(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>llm-failover status</title>\n\
             <style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}\
             td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}th{background:#eee}\
             .closed{background:#d9f2d9}.open{background:#f7c6c6}.half-open{background:#fbe5b6}\
             .rate-limited{background:#d6e4f7}.drained{background:#ddd}</style></head><body>\n",
        );
        let _ = writeln!(h, "<h1>llm-failover status</h1>\n<p>as of {} UTC</p>", utc(self.now_ms));
        h.push_str("<h2>Vendors</h2>\n<table><tr><th>vendor</th><th>state</th><th>cluster</th><th>priority</th><th>drained</th><th>failures by reason (since start)</th></tr>\n");
        for v in &self.vendors {
            let drained = match (v.drained, v.drained_models.is_empty()) {
                (Some(by), _) => format!("yes ({by})"),
                (None, false) => format!("models: {}", esc(&v.drained_models.join(", "))),
                (None, true) => "no".into(),
            };
            let reasons: Vec<String> = v
                .failures_by_reason
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{} {n}", esc(r)))
                .collect();
            let _ = writeln!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{drained}</td><td>{}</td></tr>",
                if v.drained.is_some() { "drained" } else { v.state },
                esc(&v.name),
                v.state,
                esc(&v.cluster),
                v.priority,
                if reasons.is_empty() {
                    "none".into()
                } else {
                    reasons.join(", ")
                }
            );
        }
        h.push_str("</table>\n<h2>Units</h2>\n<table><tr><th>unit</th><th>state</th><th>window requests</th><th>failures</th><th>slow</th><th>failure ratio</th><th>consecutive failures</th><th>back-off level</th><th>ejected until</th><th>probes</th><th>rate-limited until</th></tr>\n");
        for u in &self.units {
            let probes = u
                .probes
                .as_ref()
                .map(|p| format!("{} taken, {} succeeded, budget {}", p.taken, p.successes, p.budget))
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{probes}</td><td>{}</td></tr>",
                u.state,
                esc(&u.unit),
                u.state,
                u.window.requests,
                u.window.failures,
                u.window.slow,
                u.window.failure_ratio,
                u.consecutive_failures,
                u.backoff_level,
                u.ejected_until_ms.map(|t| self.ahead(t)).unwrap_or_default(),
                u.rate_limited_until_ms.map(|t| self.ahead(t)).unwrap_or_default(),
            );
        }
        h.push_str("</table>\n<h2>Drains</h2>\n");
        if self.drains.is_empty() {
            h.push_str("<p>none</p>\n");
        } else {
            h.push_str("<table><tr><th>vendor</th><th>model</th><th>since (UTC)</th><th>forced</th></tr>\n");
            for d in &self.drains {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&d.vendor),
                    esc(d.model.as_deref().unwrap_or("(whole vendor)")),
                    utc(d.since_ms),
                    d.forced
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</body></html>\n");
        h
    }
}

impl Status {
    /// A time ahead, said from now: `in 12.3 s`.
    fn ahead(&self, at_ms: u64) -> String {
        format!("in {:.1} s", at_ms.saturating_sub(self.now_ms) as f64 / 1000.0)
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // The civil date from days since 1970-01-01 (the days-from-civil
    // algorithm run backwards, with 400-year eras of 146,097 days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// HTML-escaped text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn operator_requests_are_read_from_the_path_only() {
        let p = "/llm-failover";
        assert_eq!(
            read(p, b"GET", b"/llm-failover", None),
            Some(Ask::Status { html: false })
        );
        assert_eq!(
            read(p, b"GET", b"/llm-failover/", Some(b"text/html,application/xhtml+xml")),
            Some(Ask::Status { html: true })
        );
        assert_eq!(
            read(p, b"GET", b"/llm-failover?format=html", None),
            Some(Ask::Status { html: true })
        );
        assert_eq!(
            read(
                p,
                b"POST",
                b"/llm-failover/drain?vendor=anthropic&model=claude%2Dopus&force=true",
                None
            ),
            Some(Ask::Drain {
                vendor: "anthropic".into(),
                model: Some("claude-opus".into()),
                force: true
            })
        );
        assert_eq!(
            read(p, b"POST", b"/llm-failover/undrain?vendor=openai", None),
            Some(Ask::Undrain {
                vendor: "openai".into(),
                model: None
            })
        );
        assert_eq!(read(p, b"POST", b"/llm-failover/drain", None), Some(Ask::Unknown));
        assert_eq!(read(p, b"DELETE", b"/llm-failover", None), Some(Ask::Unknown));
        assert_eq!(read(p, b"GET", b"/llm-failoverx", None), None);
        assert_eq!(read(p, b"POST", b"/v1/chat/completions", None), None);
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"bearer s3cret",
            b"s3cret",
            b"Bearer ",
        ] {
            assert!(!authorized(Some(bad), "s3cret"), "{bad:?}");
        }
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some(b"Bearer "), ""), "an empty token authorizes no one");
    }

    #[test]
    fn draining_the_last_vendor_is_refused_unless_forced() {
        let c = config(r#"{"vendors":[{"name":"a"},{"name":"b"}]}"#);
        let d = drain(&Drains::default(), &c, "a", None, false, 5).unwrap();
        assert_eq!(d.list.len(), 1);
        assert_eq!(drain(&d, &c, "a", None, false, 6).unwrap(), d, "again: unchanged");
        assert_eq!(drain(&d, &c, "b", None, false, 6), Err(Refused::LastVendor("b".into())));
        assert!(Refused::LastVendor("b".into()).message().contains("force=true"));
        let forced = drain(&d, &c, "b", None, true, 6).unwrap();
        assert!(forced.list.iter().any(|x| x.vendor == "b" && x.forced));
        assert_eq!(
            drain(&d, &c, "zz", None, false, 6),
            Err(Refused::UnknownVendor("zz".into()))
        );
        // A model drain never leaves the vendor without models to refuse.
        assert!(drain(&d, &c, "b", Some("m"), false, 6).is_ok());
        let back = undrain(&d, "a", None).unwrap();
        assert!(back.list.is_empty());
        assert_eq!(undrain(&back, "a", None), None);
        assert_eq!(Drains::decode(Some(&forced.encode())), forced);
        assert_eq!(Drains::decode(Some(b"not json")), Drains::default());
    }

    #[test]
    fn drains_and_disabled_entries_take_candidates_out() {
        let c = config(
            r#"{"vendors":[{"name":"a","models":{"x":"a-x","y":{"model":"a-y","disabled":true}}},
                           {"name":"b","disabled":true},{"name":"c"}]}"#,
        );
        let drains = Drains {
            list: vec![Drain {
                vendor: "c".into(),
                model: Some("gpt-4.1".into()),
                since_ms: 0,
                forced: false,
            }],
        };
        let d = Drained::of(&c, &drains);
        let cand = |vendor: usize, model: Option<&str>| Candidate {
            unit: UnitId(vendor),
            vendor: VendorId(vendor),
            level: 0,
            weight: std::num::NonZeroU32::MIN,
            model: model.map(str::to_string),
            path: None,
            context_window: None,
            owner: None,
        };
        assert!(d.candidate(&cand(1, None), None), "b disabled");
        assert!(d.candidate(&cand(0, Some("a-y")), Some("y")), "a's model a-y disabled");
        assert!(!d.candidate(&cand(0, Some("a-x")), Some("x")));
        assert!(
            d.candidate(&cand(2, None), Some("gpt-4.1")),
            "c passes gpt-4.1 through: drained"
        );
        assert!(!d.candidate(&cand(2, None), Some("gpt-5")));
    }

    #[test]
    fn times_read_as_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_954_101_490), "2026-11-29 12:08:21");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_html_page_escapes_what_it_shows() {
        let s = Status {
            now_ms: 1,
            vendors: vec![VendorStatus {
                name: "a<script>".into(),
                cluster: "c".into(),
                priority: 0,
                state: "open",
                drained: Some("api"),
                drained_models: vec![],
                failures_by_reason: vec![("status".into(), 2)],
            }],
            units: vec![],
            drains: vec![],
        };
        let h = s.html();
        assert!(h.contains("a&lt;script&gt;") && !h.contains("a<script>"));
        assert!(h.contains("yes (api)") && h.contains("status 2"));
        assert!(!h.contains("<script"), "no script at all");
    }
}
