//! Parity with transformers and TRL's `RewardTrainer` (fixture from
//! scripts/fixtures_trl.py): a tiny reward model saved as alignkit exports
//! one (`pad_token_id` = the tokenizer's pad token `<|im_end|>`) scores every
//! record under `score` as transformers scores it — conversations rendered
//! whole and read at the trailing `\n`, strings read before their EOS (which
//! is also the pad token) — and one training step logs TRL's numbers, except
//! that alignkit's gradient includes the `<|im_end|>` embedding row that
//! transformers' `padding_idx` leaves out.

use std::path::{Path, PathBuf};

use alignkit_datasets::CompletionEnd;
use alignkit_model::heads::load_reward_model;
use alignkit_reward::{Event, RewardConfig, RewardMetrics, RunOptions, Score, score, train};
use alignkit_train::ScheduleKind;
use burn::backend::{Autodiff, Flex};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward-trl")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// f32 noise of two independent forward (and backward) passes: measured at
/// most 3.2e-7 relative.
fn assert_close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * (1.0 + want.abs());
    assert!(
        (got - want).abs() <= tol,
        "{what}: alignkit {got} vs transformers/TRL {want}"
    );
}

/// Each sequence's reward, in file order (a pair gives chosen, rejected),
/// records-pairs.jsonl first.
fn rewards(completion_end: CompletionEnd, batch_size: usize) -> Vec<f64> {
    let dir = fixture().join("model");
    let device = Default::default();
    let (_, model) = load_reward_model::<Flex>(&dir, &device).unwrap();
    let mut out = Vec::new();
    for file in ["records-pairs.jsonl", "records-completions.jsonl"] {
        let data = fixture().join(file);
        let scored = score(
            &model,
            &dir,
            &data,
            batch_size,
            256,
            completion_end,
            &device,
        )
        .unwrap();
        for r in scored {
            match r.score {
                Score::Single(s) => out.push(s as f64),
                Score::Pair { chosen, rejected } => out.extend([chosen as f64, rejected as f64]),
            }
        }
    }
    out
}

#[test]
fn scores_equal_transformers_on_chat_and_string_records() {
    let exp = expected();
    let sequences = exp["sequences"].as_array().unwrap();
    for batch_size in [1, 3] {
        let got = rewards(CompletionEnd::Template, batch_size);
        assert_eq!(got.len(), sequences.len());
        for (g, s) in got.iter().zip(sequences) {
            let what = format!("{} record {}, batch {batch_size}", s["file"], s["record"]);
            assert_close(*g, s["score"].as_f64().unwrap(), &what);
            assert_close(*g, s["score_padded"].as_f64().unwrap(), &what);
        }
    }
    // Cut at the end-of-turn token, a conversation is read elsewhere (before
    // `<|im_end|>`, the pad token): the option is not transformers' reading.
    let cut = rewards(CompletionEnd::EndOfTurn, 3);
    let chat = sequences[0]["score"].as_f64().unwrap();
    assert!((cut[0] - chat).abs() > 1e-3, "{} vs {chat}", cut[0]);
}

fn config(data: &str, out: &Path) -> RewardConfig {
    let mut c = RewardConfig {
        model: fixture().join("model"),
        output_dir: out.to_path_buf(),
        learning_rate: 1e-3,
        ..Default::default()
    };
    c.data.train_file = fixture().join(format!("prefs-{data}.jsonl"));
    c.data.max_len = 256;
    c.train.batch_size = 4;
    c.train.max_steps = 1;
    c.train.max_grad_norm = 1.0;
    c.schedule.kind = ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}

#[test]
fn a_training_step_logs_trl_reward_trainer_numbers() {
    let exp = expected();
    for case in exp["train"].as_array().unwrap() {
        let data = case["data"].as_str().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut steps: Vec<RewardMetrics> = Vec::new();
        let c = config(data, &root.path().join("run"));
        train::<Autodiff<Flex>>(&c, &Default::default(), RunOptions::default(), &mut |e| {
            if let Event::Step(m) = e {
                steps.push(m.clone());
            }
        })
        .unwrap();
        assert_eq!(steps.len(), 1);
        let got = serde_json::to_value(&steps[0]).unwrap();
        let want = &case["metrics"];
        for key in [
            "loss",
            "learning_rate",
            "num_tokens",
            "epoch",
            "accuracy",
            "margin",
            "min_reward",
            "mean_reward",
            "max_reward",
        ] {
            let what = format!("{data}: {key}");
            assert_close(
                got[key].as_f64().unwrap(),
                want[key].as_f64().unwrap(),
                &what,
            );
        }
        // The true gradient, not transformers' with the pad token's embedding row zeroed.
        let true_norm = case["grad_norm_true"].as_f64().unwrap();
        assert_close(
            got["grad_norm"].as_f64().unwrap(),
            true_norm,
            &format!("{data}: grad_norm"),
        );
        if data == "chat" {
            // `<|im_end|>` is an input before the read position only in
            // conversations; there TRL's norm lacks its row.
            let trl = want["grad_norm"].as_f64().unwrap();
            assert!((trl - true_norm).abs() > 1e-4, "{trl} vs {true_norm}");
        }
    }
}
