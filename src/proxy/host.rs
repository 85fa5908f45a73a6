//! The `Host` trait: every call the filter makes into Envoy.
//!
//! The contexts run over the real ABI (`wasm`) or a recording fake (`fake`).

use crate::policy::store::Store;

/// A host call that returned something other than success (the ABI status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

pub type HostResult<T> = Result<T, HostError>;

/// ABI status of a call with a bad argument (e.g. a callout to an unknown
/// cluster).
pub const BAD_ARGUMENT: u32 = 2;

/// A header map of the current stream, or of a callout's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    CalloutHeaders,
}

/// A body buffer of the current stream, a callout's answer, or the plugin's
/// configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    CalloutBody,
    PluginConfiguration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Header (name, value) pairs as the host hands them over: names
/// lowercased, values as bytes (they need not be UTF-8).
pub type Pairs = Vec<(String, Vec<u8>)>;

/// Every host call. Stream calls act on the current (effective) context.
/// Shared data comes from the `Store` supertrait (compare-and-swap).
/// Logging goes through the `log` facade, whose sink is `Host::log` in the
/// wasm build and a capturing logger under the fake.
pub trait Host: Store {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    fn log(&self, level: log::Level, message: &str);
    /// The host's log level for this plugin.
    fn log_level(&self) -> log::LevelFilter;
    /// An environment variable given to the VM (vendors' API keys).
    fn env(&self, name: &str) -> Option<String>;
    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()>;

    fn buffer(&self, which: Buffer, size: usize) -> HostResult<Option<Vec<u8>>>;
    /// Replaces `size` bytes from `start` of a buffer with `data`.
    fn set_buffer(&self, which: Buffer, start: usize, size: usize, data: &[u8]) -> HostResult<()>;
    fn header(&self, map: Map, name: &str) -> HostResult<Option<Vec<u8>>>;
    fn headers(&self, map: Map) -> HostResult<Pairs>;
    /// Sets a header, replacing every value it had.
    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> HostResult<()>;
    fn remove_header(&self, map: Map, name: &str) -> HostResult<()>;
    /// A property; `path` is its segments joined by NUL bytes.
    fn property(&self, path: &[u8]) -> HostResult<Option<Vec<u8>>>;

    /// Makes later stream calls act on another context of this VM.
    fn set_effective_context(&self, context_id: u32) -> HostResult<()>;
    /// Resumes the current stream's request, paused in its headers or body.
    fn resume_request(&self) -> HostResult<()>;
    /// Resumes the current stream's response, paused in its headers or body.
    fn resume_response(&self) -> HostResult<()>;
    /// Answers the current stream's client directly.
    fn send_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) -> HostResult<()>;
    /// An HTTP request to `cluster`; the answer comes to the calling
    /// context's callout callback with the returned token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32>;

    /// Registers this VM's shared queue `name`; its process-wide token.
    fn register_queue(&self, name: &str) -> HostResult<u32>;
    fn enqueue(&self, token: u32, value: &[u8]) -> HostResult<()>;
    /// The next message on one of this VM's queues; `None` when empty.
    fn dequeue(&self, token: u32) -> HostResult<Option<Vec<u8>>>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32>;
    fn increment_metric(&self, id: u32, by: i64);
    fn record_metric(&self, id: u32, value: u64);
    /// A metric's value (Envoy's, shared by every worker).
    fn metric_value(&self, id: u32) -> Option<u64>;

    /// A little-endian integer property such as `response.flags`.
    fn property_u64(&self, path: &[u8]) -> Option<u64> {
        let bytes = self.property(path).ok()??;
        <[u8; 8]>::try_from(bytes.as_slice()).ok().map(u64::from_le_bytes)
    }
}

/// The value of `name` in a list of header pairs.
pub fn find<'a>(pairs: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Properties the filter reads.
pub const RESPONSE_FLAGS: &[u8] = b"response\0flags";
pub const RESPONSE_CODE: &[u8] = b"response\0code";
/// Body bytes Envoy received for the request, plus its headers' bytes.
pub const REQUEST_TOTAL_SIZE: &[u8] = b"request\0total_size";
