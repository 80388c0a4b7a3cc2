//! Property tests (bounded: a few dozen cases each, well under a second or
//! two) over the JSONL reader, the masker, batching and packing.

mod common;

use alignkit_datasets::{
    EncodeConfig, Encoder, JsonlReader, Message, PaddingSide, Role, Sequence, SftRecord,
    TruncationSide, collate, collate_packed, pack,
};
use proptest::prelude::*;
use std::sync::OnceLock;

fn llama3_encoder(max_len: Option<usize>, side: TruncationSide) -> Encoder {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| common::llama3_dir(common::LLAMA3_TEMPLATE, None));
    Encoder::from_dir(
        dir.path(),
        EncodeConfig {
            max_len,
            truncation: side,
            ..Default::default()
        },
    )
    .unwrap()
}

fn smollm2() -> &'static Encoder {
    static ENC: OnceLock<Encoder> = OnceLock::new();
    ENC.get_or_init(|| common::smollm2(EncodeConfig::default()))
}

fn content() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 \n\té漢🚀<|>.,!?]{0,24}").unwrap()
}

/// Conversations: optional system message, then user/assistant turns,
/// ending with an assistant turn.
fn conversation() -> impl Strategy<Value = Vec<Message>> {
    (
        proptest::option::of(content()),
        proptest::collection::vec((content(), content()), 1..4),
    )
        .prop_map(|(system, turns)| {
            let mut msgs = Vec::new();
            if let Some(s) = system {
                msgs.push(Message::new(Role::System, s));
            }
            for (u, a) in turns {
                msgs.push(Message::new(Role::User, u));
                msgs.push(Message::new(Role::Assistant, a));
            }
            msgs
        })
}

/// Maximal runs of trained positions, as (start, end) half-open.
fn runs(mask: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &m) in mask.iter().chain(std::iter::once(&false)).enumerate() {
        match (m, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reader_never_panics_and_always_names_the_line(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let lines = bytes.split(|&b| b == b'\n').count();
        for item in JsonlReader::new(&bytes[..], "d.jsonl") {
            match item {
                Ok((at, _)) => prop_assert!(at.line >= 1 && at.line <= lines),
                Err(e) => {
                    let s = e.to_string();
                    let rest = s.strip_prefix("d.jsonl:").expect("starts with the file");
                    let n: usize = rest.split(':').next().unwrap().parse().expect("a line number");
                    prop_assert!(n >= 1 && n <= lines.max(1));
                }
            }
        }
    }

    #[test]
    fn reader_finds_records_among_garbage(
        good in proptest::collection::vec(content(), 1..6),
        garbage in proptest::collection::vec("[^\n]{0,20}", 0..6),
    ) {
        let mut text = String::new();
        let mut expected_lines = Vec::new();
        let mut line = 0;
        for (i, g) in good.iter().enumerate() {
            line += 1;
            text.push_str(&serde_json::json!({"text": g}).to_string());
            text.push('\n');
            expected_lines.push(line);
            if let Some(junk) = garbage.get(i) {
                line += 1;
                text.push_str(junk);
                text.push('\n');
            }
        }
        let ok: Vec<usize> = JsonlReader::new(text.as_bytes(), "d.jsonl")
            .filter_map(|r| r.ok())
            .filter(|(_, m)| m.contains_key("text") && m.len() == 1)
            .map(|(at, _)| at.line)
            .collect();
        for l in expected_lines {
            prop_assert!(ok.contains(&l));
        }
    }

    #[test]
    fn llama3_masks_cover_exactly_the_assistant_turns(msgs in conversation()) {
        let enc = llama3_encoder(None, TruncationSide::KeepStart);
        let ex = enc.sft(&SftRecord::Messages(msgs.clone())).unwrap();
        let ids = &ex.tokens.input_ids;
        let r = runs(&ex.tokens.loss_mask);
        let assistants: Vec<&Message> = msgs.iter().filter(|m| m.role == Role::Assistant).collect();
        prop_assert_eq!(r.len(), assistants.len());
        prop_assert_eq!(ids.iter().filter(|&&i| i == common::BOS).count(), 1);
        for ((s, e), m) in r.iter().zip(assistants) {
            prop_assert_eq!(ids[e - 1], common::EOT);
            let text = enc.tokenizer().decode(&ids[*s..e - 1], false).unwrap();
            prop_assert_eq!(text.as_str(), m.content.trim());
            prop_assert_eq!(&ids[s - 2..*s], &[common::END_HEADER, common::NEWLINES][..]);
        }
    }

    #[test]
    fn smollm2_masks_end_with_im_end_or_the_example_is_rejected(msgs in conversation()) {
        let enc = smollm2();
        match enc.sft(&SftRecord::Messages(msgs.clone())) {
            Ok(ex) => {
                let im_end = enc.tokenizer().eos().unwrap().id;
                let r = runs(&ex.tokens.loss_mask);
                prop_assert_eq!(r.len(), msgs.iter().filter(|m| m.role == Role::Assistant).count());
                for (_, e) in r {
                    prop_assert_eq!(ex.tokens.input_ids[e - 1], im_end);
                }
                prop_assert_eq!(&ex.tokens.input_ids, &enc.chat_ids(&msgs, false).unwrap());
            }
            Err(e) => {
                let s = e.to_string();
                prop_assert!(s.contains("not a token prefix"), "{}", s);
                // Only whitespace at the start of a response breaks SmolLM2's boundary.
                prop_assert!(msgs.iter().any(|m| m.role == Role::Assistant && m.content.starts_with(char::is_whitespace)), "{}", s);
            }
        }
    }

    #[test]
    fn truncation_respects_max_len_and_records_eos(msgs in conversation(), max_len in 2usize..80, keep_end in any::<bool>()) {
        let side = if keep_end { TruncationSide::KeepEnd } else { TruncationSide::KeepStart };
        let full = llama3_encoder(None, side).sft(&SftRecord::Messages(msgs.clone())).unwrap();
        let ex = llama3_encoder(Some(max_len), side).sft(&SftRecord::Messages(msgs)).unwrap();
        let n = full.tokens.len();
        prop_assert_eq!(ex.tokens.len(), n.min(max_len));
        prop_assert_eq!(ex.truncation.original_len, n);
        prop_assert_eq!(ex.tokens.loss_mask.len(), ex.tokens.len());
        prop_assert_eq!(ex.tokens.input_ids[0], common::BOS);
        prop_assert!(!ex.tokens.loss_mask[0]);
        if n <= max_len {
            prop_assert_eq!(&ex, &full);
        } else {
            prop_assert_eq!(ex.truncation.prompt_dropped + ex.truncation.completion_dropped, n - max_len);
            // has_eos: every trained run still ends with <|eot_id|>.
            let r = runs(&ex.tokens.loss_mask);
            let ends_ok = !r.is_empty() && r.iter().all(|&(_, e)| ex.tokens.input_ids[e - 1] == common::EOT);
            prop_assert_eq!(ex.has_eos, ends_ok);
            prop_assert_eq!(ex.truncation.eos_dropped, !ends_ok);
            if keep_end {
                // The end survives: the final turn keeps its EOT.
                prop_assert!(ex.has_eos);
                prop_assert_eq!(*ex.tokens.input_ids.last().unwrap(), common::EOT);
            } else {
                prop_assert_eq!(&ex.tokens.input_ids[..], &full.tokens.input_ids[..max_len]);
            }
        }
    }

    #[test]
    fn collate_round_trips(lens in proptest::collection::vec(1usize..12, 1..6), left in any::<bool>()) {
        let seqs: Vec<Sequence> = lens.iter().enumerate().map(|(k, &n)| Sequence {
            input_ids: (0..n as u32).map(|i| 100 * k as u32 + i + 1).collect(),
            loss_mask: (0..n).map(|i| i > 0 && (i + k) % 2 == 0).collect(),
        }).collect();
        let side = if left { PaddingSide::Left } else { PaddingSide::Right };
        let b = collate(&seqs, 0, side);
        let t = *lens.iter().max().unwrap();
        prop_assert_eq!(b.seq_len, t);
        for (r, s) in seqs.iter().enumerate() {
            let row = r * t..(r + 1) * t;
            let real: Vec<usize> = row.clone().filter(|&i| b.attention_mask[i]).collect();
            prop_assert_eq!(real.len(), s.len());
            prop_assert_eq!(real.iter().map(|&i| b.input_ids[i]).collect::<Vec<_>>(), s.input_ids.clone());
            prop_assert_eq!(real.iter().map(|&i| b.loss_mask[i]).collect::<Vec<_>>(), s.loss_mask.clone());
            prop_assert_eq!(real.iter().map(|&i| b.position_ids[i]).collect::<Vec<_>>(), (0..s.len() as i64).collect::<Vec<_>>());
            // Contiguous, at the right end.
            let first = real[0] - row.start;
            prop_assert_eq!(first, if left { t - s.len() } else { 0 });
            prop_assert!(row.filter(|&i| !b.attention_mask[i]).all(|i| !b.loss_mask[i] && b.input_ids[i] == 0));
        }
    }

    #[test]
    fn packing_keeps_examples_apart(lens in proptest::collection::vec(1usize..16, 1..20), row_len in 16usize..40) {
        let seqs: Vec<Sequence> = lens.iter().enumerate().map(|(k, &n)| Sequence {
            input_ids: (0..n as u32).map(|i| 1000 * (k as u32 + 1) + i).collect(),
            loss_mask: (0..n).map(|i| i > 0).collect(),
        }).collect();
        let rows = pack(&seqs, row_len, 0).unwrap();
        let mut seen: Vec<usize> = rows.iter().flat_map(|r| r.examples.clone()).collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..seqs.len()).collect::<Vec<_>>());
        // Fewer rows than one per example unless nothing fits together.
        let total: usize = lens.iter().sum();
        prop_assert!(rows.len() <= seqs.len() && rows.len() >= total.div_ceil(row_len));
        for row in &rows {
            prop_assert_eq!(row.len(), row_len);
            let mut at = 0;
            for (seg, &i) in row.examples.iter().enumerate() {
                let s = &seqs[i];
                let span = at..at + s.len();
                prop_assert_eq!(&row.input_ids[span.clone()], &s.input_ids[..]);
                prop_assert_eq!(&row.loss_mask[span.clone()], &s.loss_mask[..]);
                prop_assert_eq!(&row.position_ids[span.clone()], &(0..s.len() as i64).collect::<Vec<_>>()[..]);
                prop_assert!(row.segment_ids[span.clone()].iter().all(|&x| x == seg as u32 + 1));
                prop_assert!(!row.loss_mask[span.start], "no target at a segment start");
                at = span.end;
            }
            prop_assert!(row.segment_ids[at..].iter().all(|&x| x == 0));
            prop_assert!(row.loss_mask[at..].iter().all(|&x| !x));
            // The attention pattern: causal within a segment, nothing across.
            for q in 0..row_len {
                for k in 0..row_len {
                    let same = row.segment_ids[q] != 0 && row.segment_ids[q] == row.segment_ids[k];
                    prop_assert_eq!(row.attends(q, k), same && k <= q);
                    if row.attends(q, k) {
                        // Same example: ids share the example's thousand.
                        prop_assert_eq!(row.input_ids[q] / 1000, row.input_ids[k] / 1000);
                    }
                }
            }
        }
        let b = collate_packed(&rows);
        prop_assert_eq!(b.batch_size, rows.len());
        for (r, row) in rows.iter().enumerate() {
            for q in 0..row_len {
                for k in 0..row_len {
                    prop_assert_eq!(b.attends(r, q, k), row.attends(q, k));
                }
            }
        }
    }
}
