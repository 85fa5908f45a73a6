//! Vendors: cluster, rank, host, key, API paths and model maps; and the health units they make.

use super::ids::{UnitId, VendorId};
use super::reader::{err, kind, Fields};
use super::ConfigError;
use serde_json::Value;
use std::fmt;
use std::num::NonZeroU32;

/// Upper bound that keeps the per-request work small.
pub const MAX_VENDORS: usize = 64;

/// One LLM vendor: where its traffic goes and how it ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Vendor {
    pub name: String,
    /// Envoy cluster written into the routing header.
    pub cluster: String,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of traffic among healthy vendors of the same priority.
    pub weight: NonZeroU32,
    /// `:authority` to send (the vendor's API host); `None`: unchanged.
    pub host: Option<String>,
    /// The vendor's API key, read from the environment variable the
    /// operator named (`api_key_env`); never from the filter JSON.
    pub api_key: Option<Secret>,
    /// Which client API formats the vendor serves, and at which path.
    pub paths: Paths,
    /// Requested model → the vendor's model; `None`: any model, unchanged.
    /// A `"*"` entry maps every model not listed.
    pub models: Option<Vec<Mapping>>,
    /// Tokens the models it passes through accept (a model map entry may
    /// declare its own).
    pub context_window: Option<u64>,
    /// Health units for the models it passes through (a vendor without a
    /// model map), each taken by one requested model while it is in use.
    pub model_units: u32,
    /// How it takes the text of an answer to continue (see `Prefill`).
    pub prefill: Prefill,
    /// Requests whose first attempt goes to it are answered whole (see
    /// `Rescue::buffered_timeout_ms`).
    pub buffered: bool,
    /// Drained by the configuration: no request is routed to it.
    pub disabled: bool,
}

/// One entry of a vendor's model map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The model the client asks for (`"*"`: any other).
    pub requested: String,
    /// The vendor's model.
    pub model: String,
    pub context_window: Option<u64>,
    /// Drained by the configuration: no request goes to this model.
    pub disabled: bool,
}

/// How a vendor is asked to continue an answer from a given prefix (a
/// stream cut after content reached the client). Anthropic Messages takes
/// a trailing assistant message; OpenAI-compatible vendors differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    /// Never asked to continue.
    None,
    /// Anthropic-format requests end with an assistant message holding the
    /// prefix; OpenAI-format requests are not continued.
    Auto,
    /// Both formats: a trailing assistant message.
    Assistant,
    /// OpenAI format: a trailing assistant message with `"prefix": true`
    /// (DeepSeek); Anthropic format as `Auto`.
    AssistantPrefix,
    /// OpenAI format: a trailing assistant message and
    /// `"continue_final_message": true, "add_generation_prompt": false`
    /// (vLLM); Anthropic format as `Auto`.
    ContinueFinalMessage,
}

/// A model name's hash, never 0 (0 marks a free model slot).
pub fn model_hash(model: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in model.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// Per-model units a pass-through vendor has by default.
pub const DEFAULT_MODEL_UNITS: u32 = 8;
/// At most this many per vendor (each is one shared-data entry).
pub const MAX_MODEL_UNITS: u32 = 64;

/// The client API formats the filter understands, told apart by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// OpenAI chat completions (and every OpenAI-compatible API).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::OpenAi, Format::Anthropic];

    pub fn key(self) -> &'static str {
        match self {
            Format::OpenAi => "openai",
            Format::Anthropic => "anthropic",
        }
    }

    /// The format a request path speaks, if any.
    /// Letter case, a trailing `/` and the query do not change it: a
    /// client must not get around the model maps by writing the path
    /// another way a vendor may still accept.
    pub fn of_path(path: &[u8]) -> Option<Format> {
        let mut path = path.split(|&b| b == b'?' || b == b'#').next().unwrap_or_default();
        while let [rest @ .., b'/'] = path {
            path = rest;
        }
        let ends_with = |suffix: &[u8]| {
            path.len() >= suffix.len()
                && path
                    .get(path.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        };
        if ends_with(b"/chat/completions") {
            Some(Format::OpenAi)
        } else if ends_with(b"/messages") {
            Some(Format::Anthropic)
        } else {
            None
        }
    }
}

/// Where a vendor serves each client format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paths {
    /// Every format, at the path the client used.
    Unchanged,
    /// Only the listed formats, each at its path.
    Only(Vec<(Format, String)>),
}

impl Paths {
    /// `Some(None)`: served at the client's path; `Some(Some(p))`: at `p`;
    /// `None`: not served.
    pub fn for_format(&self, format: Format) -> Option<Option<&str>> {
        match self {
            Paths::Unchanged => Some(None),
            Paths::Only(list) => list.iter().find(|(f, _)| *f == format).map(|(_, p)| Some(p.as_str())),
        }
    }
}

/// A value that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A unit of health: a vendor as a whole (`model: None`, `slot: None`), one
/// of its configured models, or one of its model slots (a pass-through
/// vendor's units that requested models take while they use them). Units
/// `0..vendors.len()` are the vendors' own units, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub vendor: VendorId,
    pub model: Option<String>,
    pub slot: Option<u32>,
}

pub(super) fn parse_vendors(root: &Fields, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Vendor>, ConfigError> {
    let list = match root.get("vendors") {
        None => return err("vendors", "is required: list at least one vendor"),
        Some(Value::Array(list)) => list,
        Some(other) => return err("vendors", format!("must be a list, got {}", kind(other))),
    };
    if list.is_empty() {
        return err("vendors", "must list at least one vendor");
    }
    if list.len() > MAX_VENDORS {
        return err(
            "vendors",
            format!("lists {} vendors; at most {MAX_VENDORS} are supported", list.len()),
        );
    }
    let mut vendors: Vec<Vendor> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("vendors[{i}]");
        let f = Fields::new(&path, item)?;
        let name = match f.string("name")? {
            Some(n) => n,
            None => return err(&f.path("name"), "is required"),
        };
        if name.is_empty() || name.len() > 64 {
            return err(&f.path("name"), "must be 1 to 64 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return err(
                &f.path("name"),
                format!("{name:?} may use only a-z, 0-9, '_' and '-' (it names stats and shared-data keys)"),
            );
        }
        if vendors.iter().any(|v| v.name == name) {
            return err(&f.path("name"), format!("{name:?} is used by an earlier vendor"));
        }
        let cluster = f.string("cluster")?.unwrap_or_else(|| name.clone());
        if cluster.is_empty() || cluster.len() > 255 {
            return err(&f.path("cluster"), "must be 1 to 255 characters long");
        }
        if !cluster.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                &f.path("cluster"),
                format!("{cluster:?} must be printable ASCII without spaces (it is sent as a header value)"),
            );
        }
        let priority = f.u32_in("priority", 0, 0, 1_000)?;
        let weight = f.count_in("weight", NonZeroU32::MIN, 10_000)?;
        let host = f.string("host")?;
        if let Some(h) = &host {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)) {
                return err(
                    &f.path("host"),
                    format!("{h:?} is not a host name (with an optional port)"),
                );
            }
        }
        let api_key = match f.string("api_key_env")? {
            None => None,
            Some(var) => match env(&var) {
                Some(key) if !key.is_empty() => {
                    if !key.bytes().all(|b| b.is_ascii_graphic()) {
                        return err(
                            &f.path("api_key_env"),
                            format!("environment variable {var} holds characters a header cannot carry"),
                        );
                    }
                    Some(Secret(key))
                }
                _ => {
                    return err(
                        &f.path("api_key_env"),
                        format!(
                            "environment variable {var} is not set or empty (give it to the VM with vm_config.environment_variables)"
                        ),
                    )
                }
            },
        };
        let paths = match f.section("paths")? {
            None => Paths::Unchanged,
            Some(pf) => {
                let mut list = Vec::new();
                for format in Format::ALL {
                    if let Some(p) = pf.string(format.key())? {
                        if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) {
                            return err(
                                &pf.path(format.key()),
                                format!("{p:?} must be a URL path starting with '/'"),
                            );
                        }
                        list.push((format, p));
                    }
                }
                pf.finish()?;
                if list.is_empty() {
                    return err(&f.path("paths"), "must name at least one of \"openai\", \"anthropic\"");
                }
                Paths::Only(list)
            }
        };
        let models = match f.get("models") {
            None => None,
            Some(Value::Object(map)) if !map.is_empty() => {
                let mut list = Vec::with_capacity(map.len());
                for (requested, to) in map {
                    let mpath = format!("{}.{requested}", f.path("models"));
                    model_name(&Value::String(requested.clone()), &mpath)?;
                    let (model, context_window, disabled) = match to {
                        Value::Object(_) => {
                            let mf = Fields::new(&mpath, to)?;
                            let Some(model) = mf.get("model") else {
                                return err(&mf.path("model"), "is required");
                            };
                            let model = model_name(model, &mf.path("model"))?;
                            let window = context_window(&mf)?;
                            let disabled = mf.boolean("disabled", false)?;
                            mf.finish()?;
                            (model, window, disabled)
                        }
                        other => (model_name(other, &mpath)?, None, false),
                    };
                    list.push(Mapping {
                        requested: requested.clone(),
                        model,
                        context_window,
                        disabled,
                    });
                }
                Some(list)
            }
            Some(other) => {
                return err(
                    &f.path("models"),
                    format!("must map requested model names to the vendor's, got {}", kind(other)),
                )
            }
        };
        let context_window = context_window(&f)?;
        let model_units = f.u32_in("model_units", DEFAULT_MODEL_UNITS, 0, MAX_MODEL_UNITS)?;
        let prefill = match f.string("prefill")?.as_deref() {
            None | Some("auto") => Prefill::Auto,
            Some("none") => Prefill::None,
            Some("assistant") => Prefill::Assistant,
            Some("assistant_prefix") => Prefill::AssistantPrefix,
            Some("continue_final_message") => Prefill::ContinueFinalMessage,
            Some(other) => {
                return err(
                    &f.path("prefill"),
                    format!(
                        "must be \"auto\", \"none\", \"assistant\", \"assistant_prefix\" or \"continue_final_message\", got {other:?}"
                    ),
                )
            }
        };
        let buffered = f.boolean("buffered", false)?;
        let disabled = f.boolean("disabled", false)?;
        f.finish()?;
        vendors.push(Vendor {
            name,
            cluster,
            priority,
            weight,
            host,
            api_key,
            paths,
            models,
            context_window,
            model_units,
            prefill,
            buffered,
            disabled,
        });
    }
    if vendors.iter().all(|v| v.disabled) {
        return err("vendors", "every vendor is disabled: leave at least one to serve");
    }
    Ok(vendors)
}

/// A positive number of tokens, if the field is there.
pub(super) fn context_window(f: &Fields) -> Result<Option<u64>, ConfigError> {
    match f.get("context_window") {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => err(
                &f.path("context_window"),
                format!("must be a positive number of tokens, got {v}"),
            ),
        },
    }
}

/// The vendors' own units, in config order, then one per model their
/// model maps name, then the model slots of pass-through vendors.
pub(super) fn units_of(vendors: &[Vendor]) -> Vec<Unit> {
    let mut units: Vec<Unit> = (0..vendors.len())
        .map(|vendor| Unit {
            vendor: VendorId(vendor),
            model: None,
            slot: None,
        })
        .collect();
    for (vendor, v) in vendors.iter().enumerate() {
        for m in v.models.iter().flatten() {
            unit_for(&mut units, VendorId(vendor), Some(&m.model));
        }
    }
    for (vendor, v) in vendors.iter().enumerate() {
        if v.models.is_none() {
            for slot in 0..v.model_units {
                units.push(Unit {
                    vendor: VendorId(vendor),
                    model: None,
                    slot: Some(slot),
                });
            }
        }
    }
    units
}

/// The index of the unit (vendor, model), added if new.
pub(super) fn unit_for(units: &mut Vec<Unit>, vendor: VendorId, model: Option<&String>) -> UnitId {
    if let Some(i) = units
        .iter()
        .position(|u| u.vendor == vendor && u.model.as_ref() == model && u.slot.is_none())
    {
        return UnitId(i);
    }
    units.push(Unit {
        vendor,
        model: model.cloned(),
        slot: None,
    });
    UnitId(units.len() - 1)
}

pub(super) fn model_name(value: &Value, path: &str) -> Result<String, ConfigError> {
    match value.as_str() {
        Some(m) if !m.is_empty() && m.len() <= 256 && !m.chars().any(char::is_control) => Ok(m.to_string()),
        _ => err(
            path,
            format!("must be a model name (1 to 256 characters, no control characters), got {value}"),
        ),
    }
}
