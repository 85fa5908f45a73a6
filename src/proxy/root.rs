//! The root context of a worker VM: configuration, the tick, notifications, new streams.

use crate::policy::config::{Config, Role, StatusSet};
use crate::policy::journey::Stage;
use crate::policy::relay::Relays;
use crate::proxy::host::{Buffer, Host};
use crate::proxy::plugin::Plugin;
use crate::proxy::relay::{self, Relayer, Roles};
use crate::proxy::rescue;
use crate::proxy::stream::Stream;
use std::cell::RefCell;
use std::rc::Rc;

/// The tick period while time-to-first-token limits are checked.
const FIRST_TOKEN_TICK_MS: u64 = 100;

pub struct Root<H: Host + Clone> {
    host: H,
    plugin: Option<Rc<Plugin<H>>>,
    /// This VM's relay table and roles, shared by every root context in it.
    relays: Rc<RefCell<Relays>>,
    roles: Rc<RefCell<Roles>>,
    /// Configured as an upstream filter (`role: "upstream"`): the
    /// `failure_statuses` it judges by.
    upstream: Option<Rc<StatusSet>>,
    /// The role this root counted itself in `roles` for.
    counted: Option<Role>,
}

impl<H: Host + Clone> Root<H> {
    /// A root context of the VM this thread runs.
    pub fn new(host: H) -> Self {
        Root::in_vm(host, relay::vm_relays(), relay::vm_roles())
    }

    /// A root context sharing `relays` and `roles` with the other roots of
    /// its VM.
    pub fn in_vm(host: H, relays: Rc<RefCell<Relays>>, roles: Rc<RefCell<Roles>>) -> Self {
        Root {
            host,
            plugin: None,
            relays,
            roles,
            upstream: None,
            counted: None,
        }
    }

    pub fn is_upstream(&self) -> bool {
        self.upstream.is_some()
    }

    /// Counts this root in its VM's roles; `false` if the other role is
    /// there already.
    fn take_role(&mut self, role: Role) -> bool {
        let mut roles = self.roles.borrow_mut();
        match self.counted {
            Some(Role::Downstream) => roles.downstream = roles.downstream.saturating_sub(1),
            Some(Role::Upstream) => roles.upstream = roles.upstream.saturating_sub(1),
            None => {}
        }
        self.counted = None;
        let other = match role {
            Role::Downstream => roles.upstream,
            Role::Upstream => roles.downstream,
        };
        if other > 0 {
            return false;
        }
        match role {
            Role::Downstream => roles.downstream += 1,
            Role::Upstream => roles.upstream += 1,
        }
        self.counted = Some(role);
        true
    }

    pub fn plugin(&self) -> Option<&Rc<Plugin<H>>> {
        self.plugin.as_ref()
    }

    /// Reads and checks the filter JSON; `false` refuses it (Envoy then
    /// refuses the configuration), with one log line naming the field.
    pub fn on_configure(&mut self, config_size: usize) -> bool {
        log::set_max_level(self.host.log_level());
        let bytes = match self.host.buffer(Buffer::PluginConfiguration, config_size) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::error!("cannot read the plugin configuration (host status {})", e.0);
                return false;
            }
        };
        let role = match Role::of(&bytes) {
            Ok(role) => role,
            Err(e) => {
                log::error!("configuration refused: {e}");
                return false;
            }
        };
        if !self.take_role(role) {
            // Each filter's streams would be created inside the other's
            // callouts, which the SDK cannot re-enter.
            log::error!(
                "configuration refused: config field `role`: the downstream and the upstream filter cannot share a \
                 VM: give the upstream filter a vm_config with a vm_id of its own"
            );
            return false;
        }
        if role == Role::Upstream {
            let statuses = match Role::upstream_statuses(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("configuration refused: {e}");
                    return false;
                }
            };
            self.upstream = Some(Rc::new(statuses));
            self.plugin = None;
            log::info!(
                "configured as an upstream filter: failed answers of requests the downstream filter routed here go \
                 back to the router as internal redirects"
            );
            return true;
        }
        self.upstream = None;
        let host = &self.host;
        let relays = self.relays.clone();
        let parsed = Config::parse_with_env(&bytes, &|name| host.env(name))
            .map_err(|e| e.to_string())
            .and_then(|config| Plugin::new(host.clone(), config, relays));
        let plugin = match parsed {
            Ok(p) => p,
            Err(e) => {
                log::error!("configuration refused: {e}");
                return false;
            }
        };
        plugin.create_keys();
        plugin.join_notifications();
        // Time-to-first-token limits are checked on the tick: tick often enough.
        let tick_ms = match plugin.config.rescue.first_token_ms {
            Some(_) => plugin.config.refresh_ms.min(FIRST_TOKEN_TICK_MS),
            None => plugin.config.refresh_ms,
        };
        plugin.tick_ms.set(tick_ms);
        if let Err(e) = self.host.set_tick_period_ms(tick_ms) {
            log::warn!("cannot set the tick period (host status {}); gauges will lag", e.0);
        }
        let now_ms = plugin.now();
        plugin.check_clusters(now_ms, false);
        plugin.refresh(now_ms);
        let c = &plugin.config;
        let vendors: Vec<String> = c
            .by_preference
            .iter()
            .filter_map(|&i| c.vendors.get(i))
            .map(|v| {
                format!(
                    "{} (cluster {}, priority {}, weight {}{})",
                    v.name,
                    v.cluster,
                    v.priority,
                    v.weight,
                    if v.disabled { ", disabled" } else { "" }
                )
            })
            .collect();
        log::info!(
            "configured; routing header {}; vendors by preference: {}; {} route groups; up to {} attempts per request",
            c.cluster_header,
            vendors.join(", "),
            c.groups.len(),
            c.rescue.max_attempts
        );
        self.plugin = Some(Rc::new(plugin));
        true
    }

    /// Held requests' checks; then, every `refresh_interval`, the batch
    /// written, the shared state re-read and missing clusters looked for.
    pub fn on_tick(&mut self) {
        let Some(p) = &self.plugin else {
            return;
        };
        let now_ms = p.now();
        if !p.journeys.borrow().is_empty() {
            rescue::check_first_tokens(p, now_ms);
            rescue::release_stuck(p, now_ms);
            for j in rescue::due_retries(p, now_ms) {
                let (ctx, stage) = {
                    let jb = j.borrow();
                    (jb.ctx, jb.stage)
                };
                if p.host.set_effective_context(ctx).is_err() {
                    continue;
                }
                match stage {
                    Stage::Rescuing => rescue::retry_by_callout(p, &j, now_ms),
                    Stage::Waiting { body_in } => relay::retry(p, &j, body_in, now_ms),
                    _ => {}
                }
            }
        }
        if !rescue::retry_waiting(p) {
            p.tick_fast(false);
        }
        relay::sweep(p, now_ms);
        if now_ms >= p.next_refresh_ms.get() {
            p.next_refresh_ms.set(now_ms.saturating_add(p.config.refresh_ms));
            p.flush(now_ms);
            p.refresh(now_ms);
            if p.any_cluster_missing() && now_ms >= p.next_cluster_check_ms.get() {
                p.check_clusters(now_ms, true);
            }
        }
    }

    /// Another worker announced a change.
    pub fn on_queue_ready(&mut self, queue_id: u32) {
        match &self.plugin {
            Some(p) => p.on_notified(queue_id),
            // Drain it anyway so nothing piles up.
            None => while let Ok(Some(_)) = self.host.dequeue(queue_id) {},
        }
    }

    pub fn new_stream(&self, context_id: u32) -> Stream<H> {
        Stream::new(self.plugin.clone(), context_id)
    }

    /// A stream of the upstream filter.
    pub fn new_relayer(&self) -> Relayer<H> {
        let statuses = self.upstream.clone().unwrap_or_default();
        Relayer::new(self.host.clone(), statuses)
    }

    /// A callout answered in the root context (the cluster probes: ignored).
    pub fn on_callout(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if let Some(p) = &self.plugin {
            rescue::on_callout(p, token, num_headers, body_size);
        }
    }
}
