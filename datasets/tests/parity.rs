//! Token-level parity with transformers on the real SmolLM2-135M-Instruct
//! tokenizer and chat template (fixture written by
//! `scripts/fixtures_datasets.py`).

mod common;

use alignkit_datasets::{EncodeConfig, Message, PromptRecord, SftRecord, Turns};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    bos_token: String,
    eos_token: String,
    eos_token_id: u32,
    conversations: Vec<Case>,
    texts: Vec<TextCase>,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<Message>,
    text: String,
    ids: Vec<u32>,
    assistant_mask: Vec<bool>,
    prompt_text: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    generation_text: Option<String>,
    generation_ids: Option<Vec<u32>>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    ids: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = common::smollm2_dir().join("parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tokenizer_conventions_are_read() {
    let fx = fixture();
    let enc = common::smollm2(EncodeConfig::default());
    let tok = enc.tokenizer();
    assert_eq!(tok.bos().unwrap().text, fx.bos_token);
    assert_eq!(tok.eos().unwrap().text, fx.eos_token);
    assert_eq!(tok.eos().unwrap().id, fx.eos_token_id);
    assert!(!tok.adds_bos(), "SmolLM2 adds no BOS");
    assert!(tok.is_end_of_turn(fx.eos_token_id));
    assert_eq!(tok.context_length(), Some(8192));
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn rendered_text_and_ids_match_apply_chat_template() {
    let fx = fixture();
    assert!(fx.conversations.len() >= 20);
    let enc = common::smollm2(EncodeConfig::default());
    let mut tokens = 0;
    for (i, c) in fx.conversations.iter().enumerate() {
        assert_eq!(enc.render(&c.messages, false).unwrap(), c.text, "case {i}");
        assert_eq!(enc.chat_ids(&c.messages, false).unwrap(), c.ids, "case {i}");
        tokens += c.ids.len();
        if let (Some(text), Some(ids)) = (&c.prompt_text, &c.prompt_ids) {
            let prompt = &c.messages[..c.messages.len() - 1];
            assert_eq!(&enc.render(prompt, true).unwrap(), text, "case {i}");
            assert_eq!(&enc.chat_ids(prompt, true).unwrap(), ids, "case {i}");
            tokens += ids.len();
        }
        if let (Some(text), Some(ids)) = (&c.generation_text, &c.generation_ids) {
            assert_eq!(&enc.render(&c.messages, true).unwrap(), text, "case {i}");
            let ex = enc
                .prompt(&PromptRecord {
                    prompt: Turns::Messages(c.messages.clone()),
                })
                .unwrap();
            assert_eq!(&ex.prompt_ids, ids, "case {i}");
            tokens += ids.len();
        }
    }
    eprintln!(
        "parity: {} conversations, {tokens} token ids identical to transformers",
        fx.conversations.len()
    );
}

#[test]
fn plain_text_ids_match_transformers() {
    let fx = fixture();
    let enc = common::smollm2(EncodeConfig::default());
    for t in &fx.texts {
        assert_eq!(
            enc.tokenizer().encode_raw(&t.text).unwrap(),
            t.ids,
            "{:?}",
            t.text
        );
        assert_eq!(
            enc.tokenizer().encode(&t.text, true).unwrap(),
            t.ids,
            "{:?}",
            t.text
        );
    }
}

/// The assistant-only masks agree with the fixture's (computed in character
/// space by the script) wherever the token boundary holds; where transformers'
/// own ids break the boundary (a response starting with whitespace that
/// merges into the generation prompt's newline), we reject the example
/// instead of training on a mask that has lost the response's first token.
#[test]
fn assistant_masks_match_token_for_token() {
    let fx = fixture();
    let enc = common::smollm2(EncodeConfig::default());
    let (mut matched, mut rejected, mut masked_tokens) = (0, 0, 0);
    for (i, c) in fx.conversations.iter().enumerate() {
        if !c
            .messages
            .iter()
            .any(|m| m.role == alignkit_datasets::Role::Assistant)
        {
            continue;
        }
        let boundary_holds = c.prompt_ids.as_ref().is_none_or(|p| c.ids.starts_with(p));
        let got = enc.sft(&SftRecord::Messages(c.messages.clone()));
        match got {
            Ok(ex) => {
                assert!(boundary_holds, "case {i}: accepted a broken boundary");
                assert_eq!(ex.tokens.input_ids, c.ids, "case {i}");
                assert_eq!(ex.tokens.loss_mask, c.assistant_mask, "case {i}");
                assert!(ex.has_eos, "case {i}");
                // Every trained span ends with <|im_end|>, and the newline after it is not trained.
                for j in 1..ex.tokens.len() {
                    if ex.tokens.loss_mask[j - 1] && !ex.tokens.loss_mask[j] {
                        assert_eq!(
                            ex.tokens.input_ids[j - 1],
                            fx.eos_token_id,
                            "case {i} token {j}"
                        );
                    }
                }
                matched += 1;
                masked_tokens += ex.tokens.trained();
            }
            Err(e) => {
                assert!(!boundary_holds, "case {i}: unexpected error {e}");
                let msg = e.to_string();
                assert!(msg.contains("not a token prefix"), "case {i}: {msg}");
                assert!(msg.contains("starts with whitespace"), "case {i}: {msg}");
                rejected += 1;
            }
        }
    }
    eprintln!(
        "parity: {matched} conversations with identical masks ({masked_tokens} trained tokens), {rejected} rejected for a broken token boundary"
    );
    assert!(matched >= 20);
    assert_eq!(rejected, 3);
}

#[test]
fn prompt_completion_boundary_matches_generation_prompt() {
    let fx = fixture();
    let enc = common::smollm2(EncodeConfig::default());
    for (i, c) in fx.conversations.iter().enumerate() {
        let Some(prompt_ids) = &c.prompt_ids else {
            continue;
        };
        if !c.ids.starts_with(prompt_ids) {
            continue;
        }
        let n = c.messages.len() - 1;
        let rec = SftRecord::PromptCompletion {
            prompt: Turns::Messages(c.messages[..n].to_vec()),
            completion: Turns::Messages(c.messages[n..].to_vec()),
        };
        let ex = enc.sft(&rec).unwrap();
        assert_eq!(ex.tokens.input_ids, c.ids, "case {i}");
        assert_eq!(ex.prompt_len, prompt_ids.len(), "case {i}");
        // Completion-only: the fixture's mask restricted to the last turn.
        let expected: Vec<bool> = c
            .assistant_mask
            .iter()
            .enumerate()
            .map(|(j, &m)| m && j >= prompt_ids.len())
            .collect();
        assert_eq!(ex.tokens.loss_mask, expected, "case {i}");
    }
}

/// A conversational preference completion is TRL's span by default:
/// everything the template renders after the prompt, i.e. the response,
/// `<|im_end|>` and ChatML's `\n` (198); `EndOfTurn` stops at `<|im_end|>`.
/// Truncation that cuts only the newline keeps the end-of-turn token.
#[test]
fn preference_completion_ends_where_trl_ends_it() {
    use alignkit_datasets::{CompletionEnd, Preference, Role, TruncationSide};
    const IM_END: u32 = 2;
    const NEWLINE: u32 = 198;
    let pair = Preference {
        prompt: Turns::Messages(vec![Message::new(
            Role::User,
            "What is the capital of France?",
        )]),
        chosen: Turns::Messages(vec![Message::new(Role::Assistant, "Paris.")]),
        rejected: Turns::Messages(vec![Message::new(Role::Assistant, "I do not know.")]),
        implicit_prompt: false,
    };
    let enc = common::smollm2(EncodeConfig::default());
    let ex = enc.preference(&pair).unwrap();
    // TRL: prompt+chosen rendered, minus the prompt rendered with the generation prompt.
    let whole = |c: &Turns| {
        let (Turns::Messages(p), Turns::Messages(c)) = (&pair.prompt, c) else {
            unreachable!()
        };
        enc.chat_ids(&[p.clone(), c.clone()].concat(), false)
            .unwrap()
    };
    assert_eq!(
        [ex.prompt_ids.clone(), ex.chosen_ids.clone()].concat(),
        whole(&pair.chosen)
    );
    assert_eq!(
        [ex.prompt_ids.clone(), ex.rejected_ids.clone()].concat(),
        whole(&pair.rejected)
    );
    assert!(ex.chosen_ids.ends_with(&[IM_END, NEWLINE]));
    assert!(ex.chosen_has_eos && ex.rejected_has_eos);

    let end_of_turn = common::smollm2(EncodeConfig {
        completion_end: CompletionEnd::EndOfTurn,
        ..Default::default()
    });
    let cut = end_of_turn.preference(&pair).unwrap();
    assert_eq!(cut.chosen_ids, ex.chosen_ids[..ex.chosen_ids.len() - 1]);
    assert!(cut.chosen_ids.ends_with(&[IM_END]) && cut.chosen_has_eos);

    // One token too long: only the newline goes, the end of turn stays.
    let short = |keep: usize| {
        common::smollm2(EncodeConfig {
            max_len: Some(ex.prompt_ids.len() + keep),
            truncation: TruncationSide::KeepStart,
            ..Default::default()
        })
        .preference(&pair)
        .unwrap()
    };
    let n = ex.chosen_ids.len();
    let one = short(n - 1);
    assert!(one.chosen_ids.ends_with(&[IM_END]) && one.chosen_has_eos);
    assert!(!one.chosen_truncation.eos_dropped && one.chosen_truncation.completion_dropped == 1);
    let two = short(n - 2);
    assert!(two.chosen_truncation.eos_dropped && !two.chosen_has_eos);
}
