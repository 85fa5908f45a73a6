//! The root context of a worker VM: configuration, the tick, notifications, new streams.

use crate::policy::config::Config;
use crate::proxy::host::{Buffer, Host};
use crate::proxy::plugin::Plugin;
use crate::proxy::rescue;
use crate::proxy::stream::Stream;
use std::rc::Rc;

/// The tick period while time-to-first-token limits are checked.
const FIRST_TOKEN_TICK_MS: u64 = 100;

pub struct Root<H: Host + Clone> {
    host: H,
    plugin: Option<Rc<Plugin<H>>>,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(host: H) -> Self {
        Root { host, plugin: None }
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
        let host = &self.host;
        let parsed = Config::parse_with_env(&bytes, &|name| host.env(name))
            .map_err(|e| e.to_string())
            .and_then(|config| Plugin::new(host.clone(), config));
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
                    "{} (cluster {}, priority {}, weight {})",
                    v.name, v.cluster, v.priority, v.weight
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
        }
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

    /// A callout answered in the root context (the cluster probes: ignored).
    pub fn on_callout(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if let Some(p) = &self.plugin {
            rescue::on_callout(p, token, num_headers, body_size);
        }
    }
}
