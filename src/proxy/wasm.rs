//! `Host` over the proxy-wasm ABI, every status a `Result`.
//!
//! The ABI (0.2.1) is declared directly: the SDK's own wrappers panic on a status they do not expect, and a panic traps the
//! worker's VM. Here every status comes back as a `Result` and byte values
//! stay bytes. Only callouts go through the SDK, whose dispatcher must know
//! their tokens.

use crate::policy::store::{Store, StoreError};
use crate::proxy::abi;
use crate::proxy::host::{Buffer, Host, HostError, HostResult, Map, MetricKind, Pairs};
use std::ptr::{null, null_mut};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const QUEUE_EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;

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
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
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
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
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
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
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

fn check(status: u32) -> HostResult<()> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// exported `proxy_on_memory_allocate`.
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

fn map_type(map: Map) -> u32 {
    match map {
        Map::RequestHeaders => 0,
        Map::ResponseHeaders => 2,
        Map::CalloutHeaders => 6,
    }
}

fn buffer_type(which: Buffer) -> u32 {
    match which {
        Buffer::RequestBody => 0,
        Buffer::ResponseBody => 1,
        Buffer::CalloutBody => 4,
        Buffer::PluginConfiguration => 7,
    }
}

/// The proxy-wasm host this VM runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

impl Store for WasmHost {
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

impl Host for WasmHost {
    fn now_ms(&self) -> u64 {
        let mut nanos: u64 = 0;
        // SAFETY: the host writes one u64.
        match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
            OK => nanos / 1_000_000,
            _ => 0,
        }
    }

    fn log(&self, level: log::Level, message: &str) {
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

    fn log_level(&self) -> log::LevelFilter {
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

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()> {
        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
        // SAFETY: plain value argument.
        check(unsafe { proxy_set_tick_period_milliseconds(ms) })
    }

    fn buffer(&self, which: Buffer, size: usize) -> HostResult<Option<Vec<u8>>> {
        // SAFETY: see get_bytes.
        get_bytes(|d, s| unsafe { proxy_get_buffer_bytes(buffer_type(which), 0, size, d, s) })
    }

    fn set_buffer(&self, which: Buffer, start: usize, size: usize, data: &[u8]) -> HostResult<()> {
        // SAFETY: pointer and length describe a live slice.
        check(unsafe { proxy_set_buffer_bytes(buffer_type(which), start, size, data.as_ptr(), data.len()) })
    }

    fn header(&self, map: Map, name: &str) -> HostResult<Option<Vec<u8>>> {
        // SAFETY: see get_bytes; name is a live &str.
        get_bytes(|d, s| unsafe { proxy_get_header_map_value(map_type(map), name.as_ptr(), name.len(), d, s) })
    }

    fn headers(&self, map: Map) -> HostResult<Pairs> {
        // SAFETY: see get_bytes.
        let bytes = get_bytes(|d, s| unsafe { proxy_get_header_map_pairs(map_type(map), d, s) })?;
        Ok(bytes.map(|b| abi::parse_pairs(&b)).unwrap_or_default())
    }

    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> HostResult<()> {
        // SAFETY: pointers and lengths describe live slices.
        check(unsafe {
            proxy_replace_header_map_value(map_type(map), name.as_ptr(), name.len(), value.as_ptr(), value.len())
        })
    }

    fn remove_header(&self, map: Map, name: &str) -> HostResult<()> {
        // SAFETY: name is a live &str.
        check(unsafe { proxy_remove_header_map_value(map_type(map), name.as_ptr(), name.len()) })
    }

    fn property(&self, path: &[u8]) -> HostResult<Option<Vec<u8>>> {
        // SAFETY: see get_bytes.
        get_bytes(|d, s| unsafe { proxy_get_property(path.as_ptr(), path.len(), d, s) })
    }

    fn set_effective_context(&self, context_id: u32) -> HostResult<()> {
        // SAFETY: plain value argument.
        check(unsafe { proxy_set_effective_context(context_id) })
    }

    fn resume_request(&self) -> HostResult<()> {
        // SAFETY: plain value argument (0: the request stream).
        check(unsafe { proxy_continue_stream(0) })
    }

    fn resume_response(&self) -> HostResult<()> {
        // SAFETY: plain value argument (1: the response stream).
        check(unsafe { proxy_continue_stream(1) })
    }

    fn send_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) -> HostResult<()> {
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

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32> {
        proxy_wasm::hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            vec![],
            std::time::Duration::from_millis(timeout_ms.max(1)),
        )
        .map_err(|s| HostError(s as u32))
    }

    fn register_queue(&self, name: &str) -> HostResult<u32> {
        let mut id: u32 = 0;
        // SAFETY: name is a live &str; the host writes one u32.
        check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn enqueue(&self, token: u32, value: &[u8]) -> HostResult<()> {
        // SAFETY: pointer and length describe a live slice.
        check(unsafe { proxy_enqueue_shared_queue(token, value.as_ptr(), value.len()) })
    }

    fn dequeue(&self, token: u32) -> HostResult<Option<Vec<u8>>> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        // SAFETY: the host fills data/size from our allocator on success.
        match unsafe { proxy_dequeue_shared_queue(token, &mut data, &mut size) } {
            OK => Ok(unsafe { take_buffer(data, size) }.or(Some(Vec::new()))),
            QUEUE_EMPTY | NOT_FOUND => Ok(None),
            status => Err(HostError(status)),
        }
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let kind = match kind {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
        };
        let mut id: u32 = 0;
        // SAFETY: name is a live &str; the host writes one u32.
        check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    fn increment_metric(&self, id: u32, by: i64) {
        // SAFETY: plain value arguments.
        let _ = unsafe { proxy_increment_metric(id, by) };
    }

    fn record_metric(&self, id: u32, value: u64) {
        // SAFETY: plain value arguments.
        let _ = unsafe { proxy_record_metric(id, value) };
    }

    fn metric_value(&self, id: u32) -> Option<u64> {
        let mut value: u64 = 0;
        // SAFETY: the host writes one u64.
        check(unsafe { proxy_get_metric(id, &mut value) }).ok()?;
        Some(value)
    }
}

/// Routes the `log` crate to the host's log.
pub struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            WasmHost.log(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}
