//! What the SSE scanner costs per chunk, and following a stream for a continuation, on the host (`make bench` runs it).
//!
//! Feeds realistic OpenAI and Anthropic token streams to `Scanner` one event
//! per chunk, as vendors send them, and prints the time per chunk. The filter
//! runs the same code compiled to wasm inside V8, which is slower than native
//! code by a small factor; `bench/run.py --sse` measures it inside Envoy.

use llm_failover::policy::config::Format;
use llm_failover::policy::resume::{End, Follow};
use llm_failover::policy::sse::{Ending, Scanner};
use std::hint::black_box;
use std::time::Instant;

fn openai_chunks(tokens: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(tokens + 2);
    for i in 0..tokens {
        out.push(format!(
            "data: {{\"id\":\"chatcmpl-9x8Yq2kFz\",\"object\":\"chat.completion.chunk\",\"created\":1764064800,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_a1b2c3\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        ).into_bytes());
    }
    out.push(b"data: {\"id\":\"chatcmpl-9x8Yq2kFz\",\"object\":\"chat.completion.chunk\",\"created\":1764064800,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n".to_vec());
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn anthropic_chunks(tokens: usize) -> Vec<Vec<u8>> {
    let mut out = vec![
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n".to_vec(),
        b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_vec(),
    ];
    for i in 0..tokens {
        out.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"
        ).into_bytes());
    }
    out.push(b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_vec());
    out.push(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n".to_vec());
    out.push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_vec());
    out
}

fn measure(name: &str, chunks: &[Vec<u8>]) {
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let rounds = 2_000;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut scanner = Scanner::new();
        for chunk in chunks {
            scanner.feed(black_box(chunk));
        }
        assert_eq!(scanner.finish(), Ending::Complete);
    }
    let elapsed = started.elapsed();
    let per_chunk_ns = elapsed.as_nanos() as f64 / (rounds * chunks.len()) as f64;
    let mb_s = (bytes * rounds) as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "{name:<10} {:>4} chunks of {:>3} bytes on average: {per_chunk_ns:>6.0} ns per chunk, {mb_s:>5.0} MB/s (native)",
        chunks.len(),
        bytes / chunks.len()
    );
}

/// What following a stream for a continuation adds (event by event, the
/// text of each delta kept): only streams that could be continued pay it.
fn measure_follow(name: &str, format: Format, chunks: &[Vec<u8>]) {
    let rounds = 2_000;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut follow = Follow::new(format);
        for chunk in chunks {
            black_box(follow.take(black_box(chunk)));
        }
        assert_eq!(follow.end(), End::Release(Vec::new()));
    }
    let per_chunk_ns = started.elapsed().as_nanos() as f64 / (rounds * chunks.len()) as f64;
    println!("{name:<10} followed for a continuation: {per_chunk_ns:>6.0} ns per chunk (native)");
}

fn main() {
    measure("openai", &openai_chunks(200));
    measure("anthropic", &anthropic_chunks(200));
    measure_follow("openai", Format::OpenAi, &openai_chunks(200));
    // The whole answer in one chunk, as a fast upstream sends it.
    measure_follow("openai/1", Format::OpenAi, &[openai_chunks(50).concat()]);
    measure_follow("anthropic", Format::Anthropic, &anthropic_chunks(200));
}
