//! The benchmark floor: an HTTP filter that is called on every request and
//! response but makes no host call, so it measures what any wasm filter costs.
//!
//! Its plugin configuration may ask for one of two other floors, to show what
//! the least a failover filter must do costs by itself:
//! - `route`: write the routing header at the request headers (one host call);
//! - `hold`: hold the request at its headers until its body is complete, read
//!   the body (one host call), then write the routing header (one more): the
//!   least a filter that routes by the requested model must do;
//! - `mimic`: the host calls llm_failover makes on an ordinary JSON request
//!   and nothing else (the request headers as pairs and the clock; the hold
//!   and the body; the routing header; the response headers as pairs, the
//!   clock and the vendor header): the floor of its host calls, so that
//!   llm_failover minus `mimic` is the cost of its own code;
//! - `pairs`: `mimic` without the hold (the routing header is written at the
//!   request headers), so `mimic` minus `pairs` is what holding and reading
//!   the body costs.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot { mode: Mode::Empty }) });
}}

#[derive(Clone, Copy)]
enum Mode {
    Empty,
    Route,
    Hold,
    Mimic,
    Pairs,
}

const HEADER: &str = "x-llm-failover-cluster";
const CLUSTER: &str = "anthropic";

struct EmptyRoot {
    mode: Mode,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _config_size: usize) -> bool {
        let config = proxy_wasm::hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, 1024)
            .ok()
            .flatten()
            .unwrap_or_default();
        let has = |word: &[u8]| config.windows(word.len()).any(|w| w == word);
        self.mode = if has(b"\"pairs\"") {
            Mode::Pairs
        } else if has(b"\"mimic\"") {
            Mode::Mimic
        } else if has(b"\"hold\"") {
            Mode::Hold
        } else if has(b"\"route\"") {
            Mode::Route
        } else {
            Mode::Empty
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyStream { mode: self.mode }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EmptyStream {
    mode: Mode,
}

impl Context for EmptyStream {}

impl HttpContext for EmptyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match self.mode {
            Mode::Empty => Action::Continue,
            Mode::Route => {
                let _ = proxy_wasm::hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    HEADER,
                    Some(CLUSTER),
                );
                Action::Continue
            }
            Mode::Hold if end_of_stream => Action::Continue,
            Mode::Hold => Action::Pause,
            Mode::Mimic | Mode::Pairs => {
                let _ = proxy_wasm::hostcalls::get_current_time();
                let _ = proxy_wasm::hostcalls::get_map(proxy_wasm::types::MapType::HttpRequestHeaders);
                if matches!(self.mode, Mode::Pairs) {
                    let _ = proxy_wasm::hostcalls::set_map_value(
                        proxy_wasm::types::MapType::HttpRequestHeaders,
                        HEADER,
                        Some(CLUSTER),
                    );
                    return Action::Continue;
                }
                if end_of_stream {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !matches!(self.mode, Mode::Hold | Mode::Mimic) {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = proxy_wasm::hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, body_size);
        let _ =
            proxy_wasm::hostcalls::set_map_value(proxy_wasm::types::MapType::HttpRequestHeaders, HEADER, Some(CLUSTER));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if matches!(self.mode, Mode::Mimic | Mode::Pairs) {
            let _ = proxy_wasm::hostcalls::get_map(proxy_wasm::types::MapType::HttpResponseHeaders);
            let _ = proxy_wasm::hostcalls::get_current_time();
            let _ = proxy_wasm::hostcalls::set_map_value(
                proxy_wasm::types::MapType::HttpResponseHeaders,
                "x-llm-failover-vendor",
                Some(CLUSTER),
            );
        }
        Action::Continue
    }
}
