//! Whole requests through the real contexts over the fake host, called the way Envoy calls them.
//!
//! In order: request headers, body, the router's answer in
//! chunks (or Envoy's own local reply), callouts answered, the filter's own
//! replies passed through its encoders, and the stream's end.

use crate::policy::classify::flags;
use crate::proxy::fake::{FakeHost, Process, Reply};
use crate::proxy::host::Pairs;
use crate::proxy::root::Root;
use crate::proxy::stream::Stream;
use proxy_wasm::types::Action;
use std::cell::Cell;
use std::rc::Rc;

/// A client's request.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(path: &str, body: &[u8]) -> Self {
        let headers = [
            (":method", "POST"),
            (":path", path),
            (":authority", "gateway.local"),
            ("content-type", "application/json"),
        ];
        let mut headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        if !body.is_empty() {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        Request {
            headers,
            body: body.to_vec(),
        }
    }

    /// An OpenAI chat completion for `model`, with the client's own key.
    pub fn openai(model: &str, stream: bool) -> Self {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#);
        Request::new("/v1/chat/completions", body.as_bytes()).with("authorization", "Bearer client-key")
    }

    /// An Anthropic Messages request for `model`, with the client's own key.
    pub fn anthropic(model: &str, stream: bool) -> Self {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        );
        Request::new("/v1/messages", body.as_bytes()).with("x-api-key", "client-key")
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.as_bytes().to_vec()));
        self
    }
}

/// What an upstream answers: the router's cluster, or a callout's.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An HTTP answer whose body comes in `chunks`.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Vec<u8>>,
    },
    /// No answer from the vendor: Envoy's own reply, with its response flags.
    Local { status: u16, flags: u64 },
    /// Headers, then the vendor resets before any body: Envoy's own 503
    /// follows if the client has seen nothing yet.
    ResetAfterHeaders {
        status: u16,
        headers: Vec<(String, String)>,
    },
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Self {
        Answer::Http {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.as_bytes().to_vec()],
        }
    }

    pub fn status(status: u16) -> Self {
        Answer::json(status, r#"{"error":{"message":"failed","type":"server_error"}}"#)
    }

    /// A 200 stream of `events`, one chunk each.
    pub fn sse(events: &[&str]) -> Self {
        Answer::Http {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: events.iter().map(|e| e.as_bytes().to_vec()).collect(),
        }
    }

    /// Connection refused: Envoy answers 503 itself.
    pub fn refused() -> Self {
        Answer::Local {
            status: 503,
            flags: flags::UPSTREAM_CONNECTION_FAILURE,
        }
    }
}

/// What one upstream was asked.
#[derive(Debug, Clone)]
pub struct Asked {
    pub cluster: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Sent by a rescue callout rather than the router.
    pub callout: bool,
}

impl Asked {
    pub fn header(&self, name: &str) -> Option<&str> {
        let v = self.headers.iter().find(|(n, _)| n == name)?;
        std::str::from_utf8(&v.1).ok()
    }
}

/// What the client got.
#[derive(Debug, Clone)]
pub struct Got {
    pub context: u32,
    /// 0 while the request is still held by the filter.
    pub status: u32,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Every upstream request the exchange made, in order.
    pub asked: Vec<Asked>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        let v = self.headers.iter().find(|(n, _)| n == name)?;
        std::str::from_utf8(&v.1).ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One worker VM: its host and its root context.
pub struct Worker {
    pub host: FakeHost,
    pub root: Root<FakeHost>,
}

/// An Envoy process with worker VMs sharing one `Process`.
pub struct FakeEnvoy {
    pub process: Rc<Process>,
    /// The main thread's view of the process (its clock, its clusters).
    pub main: FakeHost,
    pub workers: Vec<Worker>,
    next_context: Cell<u32>,
}

impl FakeEnvoy {
    /// `workers` VMs with clusters named `clusters`, configured with `json`
    /// (each must accept it).
    pub fn new(json: &str, clusters: &[&str], workers: usize) -> Result<FakeEnvoy, String> {
        FakeEnvoy::with_env(json, clusters, workers, &[])
    }

    /// The same, with environment variables given to the VMs.
    pub fn with_env(json: &str, clusters: &[&str], workers: usize, env: &[(&str, &str)]) -> Result<FakeEnvoy, String> {
        let process = Process::new();
        let main = FakeHost::worker(&process);
        for c in clusters {
            main.add_cluster(c);
        }
        for (name, value) in env {
            main.set_env(name, value);
        }
        let mut envoy = FakeEnvoy {
            main,
            process: process.clone(),
            workers: Vec::new(),
            next_context: Cell::new(100),
        };
        for _ in 0..workers {
            let host = FakeHost::worker(&process);
            envoy.workers.push(Worker {
                root: Root::new(host.clone()),
                host,
            });
        }
        for w in &mut envoy.workers {
            let size = w.host.set_configuration(json);
            if !w.root.on_configure(size) {
                return Err(format!(
                    "configuration refused: {}",
                    super::capture::lines(log::Level::Error).join("; ")
                ));
            }
        }
        Ok(envoy)
    }

    pub fn set_now(&self, ms: u64) {
        self.main.set_now(ms);
    }

    pub fn advance(&self, ms: u64) {
        self.main.advance(ms);
    }

    /// Every worker's tick.
    pub fn tick(&mut self) {
        for w in &mut self.workers {
            w.root.on_tick();
        }
    }

    /// Hands every queued notification to the worker that owns the queue.
    pub fn deliver_notifications(&mut self) {
        for w in &mut self.workers {
            for token in w.host.ready_queues() {
                w.root.on_queue_ready(token);
            }
        }
    }

    /// Sends `request` through worker `worker`; `upstream` answers the
    /// router's attempt and every callout.
    pub fn send(&mut self, worker: usize, request: &Request, upstream: &mut dyn FnMut(&Asked) -> Answer) -> Got {
        let context = self.next_context.get();
        self.next_context.set(context + 1);
        self.deliver_notifications();
        match self.workers.get_mut(worker) {
            Some(w) => exchange(w, context, request, upstream),
            None => Got {
                context,
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                asked: Vec::new(),
            },
        }
    }
}

/// The router's view of where a request goes: the cluster its routing
/// header names (the route falls back to the first cluster without one).
fn routed(host: &FakeHost, context: u32, cluster_header: &str) -> Asked {
    let s = host.stream(context);
    let cluster = s
        .request_headers
        .iter()
        .find(|(n, _)| n == cluster_header)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    Asked {
        cluster,
        headers: s.request_headers,
        body: s.request_body,
        callout: false,
    }
}

fn exchange(w: &mut Worker, context: u32, request: &Request, upstream: &mut dyn FnMut(&Asked) -> Answer) -> Got {
    let host = w.host.clone();
    host.with_stream(context, |s| {
        s.request_headers = request.headers.clone();
        s.request_body = request.body.clone();
    });
    host.enter(context);
    let mut stream = w.root.new_stream(context);
    let mut got = Got {
        context,
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        asked: Vec::new(),
    };
    let mut answered = host.callouts().len();
    let cluster_header = w
        .root
        .plugin()
        .map(|p| p.config.cluster_header.clone())
        .unwrap_or_default();

    let mut action = stream.on_request_headers(request.headers.len(), request.body.is_empty());
    if action == Action::Pause && host.stream(context).reply.is_none() {
        host.enter(context);
        action = stream.on_request_body(request.body.len(), true);
    }
    if let Some(reply) = host.stream(context).reply {
        return deliver_reply(&host, &mut stream, got, reply);
    }
    if action == Action::Pause && host.stream(context).resumed == 0 {
        return got; // held by the filter
    }

    let asked = routed(&host, context, &cluster_header);
    got.asked.push(asked.clone());
    let answer = upstream(&asked);
    let mut reset_after_headers = false;
    let (status, headers, chunks, local_flags) = match answer {
        Answer::Http {
            status,
            headers,
            chunks,
        } => (status, headers, chunks, 0),
        Answer::Local { status, flags } => envoy_reply(status, flags),
        Answer::ResetAfterHeaders { status, headers } => {
            reset_after_headers = true;
            (status, headers, Vec::new(), 0)
        }
    };
    host.with_stream(context, |s| {
        s.response_headers = vec![(":status".into(), status.to_string().into_bytes())];
        s.response_headers
            .extend(headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
        if local_flags != 0 {
            s.properties
                .insert(b"response\0flags".to_vec(), local_flags.to_le_bytes().to_vec());
        }
        s.properties
            .insert(b"response\0code".to_vec(), u64::from(status).to_le_bytes().to_vec());
    });
    host.enter(context);
    let end_at_headers = chunks.is_empty() && !reset_after_headers;
    let mut held = stream.on_response_headers(headers.len() + 1, end_at_headers) == Action::Pause;
    answer_callouts(&host, &mut w.root, &mut stream, &mut got, &mut answered, upstream);
    let (status, chunks) = if reset_after_headers {
        let flags = flags::UPSTREAM_REMOTE_RESET;
        host.with_stream(context, |s| {
            s.properties
                .insert(b"response\0flags".to_vec(), flags.to_le_bytes().to_vec());
        });
        if !held || host.stream(context).reply.is_some() {
            // The client had the headers: the reset just ends its stream.
            got.status = u32::from(status);
            got.headers = host.stream(context).response_headers;
            host.enter(context);
            stream.on_done();
            return got;
        }
        // Nothing reached the client: Envoy answers it itself, through the
        // filter's encoders.
        let (local_status, local_headers, local_chunks, _) = envoy_reply(503, flags);
        host.with_stream(context, |s| {
            s.response_headers = vec![(":status".into(), local_status.to_string().into_bytes())];
            s.response_headers
                .extend(local_headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
        });
        host.enter(context);
        held = stream.on_response_headers(local_headers.len() + 1, false) == Action::Pause;
        answer_callouts(&host, &mut w.root, &mut stream, &mut got, &mut answered, upstream);
        (local_status, local_chunks)
    } else {
        (status, chunks)
    };
    let mut buffered: Vec<u8> = Vec::new();
    let mut passed: Vec<u8> = Vec::new();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        if host.stream(context).reply.is_some() {
            break;
        }
        // While held, each callback sees everything buffered so far.
        let shown = if held {
            buffered.extend_from_slice(chunk);
            buffered.clone()
        } else {
            chunk.clone()
        };
        host.with_stream(context, |s| s.response_body = shown.clone());
        host.enter(context);
        let action = stream.on_response_body(shown.len(), i == last);
        answer_callouts(&host, &mut w.root, &mut stream, &mut got, &mut answered, upstream);
        let out = host.stream(context).response_body;
        if action == Action::Continue {
            passed.extend_from_slice(&out);
            held = false;
            buffered.clear();
        }
    }
    if let Some(reply) = host.stream(context).reply {
        return deliver_reply(&host, &mut stream, got, reply);
    }
    got.status = u32::from(status);
    got.headers = host.stream(context).response_headers;
    got.body = passed;
    host.enter(context);
    stream.on_done();
    got
}

/// An upstream answer as the driver plays it: status, headers, body
/// chunks, Envoy's response flags.
type Played = (u16, Vec<(String, String)>, Vec<Vec<u8>>, u64);

/// Envoy's own reply for a vendor that gave no answer.
fn envoy_reply(status: u16, flags: u64) -> Played {
    let body = b"upstream connect error or disconnect/reset before headers".to_vec();
    let headers = vec![("content-type".to_string(), "text/plain".to_string())];
    (status, headers, vec![body], flags)
}

/// Answers every callout the filter sent since the last call, each in the
/// context that sent it, until none is pending.
fn answer_callouts(
    host: &FakeHost,
    root: &mut Root<FakeHost>,
    stream: &mut Stream<FakeHost>,
    got: &mut Got,
    answered: &mut usize,
    upstream: &mut dyn FnMut(&Asked) -> Answer,
) {
    loop {
        let Some(c) = host.callouts().get(*answered).cloned() else {
            // A same-vendor retry waiting: time passes to it, and the tick
            // sends it.
            let due = root.plugin().and_then(|p| {
                let journeys = p.journeys.borrow();
                journeys.values().filter_map(|j| j.borrow().retry_at).min()
            });
            match due {
                Some(at) => {
                    let now = host.now();
                    host.advance(at.saturating_sub(now));
                    root.on_tick();
                    continue;
                }
                None => break,
            }
        };
        *answered += 1;
        let asked = Asked {
            cluster: c.cluster.clone(),
            headers: c
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
                .collect(),
            body: c.body.clone().unwrap_or_default(),
            callout: true,
        };
        got.asked.push(asked.clone());
        let (headers, body): (Pairs, Vec<u8>) = match upstream(&asked) {
            Answer::Http {
                status,
                headers,
                chunks,
            } => {
                let mut h = vec![(":status".to_string(), status.to_string().into_bytes())];
                h.extend(headers.iter().map(|(n, v)| (n.clone(), v.as_bytes().to_vec())));
                (h, chunks.concat())
            }
            // A callout that got no answer has no headers.
            Answer::Local { .. } | Answer::ResetAfterHeaders { .. } => (Vec::new(), Vec::new()),
        };
        host.set_callout_answer(headers.clone(), body.clone());
        host.enter(c.context);
        stream.on_callout(c.token, headers.len(), body.len());
    }
}

/// Envoy sends the filter's own reply through the stream's encoders,
/// which must let it by, then ends the stream.
fn deliver_reply(host: &FakeHost, stream: &mut Stream<FakeHost>, mut got: Got, reply: Reply) -> Got {
    let context = got.context;
    host.with_stream(context, |s| {
        s.response_headers = vec![(":status".into(), reply.status.to_string().into_bytes())];
        s.response_headers.extend(reply.headers.iter().cloned());
        s.response_body = reply.body.clone();
    });
    host.enter(context);
    let headers_action = stream.on_response_headers(reply.headers.len() + 1, reply.body.is_empty());
    let body_action = if reply.body.is_empty() {
        Action::Continue
    } else {
        stream.on_response_body(reply.body.len(), true)
    };
    got.status = if headers_action == Action::Continue && body_action == Action::Continue {
        reply.status
    } else {
        0 // the filter held its own reply: the client would wait forever
    };
    got.headers = host.stream(context).response_headers;
    got.body = host.stream(context).response_body;
    stream.on_done();
    got
}
