//! Parity with TRL's own `DPOTrainer`, not only its formulas (fixture from
//! scripts/fixtures_trl.py, TRL 1.16): one full fine-tuning step of the tiny
//! policy of `dpo-tiny` against its (different) reference, on 4 pairs, for
//! the sigmoid, IPO and hinge losses, on conversational and plain-string
//! data. alignkit tokenizes every pair as TRL does (for conversations the
//! completion is everything the chat template renders after the prompt,
//! ChatML's trailing newline included) and logs the same numbers.

use std::path::{Path, PathBuf};

use alignkit_datasets::{CompletionEnd, FieldMap};
use alignkit_dpo::{DpoConfig, DpoLoss, DpoMetrics, Event, RunOptions, data, train};
use alignkit_train::ScheduleKind;
use burn::backend::{Autodiff, Flex};
use serde_json::Value;

type AB = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("dpo-trl/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `dpo-tiny/<name>` (weights, config) with the fixture's tokenizer, as a
/// model directory under `root`.
fn model_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for from in [
        fixtures().join("dpo-tiny").join(name),
        fixtures().join("dpo-trl/tokenizer"),
    ] {
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// TRL's settings of the fixture's run.
fn config(root: &Path, data: &str, loss: DpoLoss, exp: &Value) -> DpoConfig {
    let mut c = DpoConfig {
        model: model_dir(root, "policy"),
        ref_model: Some(model_dir(root, "reference")),
        output_dir: root.join("run"),
        learning_rate: exp["learning_rate"].as_f64().unwrap(),
        loss_type: loss,
        beta: exp["beta"].as_f64().unwrap(),
        ..Default::default()
    };
    c.data.train_file = fixtures().join(format!("dpo-trl/prefs-{data}.jsonl"));
    c.data.max_len = 256;
    c.data.max_prompt_len = 192;
    c.train.batch_size = 4;
    c.train.max_steps = 1;
    c.train.max_grad_norm = 1.0;
    c.schedule.kind = ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// alignkit's first-step metrics under TRL's names.
fn first_step(c: &DpoConfig) -> Value {
    let mut steps: Vec<DpoMetrics> = Vec::new();
    train::<AB>(c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Step(m) = e {
            steps.push(m.clone());
        }
    })
    .unwrap();
    assert_eq!(steps.len(), 1);
    serde_json::to_value(&steps[0]).unwrap()
}

/// Every metric TRL logs that alignkit logs too. (TRL also logs `entropy`
/// and `mean_token_accuracy`, which alignkit's DPO does not.)
const METRICS: [&str; 13] = [
    "loss",
    "grad_norm",
    "learning_rate",
    "num_tokens",
    "epoch",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
];

/// f32 noise: measured at most 1.2e-5 on log-prob sums of ~100 and 1.1e-6
/// on rewards of ~0.1 (the gap a one-token span error opens is ~5 on the
/// sums).
fn assert_close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * (1.0 + want.abs());
    assert!(
        (got - want).abs() <= tol,
        "{what}: alignkit {got} vs TRL {want}"
    );
}

#[test]
fn tokenization_and_every_logged_metric_match_trl_dpo_trainer() {
    let exp = expected();
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let data = case["data"].as_str().unwrap();
        let loss: DpoLoss = serde_json::from_value(case["loss_type"].clone()).unwrap();
        let what = format!("{data} {}", loss.as_str());
        let root = tempfile::tempdir().unwrap();
        let c = config(root.path(), data, loss, &exp);

        let encoder = data::encoder(&c).unwrap();
        let pairs = encoder
            .encode_preference_file(&c.data.train_file, &FieldMap::default())
            .unwrap();
        for (pair, want) in pairs.iter().zip(case["pairs"].as_array().unwrap()) {
            let ex = &pair.example;
            assert_eq!(ex.prompt_ids, ids(&want["prompt_ids"]), "{what}: prompt");
            assert_eq!(ex.chosen_ids, ids(&want["chosen_ids"]), "{what}: chosen");
            assert_eq!(
                ex.rejected_ids,
                ids(&want["rejected_ids"]),
                "{what}: rejected"
            );
        }

        let got = first_step(&c);
        for key in METRICS {
            let want = case["metrics"][key].as_f64().unwrap();
            assert_close(got[key].as_f64().unwrap(), want, &format!("{what}: {key}"));
        }
    }
}

/// The fixture tells the spans apart: stopping conversations at
/// `<|im_end|>` (the option) drops one token per sequence, and the
/// log-probs no longer match TRL's.
#[test]
fn end_of_turn_span_is_one_token_short_of_trl() {
    let exp = expected();
    let case = &exp["cases"][0];
    assert_eq!(
        (case["data"].as_str(), case["loss_type"].as_str()),
        (Some("chat"), Some("sigmoid"))
    );
    let root = tempfile::tempdir().unwrap();
    let mut c = config(root.path(), "chat", DpoLoss::Sigmoid, &exp);
    c.data.completion_end = CompletionEnd::EndOfTurn;
    let encoder = data::encoder(&c).unwrap();
    let pairs = encoder
        .encode_preference_file(&c.data.train_file, &FieldMap::default())
        .unwrap();
    for (pair, want) in pairs.iter().zip(case["pairs"].as_array().unwrap()) {
        let trl = ids(&want["chosen_ids"]);
        assert_eq!(
            pair.example.chosen_ids,
            trl[..trl.len() - 1],
            "TRL's span ends with the newline"
        );
    }
    let got = first_step(&c);
    let (g, w) = (
        got["logps/chosen"].as_f64().unwrap(),
        case["metrics"]["logps/chosen"].as_f64().unwrap(),
    );
    assert!(
        (g - w).abs() > 1e-3 * w.abs(),
        "logps/chosen {g} vs TRL {w}"
    );
}
