//! Tokenizing and masking throughput, for BENCHMARKS.md.
//!
//! `cargo run --release -p alignkit-datasets --example throughput -- [MODEL_DIR] [N]`
//!
//! Encodes N (default 100 000) synthetic SFT conversations — a third single
//! turn, a third two-turn with a system prompt, a third prompt/completion —
//! with the model's chat template, assistant-only masks and boundary checks,
//! on one thread, then again from a JSONL file through `encode_sft_file` (all
//! cores), then packs them into 2048-token rows. Prints examples/s and tokens/s.

use std::time::Instant;

use alignkit_datasets::{EncodeConfig, Encoder, FieldMap, Message, Role, SftRecord, Turns, pack};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2").into());
    let n: usize = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let enc = Encoder::from_dir(
        &dir,
        EncodeConfig {
            max_len: Some(2048),
            ..Default::default()
        },
    )?;
    let words = [
        "the",
        "model",
        "learns",
        "to",
        "answer",
        "questions",
        "about",
        "42",
        "cats",
        "and",
        "Paris",
        "quickly",
    ];
    let text = |i: usize, len: usize| -> String {
        (0..len)
            .map(|j| words[(i * 7 + j * 3) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let records: Vec<SftRecord> = (0..n)
        .map(|i| {
            let (q, a) = (text(i, 12 + i % 20), text(i + 1, 30 + i % 60));
            match i % 3 {
                0 => SftRecord::Messages(vec![
                    Message::new(Role::User, q),
                    Message::new(Role::Assistant, a),
                ]),
                1 => SftRecord::Messages(vec![
                    Message::new(Role::System, "You are concise."),
                    Message::new(Role::User, q),
                    Message::new(Role::Assistant, a.clone()),
                    Message::new(Role::User, "More?"),
                    Message::new(Role::Assistant, a),
                ]),
                _ => SftRecord::PromptCompletion {
                    prompt: Turns::Messages(vec![Message::new(Role::User, q)]),
                    completion: Turns::Messages(vec![Message::new(Role::Assistant, a)]),
                },
            }
        })
        .collect();
    let start = Instant::now();
    let mut tokens = 0usize;
    let mut seqs = Vec::with_capacity(n);
    for r in &records {
        let ex = enc.sft(r)?;
        tokens += ex.tokens.len();
        seqs.push(ex.tokens);
    }
    let encode_s = start.elapsed().as_secs_f64();
    println!(
        "encode+mask: {n} examples, {tokens} tokens in {encode_s:.2} s: {:.0} examples/s, {:.0} tokens/s (1 thread)",
        n as f64 / encode_s,
        tokens as f64 / encode_s
    );
    // The same records from a JSONL file, read and encoded on all cores.
    let file =
        std::env::temp_dir().join(format!("alignkit-throughput-{}.jsonl", std::process::id()));
    let mut jsonl = String::new();
    for r in &records {
        let line = match r {
            SftRecord::Messages(m) => serde_json::json!({ "messages": m }),
            SftRecord::PromptCompletion { prompt, completion } => {
                serde_json::json!({ "prompt": prompt, "completion": completion })
            }
            SftRecord::Text(t) => serde_json::json!({ "text": t }),
        };
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    std::fs::write(&file, jsonl)?;
    let start = Instant::now();
    let encoded = enc.encode_sft_file(&file, &FieldMap::default())?;
    let file_s = start.elapsed().as_secs_f64();
    std::fs::remove_file(&file)?;
    assert_eq!(encoded.len(), n);
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    println!(
        "read+encode+mask from JSONL: {:.0} examples/s ({threads} threads)",
        n as f64 / file_s
    );

    let start = Instant::now();
    let rows = pack(&seqs, 2048, enc.tokenizer().pad_id())?;
    let pack_s = start.elapsed().as_secs_f64();
    println!(
        "pack: {} rows of 2048 ({:.1}% filled) in {pack_s:.3} s",
        rows.len(),
        100.0 * tokens as f64 / (rows.len() * 2048) as f64
    );
    Ok(())
}
