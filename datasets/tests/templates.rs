//! Chat templates of the model families, rendered as transformers renders
//! them (fixtures from scripts/fixtures_chat_templates.py: the family's
//! published template and `render_jinja_template`'s text for each
//! conversation, generation prompt and template variables), and the
//! assistant-only loss mask under each.

mod common;

use std::path::{Path, PathBuf};

use alignkit_datasets::schema::Message;
use alignkit_datasets::{
    ChatTemplate, EncodeConfig, Encoder, SftRecord, TemplateKwargs, TokenizerConfig, Tools,
};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

fn template(family: &str) -> String {
    std::fs::read_to_string(fixtures().join(format!("{family}.jinja"))).unwrap()
}

fn read_cases(file: &str) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap()
}

/// One rendered case of `<family>.expected.json`: what alignkit renders
/// with the case's special tokens, template variables, tools and pinned
/// clock, or the error it gives.
fn render_case(source: &str, case: &Value) -> (Vec<Message>, bool, Result<String, String>) {
    let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    let kwargs: TemplateKwargs = serde_json::from_value(case["kwargs"].clone()).unwrap();
    let agp = case["add_generation_prompt"].as_bool().unwrap();
    let special = |name: &str| case["special_tokens"][name].as_str().map(str::to_owned);
    let config = TokenizerConfig {
        bos_token: special("bos_token"),
        eos_token: special("eos_token"),
        pad_token: special("pad_token"),
        unk_token: special("unk_token"),
        ..Default::default()
    };
    let mut t = ChatTemplate::new(source, &config, &kwargs).unwrap();
    if let Some(at) = case["strftime_now_at"].as_i64() {
        t = t.with_clock(at);
    }
    let got = match case["tools"].as_str() {
        Some(json) => t.render_with_tools(&messages, agp, &Tools::from_json(json).unwrap()),
        None => t.render(&messages, agp),
    };
    (messages, agp, got.map_err(|e| e.to_string()))
}

/// Every case of `<family>.expected.json` renders byte for byte as
/// transformers rendered it, or fails where the template raised, with the
/// template's message in one line. Returns the cases with their text.
fn renders_as_transformers(family: &str, cases: usize, errors: usize) -> Vec<(Value, String)> {
    let source = template(family);
    let expected = read_cases(&format!("{family}.expected.json"));
    assert_eq!(expected.len(), cases, "{family}: cases");
    let mut rendered = Vec::new();
    let mut raised = 0;
    for (i, case) in expected.into_iter().enumerate() {
        let (_, _, got) = render_case(&source, &case);
        match (got, case["text"].as_str(), case["error"].as_str()) {
            (Ok(text), Some(want), None) => {
                assert_eq!(text, want, "{family} case {i}: {case}");
                rendered.push((case, text));
            }
            (Err(err), None, Some(message)) => {
                assert!(err.contains(message), "{family} case {i}: {err}");
                assert!(err.starts_with("chat template error: "), "{err}");
                assert_eq!(err.lines().count(), 1, "{err}");
                raised += 1;
            }
            (got, _, _) => panic!("{family} case {i}: got {got:?}, want {case}"),
        }
    }
    assert_eq!(raised, errors, "{family}: errors");
    rendered
}

#[test]
fn qwen3_renders_as_transformers_with_thinking_modes_and_tools() {
    let rendered = renders_as_transformers("qwen3", 30, 0);
    let mut thinking_off = 0;
    for (case, got) in &rendered {
        let kwargs = &case["kwargs"];
        if case["add_generation_prompt"] == true && kwargs["enable_thinking"] == false {
            assert!(
                got.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
                "{got:?}"
            );
            thinking_off += 1;
        }
        if case["tools"].is_string() {
            assert!(got.contains("<tools>\n{\"type\": \"function\""), "{got}");
            assert!(
                got.contains("<tool_response>\n{\"temperature\": 21}\n</tool_response>"),
                "{got}"
            );
        }
    }
    assert_eq!(thinking_off, 5);
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

/// Gemma 3 (google/gemma-3-1b-it): BOS first, the system message folded
/// into the first user turn (as written, then "\n\n"), `model` for the
/// assistant, turn contents trimmed; a conversation whose roles do not alternate user/assistant is
/// the template's `raise_exception`, an error naming its message.
#[test]
fn gemma3_renders_as_transformers_and_its_role_rule_is_an_error() {
    let rendered = renders_as_transformers("gemma3", 14, 4);
    let folded = rendered
        .iter()
        .find(|(case, _)| case["messages"][0]["content"] == "  Answer in French.  ")
        .map(|(_, text)| text.as_str())
        .unwrap();
    assert!(
        folded
            .starts_with("<bos><start_of_turn>user\n  Answer in French.  \n\nHello<end_of_turn>\n"),
        "{folded:?}"
    );
    let err = ChatTemplate::new(
        &template("gemma3"),
        &TokenizerConfig::default(),
        &TemplateKwargs::new(),
    )
    .unwrap()
    .render(
        &serde_json::from_value::<Vec<Message>>(json!([
            {"role": "user", "content": "One"}, {"role": "user", "content": "Two"}
        ]))
        .unwrap(),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{err}"
    );
}

/// SmolLM3 (HuggingFaceTB/SmolLM3-3B): the metadata system block with the
/// date `strftime_now` gives (pinned as the fixture pinned transformers'),
/// the reasoning mode from `enable_thinking` or a `/think` / `/no_think`
/// system prompt, the empty think block of `/no_think` turns, `tools=[...]`
/// listed as Python prints a dict, `xml_tools` / `python_tools` template
/// variables, tool results as user turns.
#[test]
fn smollm3_renders_as_transformers_with_thinking_modes_tools_and_a_pinned_date() {
    let rendered = renders_as_transformers("smollm3", 54, 0);
    let mut no_think_prompts = 0;
    for (case, text) in &rendered {
        assert!(
            text.starts_with("<|im_start|>system\n") && !text.contains("/no_think Be"),
            "{text:?}"
        );
        if case["messages"][0]["content"].as_str() == Some("Custom system. /system_override") {
            assert!(!text.contains("## Metadata"), "{text:?}");
            continue;
        }
        assert!(text.contains("Today Date: 10 July 2025\n"), "{text:?}");
        // A /no_think or /think system prompt wins over enable_thinking.
        let system = case["messages"][0]["content"].as_str().unwrap_or("");
        let off = match (system.contains("/no_think"), system.contains("/think")) {
            (true, _) => true,
            (false, true) => false,
            _ => case["kwargs"]["enable_thinking"] == json!(false),
        };
        assert_eq!(
            text.contains("Reasoning Mode: /no_think\n"),
            off,
            "{text:?}"
        );
        if off && case["add_generation_prompt"] == json!(true) {
            assert!(text.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n"));
            no_think_prompts += 1;
        }
        if case["tools"].is_string() {
            assert!(
                text.contains(r#"'description': "Today's weather in a city, in °C.""#)
                    && text.contains("'additionalProperties': False}"),
                "{text:?}"
            );
        }
    }
    // enable_thinking=false in 7 of the 9 conversations (not under the
    // /think or /system_override prompts), and the /no_think prompt under
    // the other two settings.
    assert_eq!(no_think_prompts, 7 + 2);
}

/// OLMo 2 (allenai/OLMo-2-1124-7B-Instruct): BOS first, `<|user|>` /
/// `<|assistant|>` headers, EOS closing each assistant turn (and a newline
/// after it unless the turn is the last), tool turns left out.
#[test]
fn olmo2_renders_as_transformers() {
    let rendered = renders_as_transformers("olmo2", 10, 0);
    assert!(
        rendered
            .iter()
            .all(|(_, t)| t.starts_with("<|endoftext|><|"))
    );
    assert!(
        rendered
            .iter()
            .any(|(_, t)| t.contains("Hello!<|endoftext|>\n<|user|>"))
    );
}

/// Phi-3 (microsoft/Phi-3.5-mini-instruct): `<|end|>` closing every turn, an
/// empty system message left out, EOS closing a conversation rendered
/// without the generation prompt.
#[test]
fn phi3_renders_as_transformers() {
    let rendered = renders_as_transformers("phi3", 12, 0);
    for (case, text) in &rendered {
        let agp = case["add_generation_prompt"] == json!(true);
        assert_eq!(text.ends_with("<|end|>\n<|endoftext|>"), !agp, "{text:?}");
        if case["messages"][0]["role"] == "system" && case["messages"][0]["content"] == "" {
            assert!(text.starts_with("<|user|>\nHi<|end|>"), "{text:?}");
        }
    }
}

/// A copy of the SmolLM2 fixture tokenizer with the family's turn markers
/// added as special tokens, its tokenizer_config.json naming the special
/// tokens, and `template` as chat_template.jinja.
fn tokenizer_dir(template: &str, added: &[&str], config: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut tok =
        tokenizers::Tokenizer::from_file(common::smollm2_dir().join("tokenizer.json")).unwrap();
    let added: Vec<_> = (added.iter())
        .map(|t| tokenizers::AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(&added);
    tok.save(dir.path().join("tokenizer.json"), false).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
    dir
}

/// The decoded text of each maximal run of trained tokens.
fn trained_runs(enc: &Encoder, messages: Value) -> Vec<String> {
    let messages: Vec<Message> = serde_json::from_value(messages).unwrap();
    let tokens = enc.sft(&SftRecord::Messages(messages)).unwrap().tokens;
    let mut runs = Vec::new();
    let mut start = None;
    for (j, &m) in tokens.loss_mask.iter().chain([&false]).enumerate() {
        match (m, start) {
            (true, None) => start = Some(j),
            (false, Some(s)) => {
                let run = enc.tokenizer().decode(&tokens.input_ids[s..j], false);
                runs.push(run.unwrap());
                start = None;
            }
            _ => {}
        }
    }
    runs
}

fn two_turns(system: &str) -> Value {
    json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Count to 3."},
        {"role": "assistant", "content": "1, 2, 3."}
    ])
}

/// Under Gemma 3's template the trained tokens of a two-turn conversation
/// are each reply and its `<end_of_turn>`: not the `<start_of_turn>model\n`
/// header, not the newline after, not the user turns (with the system
/// message folded in).
#[test]
fn gemma3_assistant_masks_cover_each_reply_and_its_end_of_turn() {
    let dir = tokenizer_dir(
        &template("gemma3"),
        &["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        json!({"bos_token": "<bos>", "eos_token": "<eos>", "add_bos_token": true}),
    );
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        trained_runs(&enc, two_turns("Be brief.")),
        ["Hello!<end_of_turn>", "1, 2, 3.<end_of_turn>"]
    );
}

/// Under OLMo 2's template: each reply and the EOS closing it; the newline
/// the template puts after an earlier turn's EOS (and not after the last
/// one's) is not trained.
#[test]
fn olmo2_assistant_masks_cover_each_reply_and_its_eos() {
    let dir = tokenizer_dir(
        &template("olmo2"),
        &[],
        json!({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
    );
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        trained_runs(&enc, two_turns("Be brief.")),
        ["Hello!<|endoftext|>", "1, 2, 3.<|endoftext|>"]
    );
}

/// Under Phi-3's template: each reply and its `<|end|>`, and for the last
/// one the EOS the template closes the conversation with (TRL's Phi-3
/// training template trains it too). The conversation through the earlier
/// turn renders `...<|end|>\n<|endoftext|>` where the whole has
/// `...<|end|>\n<|user|>`: the two agree through the turn's end-of-turn
/// token, which is all its boundary needs.
#[test]
fn phi3_assistant_masks_cover_each_reply_and_its_end() {
    let dir = tokenizer_dir(
        &template("phi3"),
        &["<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        json!({"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
    );
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        trained_runs(&enc, two_turns("Be brief.")),
        ["Hello!<|end|>", "1, 2, 3.<|end|>\n<|endoftext|>"]
    );
}

/// SmolLM3's template marks each assistant turn with `{% generation %}`
/// (its `<|im_start|>assistant\n` header, the empty think block of
/// `/no_think` turns and the newline after `<|im_end|>` included): the
/// trained tokens equal transformers'
/// `apply_chat_template(return_assistant_tokens_mask=True)` mask token for
/// token, thinking on and off, multi-turn included (the date pinned on both
/// sides).
#[test]
fn smollm3_generation_blocks_give_transformers_assistant_masks() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(common::smollm2_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("chat_template.jinja"), template("smollm3")).unwrap();
    let cases = read_cases("smollm3.masks.json");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let kwargs: TemplateKwargs = serde_json::from_value(case["kwargs"].clone()).unwrap();
        let enc = Encoder::from_dir(
            dir.path(),
            EncodeConfig {
                template_kwargs: kwargs,
                ..EncodeConfig::default()
            },
        )
        .unwrap()
        .with_clock(case["strftime_now_at"].as_i64().unwrap());
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
