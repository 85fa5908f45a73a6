//! The proxy-wasm host calls this filter makes, declared against the ABI
//! (0.2.1) directly. The SDK's own wrappers panic on a status they do not
//! expect, and a panic traps the worker's VM; here every status comes back
//! as a `Result`, byte values stay bytes, and nothing allocates a path list.

use crate::policy::store::{Store, StoreError};
use crate::proxy::abi;
use std::ptr::{null, null_mut};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const CALLOUT_BODY: u32 = 4;
const PLUGIN_CONFIGURATION: u32 = 7;
pub const CALLOUT_HEADERS: u32 = 6;

pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_register_shared_queue(name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(queue_id: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// A host call that returned something other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

type HostResult<T> = Result<T, HostError>;

fn check(status: u32) -> HostResult<()> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's exported
/// `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or come from that allocator with exactly `size` bytes.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// Calls a host getter of the shape `(…, return_data, return_size)`.
fn get_bytes(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> HostResult<Option<Vec<u8>>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        // SAFETY: on success the host filled data/size from our allocator.
        OK => Ok(unsafe { take_buffer(data, size) }),
        NOT_FOUND => Ok(None),
        status => Err(HostError(status)),
    }
}

pub fn log(level: log::Level, message: &str) {
    let level = match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    };
    // SAFETY: pointer and length describe a live &str.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// The host's log level for this plugin, as a `log` filter, so that lines
/// Envoy would drop are not even formatted.
pub fn log_level() -> log::LevelFilter {
    let mut level: u32 = 2;
    // SAFETY: the host writes one u32.
    if unsafe { proxy_get_log_level(&mut level) } != OK {
        return log::LevelFilter::Info;
    }
    match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (0 if unavailable).
pub fn now_ms() -> u64 {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
        OK => nanos / 1_000_000,
        _ => 0,
    }
}

pub fn set_tick_period_ms(ms: u64) -> HostResult<()> {
    let ms = u32::try_from(ms).unwrap_or(u32::MAX);
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

pub fn plugin_configuration(size: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes.
    get_bytes(|d, s| unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, d, s) })
}

pub fn header(map: u32, name: &str) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes; name is a live &str.
    get_bytes(|d, s| unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), d, s) })
}

/// Every header of a map as (name, value) pairs, in one host call.
pub fn header_pairs(map: u32) -> HostResult<Vec<(String, Vec<u8>)>> {
    // SAFETY: see get_bytes.
    let bytes = get_bytes(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) })?;
    Ok(bytes.map(|b| abi::parse_pairs(&b)).unwrap_or_default())
}

pub fn remove_header(map: u32, name: &str) -> HostResult<()> {
    // SAFETY: name is a live &str.
    check(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// The response body bytes of the current chunk.
pub fn response_body(size: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes.
    get_bytes(|d, s| unsafe { proxy_get_buffer_bytes(RESPONSE_BODY, 0, size, d, s) })
}

/// Appends bytes after the current response body chunk of `size` bytes.
pub fn append_response_body(size: usize, data: &[u8]) -> HostResult<()> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { proxy_set_buffer_bytes(RESPONSE_BODY, size, 0, data.as_ptr(), data.len()) })
}

/// Makes later host calls act on another context of this VM (a stream,
/// from the root context's tick or callout callbacks).
pub fn set_effective_context(context_id: u32) -> HostResult<()> {
    // SAFETY: plain value argument.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Resumes a request paused in its headers or body.
pub fn resume_request() -> HostResult<()> {
    // SAFETY: plain value argument (0: the request stream).
    check(unsafe { proxy_continue_stream(0) })
}

/// The request body buffered so far (`size` bytes).
pub fn request_body(size: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes.
    get_bytes(|d, s| unsafe { proxy_get_buffer_bytes(REQUEST_BODY, 0, size, d, s) })
}

/// Replaces the whole buffered request body (`size` bytes) with `data`.
pub fn replace_request_body(size: usize, data: &[u8]) -> HostResult<()> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { proxy_set_buffer_bytes(REQUEST_BODY, 0, size, data.as_ptr(), data.len()) })
}

/// The body of the answer to an HTTP callout, in its response callback.
pub fn callout_body(size: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes.
    get_bytes(|d, s| unsafe { proxy_get_buffer_bytes(CALLOUT_BODY, 0, size, d, s) })
}

/// Sends an HTTP request to `cluster`; the answer arrives in the calling
/// context's `on_http_call_response` with the returned token. Goes through
/// the SDK so that its dispatcher knows the token.
pub fn dispatch(cluster: &str, headers: Vec<(&str, &str)>, body: &[u8], timeout_ms: u64) -> HostResult<u32> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(body),
        vec![],
        std::time::Duration::from_millis(timeout_ms.max(1)),
    )
    .map_err(|s| HostError(s as u32))
}

/// Sets a header, replacing every value it had.
pub fn set_header(map: u32, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Reads a property; `path` is its segments joined by NUL bytes.
pub fn property(path: &[u8]) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: see get_bytes.
    get_bytes(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
}

/// A little-endian integer property such as `response.flags`.
pub fn property_u64(path: &[u8]) -> HostResult<Option<u64>> {
    Ok(property(path)?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok().map(u64::from_le_bytes)))
}

pub fn define_metric(kind: u32, name: &str) -> HostResult<u32> {
    let mut id: u32 = 0;
    // SAFETY: name is a live &str; the host writes one u32.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: plain value arguments.
    let _ = unsafe { proxy_increment_metric(id, by) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: plain value arguments.
    let _ = unsafe { proxy_record_metric(id, value) };
}

/// Answers the client directly with `status`, `headers` and `body`.
pub fn send_response(status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) -> HostResult<()> {
    let map = abi::serialize_pairs(headers);
    // SAFETY: pointers and lengths describe live buffers.
    check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Registers this VM's shared queue `name`; returns its process-wide token.
pub fn register_queue(name: &str) -> HostResult<u32> {
    let mut id: u32 = 0;
    // SAFETY: name is a live &str; the host writes one u32.
    check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn enqueue(token: u32, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { proxy_enqueue_shared_queue(token, value.as_ptr(), value.len()) })
}

/// The next message on one of this VM's queues; `None` when it is empty.
pub fn dequeue(token: u32) -> HostResult<Option<Vec<u8>>> {
    const EMPTY: u32 = 7;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host fills data/size from our allocator on success.
    match unsafe { proxy_dequeue_shared_queue(token, &mut data, &mut size) } {
        OK => Ok(unsafe { take_buffer(data, size) }.or(Some(Vec::new()))),
        EMPTY | NOT_FOUND => Ok(None),
        status => Err(HostError(status)),
    }
}

/// Envoy's shared data: one map per process, seen by every worker.
pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: key is a live &str; the host fills data/size/cas.
        let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        match status {
            // SAFETY: on success data/size come from our allocator.
            OK => Ok(unsafe { take_buffer(data, size) }.map(|v| (v, cas))),
            NOT_FOUND => Ok(None),
            s => Err(StoreError::Host(format!("get_shared_data status {s}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let value_ptr = if value.is_empty() { null() } else { value.as_ptr() };
        // SAFETY: pointers and lengths describe live slices.
        let status = unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value_ptr, value.len(), cas) };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::Conflict),
            s => Err(StoreError::Host(format!("set_shared_data status {s}"))),
        }
    }
}

/// Routes the `log` crate to the host's log, dropping failures.
pub struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            log(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}
