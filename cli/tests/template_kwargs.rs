//! `--chat-template-kwargs JSON` on the inference commands (`generate`,
//! `chat`, `logprobs`, `eval winrate|drift`), as `data validate` and a
//! config's `data.chat_template_kwargs` take it: the template renders the
//! prompt with the variables, on a tiny random model carrying Qwen3's
//! published template.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{alignkit, ok, refused, tiny_model};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny model whose chat template is Qwen3's (chat_template.jinja wins
/// over the tokenizer_config.json one).
fn qwen3_templated(dir: &Path) -> PathBuf {
    let model = tiny_model(dir);
    let template = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/tests/fixtures/templates/qwen3.jinja");
    std::fs::copy(template, model.join("chat_template.jinja")).unwrap();
    model
}

/// The prompt tokens `logprobs --chat` scores the completion after.
fn prompt_tokens(model: &Path, extra: &[&str]) -> (u64, Vec<String>) {
    let mut args = vec![
        "logprobs",
        "--model",
        s(model),
        "--prompt",
        "hi",
        "--completion",
        "ok",
        "--chat",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (stdout, _) = ok(&alignkit(args));
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
    let tokens = (out["tokens"].as_array().unwrap().iter())
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect();
    (out["prompt_tokens"].as_u64().unwrap(), tokens)
}

/// Qwen3's `enable_thinking=false` ends the generation prompt with an
/// empty think block: "<think>\n\n</think>\n\n", 19 more prompt tokens
/// under the tiny model's one-token-per-character vocabulary. The scored
/// completion is the same either way.
#[test]
fn a_template_variable_changes_the_rendered_prompt() {
    let root = tempfile::tempdir().unwrap();
    let model = qwen3_templated(&root.path().join("model"));
    let (plain, completion) = prompt_tokens(&model, &[]);
    let (thinking, same) = prompt_tokens(
        &model,
        &["--chat-template-kwargs", r#"{"enable_thinking": true}"#],
    );
    let (off, completion_off) = prompt_tokens(
        &model,
        &["--chat-template-kwargs", r#"{"enable_thinking": false}"#],
    );
    assert_eq!(thinking, plain, "enable_thinking defaults to true");
    assert_eq!(same, completion);
    assert_eq!(
        off,
        plain + "<think>\n\n</think>\n\n".chars().count() as u64
    );
    assert_eq!(completion_off, completion);

    // generate renders it too (README's form, on the tiny model), and a
    // candidates file records the variables its prompts were rendered with.
    ok(&alignkit([
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "Hi",
        "--chat",
        "--chat-template-kwargs",
        r#"{"enable_thinking": false}"#,
        "--max-new-tokens",
        "2",
    ]));
    let prompts = root.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let out = root.path().join("candidates.jsonl");
    ok(&alignkit([
        "generate",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
        "--chat",
        "--num-samples",
        "2",
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "2",
        "--chat-template-kwargs",
        r#"{"enable_thinking": false}"#,
    ]));
    let item: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        item["generation"]["chat_template_kwargs"],
        serde_json::json!({"enable_thinking": false})
    );
}

/// A value that is not a JSON object, or a variable the renderer sets
/// itself, is one line naming the flag or the variable, on every command.
#[test]
fn bad_template_variables_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let model = qwen3_templated(&root.path().join("model"));
    let prompts = root.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let commands: [Vec<&str>; 4] = [
        vec!["generate", "--model", s(&model), "--prompt", "hi", "--chat"],
        vec!["chat", "--model", s(&model)],
        vec![
            "logprobs",
            "--model",
            s(&model),
            "--prompt",
            "hi",
            "--completion",
            "ok",
        ],
        vec![
            "eval",
            "drift",
            "--policy",
            s(&model),
            "--reference",
            s(&model),
            "--prompts",
            s(&prompts),
        ],
    ];
    for command in commands {
        let mut args = command.clone();
        args.extend(["--chat-template-kwargs", "[1]"]);
        let err = refused(&alignkit(&args));
        assert!(
            err.contains("--chat-template-kwargs [1]: expected a JSON object"),
            "{command:?}: {err}"
        );
        let mut args = command.clone();
        args.extend(["--chat-template-kwargs", r#"{"messages": []}"#]);
        let err = refused(&alignkit(&args));
        assert!(
            err.contains("chat_template_kwargs.messages: the renderer sets `messages` itself"),
            "{command:?}: {err}"
        );
    }
}
