//! A request's candidates (which units may serve it, in which order, asked how) and its attempts.
//!
//! A requested model that a route group lists gets that group's targets, in
//! the group's order. Any other request goes to every vendor that serves
//! its API format, by priority and weight; a vendor with a model map serves
//! only the models it maps (or every model, through a `"*"` entry).

use crate::policy::config::{Config, Format, UnitId, VendorId};
use crate::policy::health::Ticket;
use std::num::NonZeroU32;

/// One way to serve a request: a health unit on a vendor, at a preference
/// level (lower first; candidates are kept sorted by it), with a weight
/// inside its level, and how to ask it. A route group's configured
/// `Target`s become candidates for the requests they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub unit: UnitId,
    pub vendor: VendorId,
    pub level: u32,
    pub weight: NonZeroU32,
    /// The model to ask for; `None`: the requested one, unchanged.
    pub model: Option<String>,
    /// The path to send; `None`: the client's.
    pub path: Option<String>,
    pub context_window: Option<u64>,
}

/// A candidate tried: where a request went, carried until its outcome is
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub unit: UnitId,
    pub vendor: VendorId,
    /// `None` when the outcome must not feed the unit's health: the request
    /// was forced onto an ejected unit, or its state could not be read.
    pub ticket: Option<Ticket>,
    /// Every candidate was ejected and the request was sent anyway.
    pub forced: bool,
}

/// Why no vendor serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// No vendor serves this model in this API format.
    Model(String),
}

/// The candidates for a request in `format` (if it is one the filter
/// knows) asking for `model`.
pub fn plan(config: &Config, format: Option<Format>, model: Option<&str>) -> Result<Vec<Candidate>, Unserved> {
    let path_for = |vendor: VendorId| -> Option<Option<String>> {
        let v = config.vendors.get(vendor)?;
        match format {
            None => Some(None),
            Some(f) => v.paths.for_format(f).map(|p| p.map(str::to_string)),
        }
    };
    let mut out = Vec::new();
    if let Some(group) = model.and_then(|m| config.groups.iter().find(|g| g.models.iter().any(|gm| gm == m))) {
        for (level, t) in group.targets.iter().enumerate() {
            let Some(path) = path_for(t.vendor) else { continue };
            out.push(Candidate {
                unit: t.unit,
                vendor: t.vendor,
                level: level as u32,
                weight: NonZeroU32::MIN,
                model: t.model.clone(),
                path,
                context_window: t.context_window,
            });
        }
    } else {
        for &vendor in &config.by_preference {
            let Some(v) = config.vendors.get(vendor) else { continue };
            let Some(path) = path_for(vendor) else { continue };
            let mapped = match (&v.models, model) {
                (None, _) | (Some(_), None) => None,
                (Some(map), Some(m)) => {
                    let hit = map
                        .iter()
                        .find(|(from, _)| from == m)
                        .or_else(|| map.iter().find(|(from, _)| from == "*"));
                    match hit {
                        Some((_, to)) => Some(to.clone()),
                        None => continue, // this vendor does not serve the model
                    }
                }
            };
            let unit = match &mapped {
                None => vendor.pass_through(),
                Some(m) => match config
                    .units
                    .position(|u| u.vendor == vendor && u.model.as_ref() == Some(m))
                {
                    Some(u) => u,
                    None => continue,
                },
            };
            out.push(Candidate {
                unit,
                vendor,
                level: v.priority,
                weight: v.weight,
                model: mapped,
                path,
                context_window: None,
            });
        }
    }
    if out.is_empty() {
        return Err(Unserved::Model(model.unwrap_or("(none)").to_string()));
    }
    Ok(out)
}

/// The candidates when nothing narrows them: every vendor's pass-through
/// unit, by priority then config order, weighted, asked unchanged.
pub fn default_candidates(config: &Config) -> Vec<Candidate> {
    config
        .by_preference
        .iter()
        .filter_map(|&vendor| {
            let v = config.vendors.get(vendor)?;
            Some(Candidate {
                unit: vendor.pass_through(),
                vendor,
                level: v.priority,
                weight: v.weight,
                model: None,
                path: None,
                context_window: None,
            })
        })
        .collect()
}

/// The candidates for a request routed at its headers, before any body is
/// read: by format alone; every vendor when none serves the format.
pub fn at_headers(config: &Config, format: Option<Format>) -> Vec<Candidate> {
    match plan(config, format, None) {
        Ok(candidates) if !candidates.is_empty() => candidates,
        _ => default_candidates(config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse_with_env(json.as_bytes(), &|_| None).unwrap()
    }

    fn names(c: &Config, p: &[Candidate]) -> Vec<String> {
        p.iter()
            .map(|x| {
                let v = &c.vendors[x.vendor].name;
                format!("{v}:{}", x.model.as_deref().unwrap_or("="))
            })
            .collect()
    }

    const CONFIG: &str = r#"{
        "vendors": [
            {"name": "anthropic", "paths": {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
             "models": {"claude-sonnet": "claude-sonnet-4-5", "claude-opus": "claude-opus-4-1"}},
            {"name": "openai", "priority": 1, "paths": {"openai": "/openai/v1/chat/completions"},
             "models": {"*": "gpt-4.1"}},
            {"name": "xai", "priority": 2}
        ],
        "groups": [
            {"models": ["opus"], "targets": [
                {"vendor": "anthropic", "model": "claude-opus-4-1", "context_window": 200000},
                {"vendor": "openai", "model": "gpt-4.1", "context_window": 1000000}
            ]}
        ]
    }"#;

    #[test]
    fn a_group_gives_its_targets_in_its_order() {
        let c = config(CONFIG);
        let p = plan(&c, Some(Format::OpenAi), Some("opus")).unwrap();
        assert_eq!(names(&c, &p), ["anthropic:claude-opus-4-1", "openai:gpt-4.1"]);
        assert_eq!(p[1].path.as_deref(), Some("/openai/v1/chat/completions"));
        assert_eq!(p[1].context_window, Some(1_000_000));
        assert_eq!((p[0].level, p[1].level), (0, 1));
        // The same group asked in Anthropic's format: openai does not speak it.
        let p = plan(&c, Some(Format::Anthropic), Some("opus")).unwrap();
        assert_eq!(names(&c, &p), ["anthropic:claude-opus-4-1"]);
        assert_eq!(p[0].path.as_deref(), Some("/v1/messages"));
    }

    #[test]
    fn model_maps_decide_who_serves_a_model() {
        let c = config(CONFIG);
        let p = plan(&c, Some(Format::OpenAi), Some("claude-sonnet")).unwrap();
        assert_eq!(
            names(&c, &p),
            ["anthropic:claude-sonnet-4-5", "openai:gpt-4.1", "xai:="]
        );
        // anthropic maps no "grok-4" and has no "*": not tried for it.
        let p = plan(&c, Some(Format::OpenAi), Some("grok-4")).unwrap();
        assert_eq!(names(&c, &p), ["openai:gpt-4.1", "xai:="]);
        // Units: a mapped model has its own; pass-through uses the vendor's.
        let p = plan(&c, Some(Format::OpenAi), Some("claude-sonnet")).unwrap();
        let units: Vec<_> = p.iter().map(|x| c.units[x.unit].model.clone()).collect();
        assert_eq!(
            units,
            [Some("claude-sonnet-4-5".to_string()), Some("gpt-4.1".to_string()), None]
        );
    }

    #[test]
    fn unknown_paths_go_everywhere_unchanged() {
        let c = config(CONFIG);
        let p = plan(&c, None, None).unwrap();
        assert_eq!(names(&c, &p), ["anthropic:=", "openai:=", "xai:="]);
        assert!(p.iter().all(|x| x.path.is_none()));
    }

    #[test]
    fn nobody_serving_is_reported() {
        let c = config(r#"{"vendors":[{"name":"a","models":{"m":"n"}}]}"#);
        assert_eq!(
            plan(&c, Some(Format::OpenAi), Some("x")),
            Err(Unserved::Model("x".into()))
        );
    }

    #[test]
    fn plain_configs_plan_like_before() {
        let c = config(r#"{"vendors":[{"name":"a"},{"name":"b","priority":1,"weight":3}]}"#);
        let p = plan(&c, Some(Format::OpenAi), Some("anything")).unwrap();
        assert_eq!(p, default_candidates(&c));
    }
}
