//! Chat templates of the model families, rendered as transformers renders
//! them (fixtures from scripts/fixtures_chat_templates.py: the family's
//! published template and `render_jinja_template`'s text for each
//! conversation, generation prompt and template variables), and the
//! assistant-only loss mask under each.

mod common;

use std::path::{Path, PathBuf};

use alignkit_datasets::schema::Message;
use alignkit_datasets::{
    ChatTemplate, EncodeConfig, Encoder, SftRecord, TemplateKwargs, TokenizerConfig,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn template(family: &str) -> String {
    std::fs::read_to_string(fixtures().join(format!("{family}.jinja"))).unwrap()
}

#[test]
fn qwen3_renders_as_transformers_with_and_without_thinking() {
    let source = template("qwen3");
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("qwen3.expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 24);
    let mut thinking_off = 0;
    for (i, case) in cases.iter().enumerate() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let kwargs: TemplateKwargs = serde_json::from_value(case["kwargs"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let t = ChatTemplate::new(&source, &TokenizerConfig::default(), &kwargs).unwrap();
        let got = t.render(&messages, agp).unwrap();
        assert_eq!(got, case["text"].as_str().unwrap(), "case {i}: {case}");
        if agp && kwargs.get("enable_thinking") == Some(&Value::Bool(false)) {
            assert!(
                got.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
                "{got:?}"
            );
            thinking_off += 1;
        }
    }
    assert_eq!(thinking_off, 4);
}

/// A variable the renderer sets itself is a one-line error.
#[test]
fn template_variables_cannot_replace_the_renderers_own() {
    let kwargs: TemplateKwargs = [("messages".to_string(), Value::Bool(true))].into();
    let err = ChatTemplate::new(&template("qwen3"), &TokenizerConfig::default(), &kwargs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat_template_kwargs.messages"), "{err}");
}

/// Under Qwen3's template (on SmolLM2's ChatML tokenizer), the trained
/// tokens of a one-turn conversation are exactly what the template renders
/// for the assistant, its (empty) think block included, through
/// `<|im_end|>`. (With `enable_thinking = false` the generation prompt ends
/// in "</think>\n\n", which SmolLM2's pre-tokenizer splits differently
/// before the reply's first character ("\n" + "\n1") than at the end of the
/// prompt: a boundary Qwen's own tokenizer, whose pattern keeps "\n\n"
/// together, does not have.) A multi-turn conversation is refused in one line: Qwen3's
/// template renders an earlier assistant turn differently once a later user
/// turn follows (it drops the think block), so no prefix of the conversation
/// marks where that turn starts (TRL's assistant-only loss needs the
/// `{% generation %}` tags Qwen3's template lacks, for the same reason).
#[test]
fn qwen3_assistant_masks_cover_exactly_the_assistant_turn() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::smollm2_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("chat_template.jinja"), template("qwen3")).unwrap();
    let conversation = |json: &str| -> SftRecord {
        SftRecord::Messages(serde_json::from_str::<Vec<Message>>(json).unwrap())
    };
    let (kwargs, want) = (
        TemplateKwargs::new(),
        "<think>\n\n</think>\n\n1, 2, 3.<|im_end|>",
    );
    let enc = Encoder::from_dir(
        dir.path(),
        EncodeConfig {
            template_kwargs: kwargs,
            ..EncodeConfig::default()
        },
    )
    .unwrap();
    let one = conversation(
        r#"[{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Count to 3."},
            {"role": "assistant", "content": "1, 2, 3."}]"#,
    );
    let tokens = enc.sft(&one).unwrap().tokens;
    let first = tokens.loss_mask.iter().position(|&m| m).unwrap();
    let last = tokens.loss_mask.iter().rposition(|&m| m).unwrap();
    assert!(
        tokens.loss_mask[first..=last].iter().all(|&m| m),
        "one trained run"
    );
    let trained = enc
        .tokenizer()
        .decode(&tokens.input_ids[first..=last], false)
        .unwrap();
    assert_eq!(trained, want);
    let prompt = enc
        .tokenizer()
        .decode(&tokens.input_ids[..first], false)
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");

    let two = conversation(
        r#"[{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Count to 3."},
            {"role": "assistant", "content": "1, 2, 3."}]"#,
    );
    let err = enc.sft(&two).unwrap_err().to_string();
    assert!(err.contains("renders earlier turns differently"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// TRL's assistant-only Qwen2.5 template marks the assistant's text with
/// `{% generation %}` blocks: it renders as transformers does (the blocks'
/// whitespace control included), and the trained tokens of every
/// conversation equal transformers'
/// `apply_chat_template(return_assistant_tokens_mask=True)` mask, token for
/// token, multi-turn included.
#[test]
fn generation_blocks_give_transformers_assistant_masks() {
    let name = "qwen2.5-assistant-only";
    let source = template(name);
    let read = |file: String| -> Vec<Value> {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap()
    };
    let t =
        ChatTemplate::new(&source, &TokenizerConfig::default(), &TemplateKwargs::new()).unwrap();
    assert!(t.tracks_generation());
    for case in read(format!("{name}.expected.json")) {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let text = t.render(&messages, agp).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{case}");
        if !agp {
            let (tracked, _) = t.render_tracked(&messages).unwrap().unwrap();
            assert_eq!(tracked, text);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::smollm2_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("chat_template.jinja"), &source).unwrap();
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    let cases = read(format!("{name}.masks.json"));
    assert_eq!(cases.len(), 3);
    for case in cases {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let ex = enc.sft(&SftRecord::Messages(messages)).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let mask: Vec<bool> = (case["assistant_masks"].as_array().unwrap().iter())
            .map(|m| m.as_u64() == Some(1))
            .collect();
        assert_eq!(ex.tokens.input_ids, ids, "{case}");
        assert_eq!(ex.tokens.loss_mask, mask, "{case}");
    }
}
