//! Route groups: requested models that share an ordered list of targets.

use super::ids::{UnitId, VendorId};
use super::reader::{err, kind, Fields};
use super::vendors::{model_name, unit_for, Unit, Vendor};
use super::ConfigError;
use serde_json::Value;

/// One way to serve a request in a route group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vendor: VendorId,
    /// The model to ask the vendor for; `None`: the requested one.
    pub model: Option<String>,
    /// Tokens the model accepts; a request that overflows a smaller window
    /// is rescued by a target with a larger one.
    pub context_window: Option<u64>,
    pub unit: UnitId,
}

/// Requested models that share an ordered list of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub models: Vec<String>,
    pub targets: Vec<Target>,
    /// Its requests are answered whole (see `Rescue::buffered_timeout_ms`).
    pub buffered: bool,
}

pub(super) fn parse_groups(
    root: &Fields,
    vendors: &[Vendor],
    units: &mut Vec<Unit>,
) -> Result<Vec<Group>, ConfigError> {
    let list = match root.get("groups") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => return err("groups", format!("must be a list, got {}", kind(other))),
    };
    let mut groups: Vec<Group> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("groups[{i}]");
        let f = Fields::new(&path, item)?;
        let models = match f.get("models") {
            Some(Value::Array(ms)) if !ms.is_empty() => ms
                .iter()
                .enumerate()
                .map(|(j, m)| model_name(m, &format!("{path}.models[{j}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(one @ Value::String(_)) => vec![model_name(one, &f.path("models"))?],
            _ => {
                return err(
                    &f.path("models"),
                    "must list the requested model names the group serves",
                )
            }
        };
        for m in &models {
            if groups.iter().any(|g| g.models.contains(m)) {
                return err(
                    &f.path("models"),
                    format!("{m:?} is already served by an earlier group"),
                );
            }
        }
        let raw_targets = match f.get("targets") {
            Some(Value::Array(ts)) if !ts.is_empty() => ts,
            _ => {
                return err(
                    &f.path("targets"),
                    "must list at least one target ({\"vendor\": ..., \"model\": ...})",
                )
            }
        };
        let mut targets = Vec::with_capacity(raw_targets.len());
        for (j, t) in raw_targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{j}]");
            let tf = Fields::new(&tpath, t)?;
            let Some(vendor_name) = tf.string("vendor")? else {
                return err(&tf.path("vendor"), "is required");
            };
            let Some(vendor) = vendors.iter().position(|v| v.name == vendor_name).map(VendorId) else {
                return err(
                    &tf.path("vendor"),
                    format!("{vendor_name:?} is not a configured vendor"),
                );
            };
            let model = match tf.get("model") {
                None => None,
                Some(v) => Some(model_name(v, &tf.path("model"))?),
            };
            let context_window = match tf.get("context_window") {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => Some(n),
                    _ => {
                        return err(
                            &tf.path("context_window"),
                            format!("must be a positive number of tokens, got {v}"),
                        )
                    }
                },
            };
            tf.finish()?;
            let unit = unit_for(units, vendor, model.as_ref());
            targets.push(Target {
                vendor,
                model,
                context_window,
                unit,
            });
        }
        let buffered = f.boolean("buffered", false)?;
        f.finish()?;
        groups.push(Group {
            models,
            targets,
            buffered,
        });
    }
    Ok(groups)
}
