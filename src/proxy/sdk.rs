//! The proxy-wasm SDK's traits, each callback handed on unchanged, and the VM's entry point.

use crate::proxy::host::Host;
use crate::proxy::relay::Relayer;
use crate::proxy::root::Root;
use crate::proxy::stream::Stream;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

impl<H: Host + Clone + 'static> Context for Root<H> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.on_callout(token, num_headers, body_size);
    }
}

impl<H: Host + Clone + 'static> RootContext for Root<H> {
    fn on_configure(&mut self, config_size: usize) -> bool {
        Root::on_configure(self, config_size)
    }

    fn on_tick(&mut self) {
        Root::on_tick(self);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        Root::on_queue_ready(self, queue_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.is_upstream() {
            return Some(Box::new(self.new_relayer()));
        }
        Some(Box::new(self.new_stream(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl<H: Host + 'static> Context for Stream<H> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.on_callout(token, num_headers, body_size);
    }
}

impl<H: Host + 'static> HttpContext for Stream<H> {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_request_headers(num_headers, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_request_body(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(num_headers, end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_response_body(body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.on_response_trailers(num_trailers)
    }

    fn on_log(&mut self) {
        self.on_done();
    }
}

impl<H: Host + 'static> Context for Relayer<H> {}

impl<H: Host + 'static> HttpContext for Relayer<H> {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_request_headers(num_headers, end_of_stream)
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(num_headers, end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_response_body(body_size, end_of_stream)
    }
}

/// The VM's entry point: the logger, a panic hook that logs, and the root
/// context factory over the real host.
#[cfg(target_arch = "wasm32")]
pub fn register() {
    use crate::proxy::wasm::{HostLogger, WasmHost};
    static LOGGER: HostLogger = HostLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    std::panic::set_hook(Box::new(|info| {
        WasmHost.log(log::Level::Error, &format!("panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new(WasmHost)) });
}
