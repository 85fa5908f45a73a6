//! A recording fake of `Host`: one Envoy process with worker VMs, for tests on the host.
//!
//! The process holds shared data, queues, metrics, clusters, environment and
//! a clock; each worker VM its streams (headers, bodies, properties, the
//! filter's own replies) and callouts. `envoy` drives whole requests
//! through the real contexts the way Envoy calls them.

pub mod envoy;

use crate::policy::store::{MemoryStore, Store, StoreError};
use crate::proxy::host::{Buffer, Host, HostError, HostResult, Map, MetricKind, Pairs, BAD_ARGUMENT};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

/// ABI status the fake returns for a missing stream or buffer.
const NOT_FOUND: u32 = 1;

/// What every worker of one Envoy process shares.
#[derive(Default)]
pub struct Process {
    pub store: MemoryStore,
    clock: Cell<u64>,
    /// By token (index + 1).
    queues: RefCell<Vec<Queue>>,
    /// Metric id (index + 1): name, kind, value. One id per name, as Envoy
    /// merges the metrics of every worker VM by name.
    metrics: RefCell<Vec<(String, MetricKind, i64)>>,
    clusters: RefCell<Vec<String>>,
    env: RefCell<HashMap<String, String>>,
    configuration: RefCell<Vec<u8>>,
    next_token: Cell<u32>,
    workers: Cell<u32>,
    /// Host calls made, by name (every worker; `take_calls` empties it).
    calls: RefCell<BTreeMap<&'static str, u64>>,
}

/// A shared queue: the worker VM that registered it, and its messages.
struct Queue {
    owner: u32,
    messages: VecDeque<Vec<u8>>,
}

/// A reply the filter sent itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub details: String,
}

/// What one stream shows the filter, and what the filter did to it.
#[derive(Debug, Clone, Default)]
pub struct FakeStream {
    pub request_headers: Pairs,
    /// The buffered request body.
    pub request_body: Vec<u8>,
    pub response_headers: Pairs,
    /// The response body the current callback sees.
    pub response_body: Vec<u8>,
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub reply: Option<Reply>,
    /// Times the filter resumed the paused request.
    pub resumed: u32,
    /// Times the filter resumed the paused response.
    pub resumed_response: u32,
}

/// A callout the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    /// The context that sent it (its answer goes there).
    pub context: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl Callout {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// One worker VM's own state.
#[derive(Default)]
struct Vm {
    id: u32,
    current: Cell<u32>,
    streams: RefCell<HashMap<u32, FakeStream>>,
    callouts: RefCell<Vec<Callout>>,
    /// The answer a callout callback reads: headers and body.
    callout_answer: RefCell<(Pairs, Vec<u8>)>,
    tick_ms: Cell<u64>,
}

/// `Host` for one worker VM of a fake Envoy process.
#[derive(Clone)]
pub struct FakeHost {
    process: Rc<Process>,
    vm: Rc<Vm>,
}

impl Process {
    pub fn new() -> Rc<Process> {
        Rc::new(Process::default())
    }

    fn count(&self, call: &'static str) {
        *self.calls.borrow_mut().entry(call).or_default() += 1;
    }

    /// The host calls made since the last call of this, by name.
    pub fn take_calls(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
}

impl FakeHost {
    /// A new worker VM of `process`.
    pub fn worker(process: &Rc<Process>) -> FakeHost {
        let id = process.workers.get() + 1;
        process.workers.set(id);
        FakeHost {
            process: process.clone(),
            vm: Rc::new(Vm { id, ..Vm::default() }),
        }
    }

    pub fn process(&self) -> &Rc<Process> {
        &self.process
    }

    pub fn now(&self) -> u64 {
        self.process.clock.get()
    }

    pub fn set_now(&self, ms: u64) {
        self.process.clock.set(ms);
    }

    pub fn advance(&self, ms: u64) {
        self.process.clock.set(self.process.clock.get().saturating_add(ms));
    }

    pub fn add_cluster(&self, name: &str) {
        self.process.clusters.borrow_mut().push(name.to_string());
    }

    pub fn set_env(&self, name: &str, value: &str) {
        self.process.env.borrow_mut().insert(name.into(), value.into());
    }

    /// The filter JSON `on_configure` reads; returns its size.
    pub fn set_configuration(&self, json: &str) -> usize {
        *self.process.configuration.borrow_mut() = json.as_bytes().to_vec();
        json.len()
    }

    /// Makes `context` the current stream.
    pub fn enter(&self, context: u32) {
        self.vm.current.set(context);
    }

    pub fn current(&self) -> u32 {
        self.vm.current.get()
    }

    /// Changes one stream (created on first use).
    pub fn with_stream<R>(&self, context: u32, f: impl FnOnce(&mut FakeStream) -> R) -> R {
        f(self.vm.streams.borrow_mut().entry(context).or_default())
    }

    pub fn stream(&self, context: u32) -> FakeStream {
        self.vm.streams.borrow().get(&context).cloned().unwrap_or_default()
    }

    /// Every callout this worker sent, oldest first.
    pub fn callouts(&self) -> Vec<Callout> {
        self.vm.callouts.borrow().clone()
    }

    /// The answer the next callout callback reads.
    pub fn set_callout_answer(&self, headers: Pairs, body: Vec<u8>) {
        *self.vm.callout_answer.borrow_mut() = (headers, body);
    }

    pub fn tick_ms(&self) -> u64 {
        self.vm.tick_ms.get()
    }

    /// A counter's or gauge's value, by its full name.
    pub fn metric(&self, name: &str) -> i64 {
        let metrics = self.process.metrics.borrow();
        metrics.iter().find(|(n, _, _)| n == name).map_or(0, |(_, _, v)| *v)
    }

    /// Every metric defined, with its value.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        self.process
            .metrics
            .borrow()
            .iter()
            .map(|(n, _, v)| (n.clone(), *v))
            .collect()
    }

    /// Tokens of this worker's queues that hold messages.
    pub fn ready_queues(&self) -> Vec<u32> {
        let queues = self.process.queues.borrow();
        (1u32..)
            .zip(queues.iter())
            .filter(|(_, q)| q.owner == self.vm.id && !q.messages.is_empty())
            .map(|(token, _)| token)
            .collect()
    }

    fn on_stream<R>(&self, f: impl FnOnce(&mut FakeStream) -> R) -> HostResult<R> {
        let current = self.vm.current.get();
        self.vm
            .streams
            .borrow_mut()
            .get_mut(&current)
            .map(f)
            .ok_or(HostError(NOT_FOUND))
    }
}

impl Store for FakeHost {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.process.count("get");
        self.process.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.process.count("set");
        self.process.store.set(key, value, cas)
    }
}

fn pairs_of(s: &mut FakeStream, map: Map) -> Option<&mut Pairs> {
    match map {
        Map::RequestHeaders => Some(&mut s.request_headers),
        Map::ResponseHeaders => Some(&mut s.response_headers),
        Map::CalloutHeaders => None,
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.process.count("now_ms");
        self.process.clock.get()
    }

    fn log(&self, level: log::Level, message: &str) {
        capture::push(level, message);
    }

    fn log_level(&self) -> log::LevelFilter {
        capture::install();
        log::LevelFilter::Debug
    }

    fn env(&self, name: &str) -> Option<String> {
        self.process.count("env");
        self.process.env.borrow().get(name).cloned()
    }

    fn set_tick_period_ms(&self, ms: u64) -> HostResult<()> {
        self.process.count("set_tick_period_ms");
        self.vm.tick_ms.set(ms);
        Ok(())
    }

    fn buffer(&self, which: Buffer, size: usize) -> HostResult<Option<Vec<u8>>> {
        self.process.count("buffer");
        let cut = |b: &[u8]| Some(b.get(..size.min(b.len())).unwrap_or_default().to_vec());
        match which {
            Buffer::PluginConfiguration => Ok(cut(&self.process.configuration.borrow())),
            Buffer::CalloutBody => Ok(cut(&self.vm.callout_answer.borrow().1)),
            Buffer::RequestBody => self.on_stream(|s| cut(&s.request_body)),
            Buffer::ResponseBody => self.on_stream(|s| cut(&s.response_body)),
        }
    }

    fn set_buffer(&self, which: Buffer, start: usize, size: usize, data: &[u8]) -> HostResult<()> {
        self.process.count("set_buffer");
        let splice = |b: &mut Vec<u8>| {
            let start = start.min(b.len());
            let end = start.saturating_add(size).min(b.len());
            b.splice(start..end, data.iter().copied());
        };
        match which {
            Buffer::RequestBody => self.on_stream(|s| splice(&mut s.request_body)),
            Buffer::ResponseBody => self.on_stream(|s| splice(&mut s.response_body)),
            Buffer::CalloutBody | Buffer::PluginConfiguration => Err(HostError(BAD_ARGUMENT)),
        }
    }

    fn header(&self, map: Map, name: &str) -> HostResult<Option<Vec<u8>>> {
        self.process.count("header");
        let pairs = self.headers(map)?;
        Ok(pairs.into_iter().find(|(n, _)| n == name).map(|(_, v)| v))
    }

    fn headers(&self, map: Map) -> HostResult<Pairs> {
        self.process.count("headers");
        if map == Map::CalloutHeaders {
            return Ok(self.vm.callout_answer.borrow().0.clone());
        }
        self.on_stream(|s| pairs_of(s, map).cloned().unwrap_or_default())
    }

    fn set_header(&self, map: Map, name: &str, value: &[u8]) -> HostResult<()> {
        self.process.count("set_header");
        self.on_stream(|s| {
            if let Some(pairs) = pairs_of(s, map) {
                let at = pairs.iter().position(|(n, _)| n == name);
                pairs.retain(|(n, _)| n != name);
                let entry = (name.to_string(), value.to_vec());
                match at {
                    Some(i) => pairs.insert(i.min(pairs.len()), entry),
                    None => pairs.push(entry),
                }
            }
        })
    }

    fn remove_header(&self, map: Map, name: &str) -> HostResult<()> {
        self.process.count("remove_header");
        self.on_stream(|s| {
            if let Some(pairs) = pairs_of(s, map) {
                pairs.retain(|(n, _)| n != name);
            }
        })
    }

    fn property(&self, path: &[u8]) -> HostResult<Option<Vec<u8>>> {
        self.process.count("property");
        self.on_stream(|s| s.properties.get(path).cloned())
    }

    fn set_effective_context(&self, context_id: u32) -> HostResult<()> {
        self.process.count("set_effective_context");
        if !self.vm.streams.borrow().contains_key(&context_id) {
            return Err(HostError(NOT_FOUND));
        }
        self.vm.current.set(context_id);
        Ok(())
    }

    fn resume_response(&self) -> HostResult<()> {
        self.process.count("resume_response");
        self.on_stream(|s| s.resumed_response += 1)
    }

    fn resume_request(&self) -> HostResult<()> {
        self.process.count("resume_request");
        self.on_stream(|s| s.resumed += 1)
    }

    fn send_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) -> HostResult<()> {
        self.process.count("send_response");
        self.on_stream(|s| {
            s.reply = Some(Reply {
                status,
                headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
                body: body.to_vec(),
                details: details.to_string(),
            })
        })
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32> {
        self.process.count("dispatch");
        if !self.process.clusters.borrow().iter().any(|c| c == cluster) {
            return Err(HostError(BAD_ARGUMENT));
        }
        let token = self.process.next_token.get() + 1;
        self.process.next_token.set(token);
        self.vm.callouts.borrow_mut().push(Callout {
            token,
            context: self.vm.current.get(),
            cluster: cluster.to_string(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout_ms,
        });
        Ok(token)
    }

    fn register_queue(&self, _name: &str) -> HostResult<u32> {
        self.process.count("register_queue");
        let mut queues = self.process.queues.borrow_mut();
        queues.push(Queue {
            owner: self.vm.id,
            messages: VecDeque::new(),
        });
        u32::try_from(queues.len()).map_err(|_| HostError(BAD_ARGUMENT))
    }

    fn enqueue(&self, token: u32, value: &[u8]) -> HostResult<()> {
        self.process.count("enqueue");
        let mut queues = self.process.queues.borrow_mut();
        let index = usize::try_from(token).unwrap_or(0).wrapping_sub(1);
        let queue = queues.get_mut(index).ok_or(HostError(NOT_FOUND))?;
        queue.messages.push_back(value.to_vec());
        Ok(())
    }

    fn dequeue(&self, token: u32) -> HostResult<Option<Vec<u8>>> {
        self.process.count("dequeue");
        let mut queues = self.process.queues.borrow_mut();
        let index = usize::try_from(token).unwrap_or(0).wrapping_sub(1);
        let queue = queues.get_mut(index).ok_or(HostError(NOT_FOUND))?;
        Ok(queue.messages.pop_front())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        self.process.count("define_metric");
        let mut metrics = self.process.metrics.borrow_mut();
        let at = match metrics.iter().position(|(n, _, _)| n == name) {
            Some(i) => i,
            None => {
                metrics.push((name.to_string(), kind, 0));
                metrics.len() - 1
            }
        };
        u32::try_from(at + 1).map_err(|_| HostError(BAD_ARGUMENT))
    }

    fn increment_metric(&self, id: u32, by: i64) {
        self.process.count("increment_metric");
        let index = usize::try_from(id).unwrap_or(0).wrapping_sub(1);
        if let Some(m) = self.process.metrics.borrow_mut().get_mut(index) {
            m.2 = m.2.saturating_add(by);
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.process.count("record_metric");
        let index = usize::try_from(id).unwrap_or(0).wrapping_sub(1);
        if let Some(m) = self.process.metrics.borrow_mut().get_mut(index) {
            m.2 = i64::try_from(value).unwrap_or(i64::MAX);
        }
    }

    fn metric_value(&self, id: u32) -> Option<u64> {
        self.process.count("metric_value");
        let index = usize::try_from(id).unwrap_or(0).wrapping_sub(1);
        let metrics = self.process.metrics.borrow();
        metrics.get(index).map(|m| u64::try_from(m.2).unwrap_or(0))
    }
}

/// Log lines of the current thread, captured from the `log` facade.
pub mod capture {
    use std::cell::RefCell;

    thread_local! {
        static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }

        fn log(&self, record: &log::Record) {
            push(record.level(), &record.args().to_string());
        }

        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture;

    /// Routes the `log` facade to this capture (once per process).
    pub fn install() {
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    }

    pub fn push(level: log::Level, message: &str) {
        LINES.with(|l| l.borrow_mut().push((level, message.to_string())));
    }

    /// Lines logged on this thread so far, at `level` or more severe.
    pub fn lines(level: log::Level) -> Vec<String> {
        LINES.with(|l| {
            l.borrow()
                .iter()
                .filter(|(lv, _)| *lv <= level)
                .map(|(_, m)| m.clone())
                .collect()
        })
    }

    pub fn clear() {
        LINES.with(|l| l.borrow_mut().clear());
    }
}
