//! What a vendor receives besides the body, a callout's whole request, a delivered answer's headers.
//!
//! A vendor gets the routing header, path, authority and its own
//! credentials, never the client's.

use crate::policy::config::{Format, Vendor};
use crate::policy::journey::Journey;
use crate::policy::plan::Candidate;
use std::borrow::Cow;

/// Request headers a client's credentials travel in; none reaches a vendor.
pub const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];
/// The `anthropic-version` sent when the client named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Headers not copied between a vendor's answer, a callout and the client.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "proxy-connection",
    "trailer",
];
/// Accounting headers on an answer the filter delivered after a rescue
/// (or its 503): how many attempts, and which vendors were tried.
pub const ATTEMPTS_HEADER: &str = "x-llm-failover-attempts";
pub const TRIED_HEADER: &str = "x-llm-failover-tried";

/// One change to the request headers the router sends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    Set(&'a str, Cow<'a, [u8]>),
    Remove(&'static str),
}

/// The changes that send a request (whose headers are `client`) to
/// `vendor` as `candidate`: the routing header always; path and authority
/// where they differ from the client's; the client's credentials out and
/// the vendor's in. Only what changes costs a host call.
pub fn edits<'a>(
    cluster_header: &'a str,
    vendor: &'a Vendor,
    candidate: Option<&'a Candidate>,
    format: Option<Format>,
    client: &[(String, Vec<u8>)],
) -> Vec<Edit<'a>> {
    let has = |name: &str| client.iter().any(|(n, _)| n == name);
    let value = |name: &str| client.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    let mut out = vec![Edit::Set(cluster_header, Cow::Borrowed(vendor.cluster.as_bytes()))];
    if let Some(path) = candidate.and_then(|c| c.path.as_deref()) {
        if value(":path") != Some(path.as_bytes()) {
            out.push(Edit::Set(":path", Cow::Borrowed(path.as_bytes())));
        }
    }
    if let Some(host) = vendor.host.as_deref() {
        if value(":authority") != Some(host.as_bytes()) {
            out.push(Edit::Set(":authority", Cow::Borrowed(host.as_bytes())));
        }
    }
    for name in CREDENTIAL_HEADERS {
        if has(name) {
            out.push(Edit::Remove(name));
        }
    }
    for (name, value) in credentials(vendor, format, has("anthropic-version")) {
        out.push(Edit::Set(name, Cow::Owned(value.into_bytes())));
    }
    out
}

/// The vendor's credentials for a request in `format`.
pub fn credentials(vendor: &Vendor, format: Option<Format>, client_named_version: bool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(key) = &vendor.api_key {
        match format {
            Some(Format::Anthropic) => out.push(("x-api-key", key.expose().to_string())),
            _ => out.push(("authorization", format!("Bearer {}", key.expose()))),
        }
    }
    if format == Some(Format::Anthropic) && !client_named_version {
        out.push(("anthropic-version", ANTHROPIC_VERSION.to_string()));
    }
    out
}

/// A rescue callout's request: the client's headers (`client`) and body
/// adapted for `vendor` as `candidate`.
pub struct CalloutRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CalloutRequest {
    pub fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }
}

/// The client's body as `candidate` takes it: its model mapped, if it maps one.
pub fn body_for(j: &Journey, candidate: &Candidate) -> Vec<u8> {
    let rewritten = candidate
        .model
        .as_deref()
        .and_then(|m| j.request.as_ref()?.with_model(&j.body, m));
    rewritten.unwrap_or_else(|| j.body.clone())
}

pub fn callout_request(j: &Journey, vendor: &Vendor, candidate: &Candidate, cluster_header: &str) -> CalloutRequest {
    let client = &j.headers;
    let value = |name: &str| client.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    let body = body_for(j, candidate);
    let mut headers: Vec<(String, String)> = Vec::with_capacity(client.len() + 4);
    let path = candidate
        .path
        .clone()
        .or_else(|| value(":path").map(|p| String::from_utf8_lossy(p).into_owned()));
    let authority = vendor
        .host
        .clone()
        .or_else(|| value(":authority").map(|a| String::from_utf8_lossy(a).into_owned()));
    headers.push((":method".into(), "POST".into()));
    headers.push((":path".into(), path.unwrap_or_else(|| "/".into())));
    headers.push((":authority".into(), authority.unwrap_or_else(|| vendor.cluster.clone())));
    for (name, value) in client {
        let skip = name.starts_with(':')
            || HOP_BY_HOP.contains(&name.as_str())
            || CREDENTIAL_HEADERS.contains(&name.as_str())
            || name == cluster_header
            || name.starts_with("x-envoy-");
        // Header values that are not text cannot go through the callout API.
        if let (false, Ok(v)) = (skip, std::str::from_utf8(value)) {
            headers.push((name.clone(), v.to_string()));
        }
    }
    for (name, value) in credentials(vendor, j.format, value("anthropic-version").is_some()) {
        headers.push((name.to_string(), value));
    }
    CalloutRequest { headers, body }
}

/// The response headers the filter owns, which a vendor's answer must not
/// bring: the vendor header and the accounting headers.
fn owned(name: &str, vendor_header: Option<&str>) -> bool {
    name == ATTEMPTS_HEADER
        || name == TRIED_HEADER
        || name == crate::policy::relay::RELAY_HEADER
        || Some(name) == vendor_header
}

/// The filter's own header names a vendor's answer carries: they are
/// dropped (a vendor must not speak for the filter).
pub fn forged<'a>(answer: &'a [(String, Vec<u8>)], vendor_header: Option<&'a str>) -> impl Iterator<Item = &'a str> {
    answer
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(move |n| owned(n, vendor_header))
}

/// The headers of a rescued answer as the client gets them: the vendor's
/// own, less pseudo, hop-by-hop and Envoy-internal ones, plus who answered,
/// after how many attempts, and who was tried.
pub fn delivered_headers<'a>(
    answer: &'a [(String, Vec<u8>)],
    vendor_header: Option<&'a str>,
    vendor: &'a str,
    attempts: &'a str,
    tried: &'a str,
) -> Vec<(&'a str, &'a [u8])> {
    let mut out: Vec<(&str, &[u8])> = answer
        .iter()
        .filter(|(n, _)| {
            !n.starts_with(':')
                && !HOP_BY_HOP.contains(&n.as_str())
                && !n.starts_with("x-envoy-")
                && !owned(n, vendor_header)
        })
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    if let Some(h) = vendor_header {
        out.push((h, vendor.as_bytes()));
    }
    out.push((ATTEMPTS_HEADER, attempts.as_bytes()));
    out.push((TRIED_HEADER, tried.as_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;
    use crate::policy::config::VendorId;

    fn config() -> Config {
        let env = |name: &str| (name == "B_KEY").then(|| "sk-b".to_string());
        Config::parse_with_env(
            br#"{"vendors":[{"name":"a"},
                {"name":"b","host":"api.b.com","api_key_env":"B_KEY",
                 "paths":{"openai":"/b/v1/chat/completions","anthropic":"/v1/messages"},
                 "models":{"*":"b-large"}}]}"#,
            &env,
        )
        .unwrap()
    }

    fn client() -> Vec<(String, Vec<u8>)> {
        [
            (":path", "/v1/chat/completions"),
            (":authority", "gateway"),
            ("authorization", "Bearer client-key"),
            ("x-api-key", "client-key-2"),
            ("content-type", "application/json"),
            ("content-length", "20"),
            ("x-llm-failover-cluster", "evil"),
            ("x-envoy-internal", "true"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    #[test]
    fn a_plain_vendor_gets_the_routing_header_and_no_client_credentials() {
        let c = config();
        let e = edits(
            "x-llm-failover-cluster",
            &c.vendors[VendorId(0)],
            None,
            Some(Format::OpenAi),
            &client(),
        );
        assert_eq!(
            e,
            vec![
                Edit::Set("x-llm-failover-cluster", Cow::Borrowed(&b"a"[..])),
                Edit::Remove("authorization"),
                Edit::Remove("x-api-key"),
            ]
        );
    }

    #[test]
    fn an_adapted_vendor_gets_its_path_host_and_key() {
        let c = config();
        let candidates = crate::policy::plan::plan(&c, Some(Format::OpenAi), Some("gpt")).unwrap();
        let e = edits(
            "x-llm-failover-cluster",
            &c.vendors[VendorId(1)],
            candidates.get(1),
            Some(Format::OpenAi),
            &client(),
        );
        assert!(e.contains(&Edit::Set(":path", Cow::Borrowed(&b"/b/v1/chat/completions"[..]))));
        assert!(e.contains(&Edit::Set(":authority", Cow::Borrowed(&b"api.b.com"[..]))));
        assert!(e.contains(&Edit::Set("authorization", Cow::Owned(b"Bearer sk-b".to_vec()))));
        // Anthropic format: x-api-key and a version, unless the client named one.
        let creds = credentials(&c.vendors[VendorId(1)], Some(Format::Anthropic), false);
        assert_eq!(
            creds,
            vec![
                ("x-api-key", "sk-b".to_string()),
                ("anthropic-version", ANTHROPIC_VERSION.to_string())
            ]
        );
        assert_eq!(
            credentials(&c.vendors[VendorId(1)], Some(Format::Anthropic), true).len(),
            1
        );
    }

    #[test]
    fn a_callout_carries_the_vendors_model_path_and_key_and_nothing_of_the_clients() {
        let c = config();
        let candidates = crate::policy::plan::plan(&c, Some(Format::OpenAi), Some("gpt")).unwrap();
        let mut j = Journey::new(1, 0, Some(Format::OpenAi), client(), &c);
        j.body = br#"{"model":"gpt","messages":[]}"#.to_vec();
        j.request = crate::policy::adapt::read_request(&j.body).ok();
        let r = callout_request(&j, &c.vendors[VendorId(1)], &candidates[1], "x-llm-failover-cluster");
        let get = |name: &str| r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get(":path"), Some("/b/v1/chat/completions"));
        assert_eq!(get(":authority"), Some("api.b.com"));
        assert_eq!(get("authorization"), Some("Bearer sk-b"));
        assert_eq!(get("x-api-key"), None);
        assert_eq!(get("x-llm-failover-cluster"), None);
        assert_eq!(get("x-envoy-internal"), None);
        assert_eq!(get("content-length"), None);
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(r.body, br#"{"model":"b-large","messages":[]}"#);
    }

    #[test]
    fn delivered_answers_drop_transport_headers_and_say_who_answered() {
        let answer: Vec<(String, Vec<u8>)> = [
            (":status", "200"),
            ("content-length", "5"),
            ("x-request-id", "r"),
            ("x-llm-failover-attempts", "99"),
            ("x-llm-failover-vendor", "evil"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let h = delivered_headers(&answer, Some("x-llm-failover-vendor"), "b", "2", "a,b");
        let names: Vec<&str> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["x-request-id", "x-llm-failover-vendor", ATTEMPTS_HEADER, TRIED_HEADER]
        );
    }
}
