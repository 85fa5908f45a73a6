//! The operator's endpoint as host actions: status (JSON or HTML), drain and undrain.
//!
//! See `policy::admin`. Only a request on `admin.path` with the right
//! bearer token is answered here; any other goes on as if the path did not
//! exist.

use crate::policy::admin::{self, Ask, Drains, Status, VendorStatus, DRAINS_KEY};
use crate::policy::store;
use crate::proxy::host::{find, Host, Pairs};
use crate::proxy::plugin::{Plugin, DRAINS_CHANGED};

/// Answers an operator's request; `false` if this is none (not the admin
/// path, or not the right token): the request then goes on as any other.
pub fn serve<H: Host>(p: &Plugin<H>, headers: &Pairs) -> bool {
    let Some(cfg) = &p.config.admin else {
        return false;
    };
    let (Some(method), Some(path)) = (find(headers, ":method"), find(headers, ":path")) else {
        return false;
    };
    let Some(ask) = admin::read(&cfg.path, method, path, find(headers, "accept")) else {
        return false;
    };
    // Never logged, never echoed: a wrong token is just another request.
    if !admin::authorized(find(headers, "authorization"), cfg.token.expose()) {
        return false;
    }
    let now_ms = p.now();
    let (status, content_type, body) = match ask {
        Ask::Status { html } => {
            let doc = status(p, now_ms);
            if html {
                (200, "text/html; charset=utf-8", doc.html())
            } else {
                (200, "application/json", doc.json())
            }
        }
        Ask::Drain { vendor, model, force } => {
            let result = change(p, |drains| {
                admin::drain(drains, &p.config, &vendor, model.as_deref(), force, now_ms).map_err(|r| r.message())
            });
            match result {
                Ok(()) => {
                    let what = model.as_deref().map_or(vendor.clone(), |m| format!("{vendor}/{m}"));
                    log::info!(
                        "vendor {what}: drained by an operator{}; no request goes to it until it is undrained",
                        if force {
                            " (forced: it was the last vendor that could serve)"
                        } else {
                            ""
                        }
                    );
                    (200, "application/json", json_message("drained", &what))
                }
                Err(message) => (409, "application/json", json_error(&message)),
            }
        }
        Ask::Undrain { vendor, model } => {
            let result = change(p, |drains| {
                admin::undrain(drains, &vendor, model.as_deref()).ok_or_else(|| "it is not drained".to_string())
            });
            let what = model.as_deref().map_or(vendor.clone(), |m| format!("{vendor}/{m}"));
            match result {
                Ok(()) => {
                    log::info!("vendor {what}: undrained by an operator; back in routing");
                    (200, "application/json", json_message("undrained", &what))
                }
                Err(message) => (409, "application/json", json_error(&format!("{what}: {message}"))),
            }
        }
        Ask::Unknown => (404, "application/json", json_error("no such operation")),
    };
    // Which worker answered (its notification queue's id): the document is
    // the same from any of them.
    let worker = p.queue.get().unwrap_or(0).to_string();
    let headers: [(&str, &[u8]); 3] = [
        ("content-type", content_type.as_bytes()),
        ("cache-control", b"no-store"),
        ("x-llm-failover-worker", worker.as_bytes()),
    ];
    if let Err(e) = p
        .host
        .send_response(status, &headers, body.as_bytes(), "llm_failover_admin")
    {
        log::warn!("cannot answer an operator's request (host status {})", e.0);
    }
    true
}

/// Applies `step` to the shared drains (compare-and-swap), then makes every
/// worker take the new drains at once.
fn change<H: Host>(p: &Plugin<H>, step: impl Fn(&Drains) -> Result<Drains, String>) -> Result<(), String> {
    let mut refused: Option<String> = None;
    let written = store::update_bytes(&p.host, DRAINS_KEY, |current| {
        let drains = Drains::decode(current);
        match step(&drains) {
            Ok(next) => (next.encode(), ()),
            Err(why) => {
                refused = Some(why);
                (current.map(<[u8]>::to_vec).unwrap_or_default(), ())
            }
        }
    });
    if let Some(why) = refused {
        return Err(why);
    }
    written.map_err(|e| format!("shared data: {e}"))?;
    p.load_drains();
    p.broadcast(DRAINS_CHANGED);
    Ok(())
}

/// The status document, from the shared state: the same whichever worker
/// answers.
fn status<H: Host>(p: &Plugin<H>, now_ms: u64) -> Status {
    let c = &p.config;
    let drains = Drains::decode(
        store::Store::get(&p.host, DRAINS_KEY)
            .ok()
            .flatten()
            .map(|(b, _)| b)
            .as_deref(),
    );
    let units: Vec<_> = p
        .keys
        .iter()
        .filter_map(|(unit, key)| {
            let loaded = store::load(&p.host, key, p.rules.window).ok()?;
            admin::unit_status(
                c,
                unit,
                p.unit_label(unit),
                &loaded.state,
                c.recovery.probes.get(),
                now_ms,
            )
        })
        .collect();
    let vendors = c
        .vendors
        .iter()
        .map(|(id, v)| {
            // The vendor's own unit comes first among its units.
            let state = units
                .iter()
                .find(|u| u.vendor == v.name && u.model.is_none())
                .map_or("closed", |u| u.state);
            let by_api = drains.list.iter().any(|d| d.vendor == v.name && d.model.is_none());
            let mut drained_models: Vec<String> = v
                .models
                .iter()
                .flatten()
                .filter(|m| m.disabled)
                .map(|m| m.model.clone())
                .collect();
            drained_models.extend(
                drains
                    .list
                    .iter()
                    .filter(|d| d.vendor == v.name)
                    .filter_map(|d| d.model.clone()),
            );
            VendorStatus {
                name: v.name.clone(),
                cluster: v.cluster.clone(),
                priority: v.priority,
                state,
                drained: if by_api {
                    Some("api")
                } else if v.disabled {
                    Some("config")
                } else {
                    None
                },
                drained_models,
                failures_by_reason: p.failures_by_reason(id),
            }
        })
        .collect();
    Status {
        now_ms,
        vendors,
        units,
        drains: drains.list,
    }
}

fn json_message(done: &str, what: &str) -> String {
    serde_json::json!({ "ok": true, done: what }).to_string()
}

fn json_error(message: &str) -> String {
    serde_json::json!({ "error": { "message": message, "type": "llm_failover_admin" } }).to_string()
}
