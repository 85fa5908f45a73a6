//! A request's candidates (which units may serve it, in which order, asked how) and its attempts.
//!
//! A requested model that a route group lists (by name, by a `prefix*`
//! pattern, or through `*`) gets that group's targets, in the group's order.
//! Any other request goes to every vendor that serves its API format, by
//! priority and weight; a vendor with a model map serves only the models it
//! maps (or every model, through a `"*"` entry). A vendor that passes models
//! through keeps each requested model's health in one of its model slots.

use crate::policy::config::{model_hash, Config, Format, Group, UnitId, VendorId};
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
    /// For a model slot unit: the requested model it is for (its hash); the
    /// slot serves it only while no other model holds it.
    pub owner: Option<u64>,
}

/// A candidate tried: where a request went, carried until its outcome is
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The unit its outcome is recorded under: the candidate's, or its
    /// vendor's own when another model holds the candidate's model slot.
    pub unit: UnitId,
    /// The candidate's unit, as planned.
    pub planned: UnitId,
    pub vendor: VendorId,
    /// `None` when the outcome must not feed the unit's health: the request
    /// was forced onto an ejected unit, or its state could not be read.
    pub ticket: Option<Ticket>,
    /// Every candidate was ejected and the request was sent anyway.
    pub forced: bool,
    /// For a model slot unit: the requested model's hash (see `Candidate`).
    pub owner: Option<u64>,
}

/// Why no vendor serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// No vendor serves this model in this API format.
    Model(String),
}

/// The route group a requested model belongs to: one that names it, else
/// the one with the longest `prefix*` pattern it matches, else one with `*`.
pub fn group_of<'a>(config: &'a Config, model: &str) -> Option<&'a Group> {
    let mut best: Option<(&Group, usize)> = None;
    for g in &config.groups {
        for pattern in &g.models {
            let score = if pattern == model {
                usize::MAX
            } else if let Some(prefix) = pattern.strip_suffix('*') {
                if !model.starts_with(prefix) {
                    continue;
                }
                prefix.len()
            } else {
                continue;
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((g, score));
            }
        }
    }
    best.map(|(g, _)| g)
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
    if let Some(group) = model.and_then(|m| group_of(config, m)) {
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
                owner: None,
            });
        }
    } else {
        for &vendor in &config.by_preference {
            let Some(v) = config.vendors.get(vendor) else { continue };
            let Some(path) = path_for(vendor) else { continue };
            let (mapped, window) = match (&v.models, model) {
                (None, _) | (Some(_), None) => (None, v.context_window),
                (Some(map), Some(m)) => {
                    let hit = map
                        .iter()
                        .find(|x| x.requested == m)
                        .or_else(|| map.iter().find(|x| x.requested == "*"));
                    match hit {
                        Some(x) => (Some(x.model.clone()), x.context_window.or(v.context_window)),
                        None => continue, // this vendor does not serve the model
                    }
                }
            };
            let (unit, owner) = match (&mapped, model) {
                (Some(m), _) => match config.unit_of(vendor, m) {
                    Some(u) => (u, None),
                    None => continue,
                },
                (None, Some(m)) if v.models.is_none() => match config.model_slot(vendor, m) {
                    Some(slot) => (slot, Some(model_hash(m))),
                    None => (vendor.pass_through(), None),
                },
                (None, _) => (vendor.pass_through(), None),
            };
            out.push(Candidate {
                unit,
                vendor,
                level: v.priority,
                weight: v.weight,
                model: mapped,
                path,
                context_window: window,
                owner,
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
                context_window: v.context_window,
                owner: None,
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
        // Units: a mapped model has its own; a passed-through one a model
        // slot of its vendor, which it holds while it uses it.
        let p = plan(&c, Some(Format::OpenAi), Some("claude-sonnet")).unwrap();
        let units: Vec<_> = p
            .iter()
            .map(|x| (c.units[x.unit].model.clone(), c.units[x.unit].slot))
            .collect();
        let slot = (crate::policy::config::model_hash("claude-sonnet") % 8) as u32;
        assert_eq!(
            units,
            [
                (Some("claude-sonnet-4-5".to_string()), None),
                (Some("gpt-4.1".to_string()), None),
                (None, Some(slot))
            ]
        );
        assert_eq!(p[2].owner, Some(crate::policy::config::model_hash("claude-sonnet")));
        assert_eq!(p[0].owner, None);
    }

    #[test]
    fn group_patterns_and_context_windows_without_groups() {
        let c = config(
            r#"{"vendors":[
                {"name":"a","context_window":8000,"models":{"big":{"model":"a-big","context_window":200000},"*":"a-small"}},
                {"name":"b","priority":1,"context_window":128000}],
              "groups":[
                {"models":["gpt-4*"],"targets":[{"vendor":"b"}]},
                {"models":["gpt-4o-mini"],"targets":[{"vendor":"a"}]},
                {"models":["*"],"targets":[{"vendor":"a","model":"a-small"},{"vendor":"b"}]}]}"#,
        );
        let vendors = |m: &str| -> Vec<String> {
            plan(&c, Some(Format::OpenAi), Some(m))
                .unwrap()
                .iter()
                .map(|x| c.vendors[x.vendor].name.clone())
                .collect()
        };
        assert_eq!(vendors("gpt-4.1"), ["b"], "prefix pattern");
        assert_eq!(vendors("gpt-4o-mini"), ["a"], "a name beats a pattern");
        assert_eq!(vendors("llama"), ["a", "b"], "* catches the rest");
        let c = config(
            r#"{"vendors":[
                {"name":"a","context_window":8000,"models":{"big":{"model":"a-big","context_window":200000},"*":"a-small"}},
                {"name":"b","priority":1,"context_window":128000}]}"#,
        );
        let windows = |m: &str| -> Vec<Option<u64>> {
            plan(&c, Some(Format::OpenAi), Some(m))
                .unwrap()
                .iter()
                .map(|x| x.context_window)
                .collect()
        };
        assert_eq!(windows("big"), [Some(200_000), Some(128_000)]);
        assert_eq!(
            windows("other"),
            [Some(8_000), Some(128_000)],
            "the vendor's window where the entry has none"
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
        let c = config(
            r#"{"vendors":[{"name":"a","model_units":0},{"name":"b","priority":1,"weight":3,"model_units":0}]}"#,
        );
        let p = plan(&c, Some(Format::OpenAi), Some("anything")).unwrap();
        assert_eq!(p, default_candidates(&c));
    }
}
