//! `alignkit reward score` on a tiny reward model: one JSON line per record,
//! the same numbers as the library's `score`, and a clean error for bad input.

use std::path::Path;

use alignkit_datasets::CompletionEnd;
use alignkit_model::SaveDtype;
use alignkit_model::heads::{load_reward_model, reward_model_from_causal_lm, save_reward_model};
use alignkit_reward::{Score, score};
use burn::backend::Flex;

mod common;
use common::{alignkit, ok, refused, tiny_model};

fn reward_dir(root: &Path) -> std::path::PathBuf {
    let lm = tiny_model(&root.join("lm"));
    let device = Default::default();
    let (config, rm) = reward_model_from_causal_lm::<Flex>(&lm, &device).unwrap();
    let dir = root.join("rm");
    save_reward_model(&rm, &config, &dir, SaveDtype::F32).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(lm.join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn scores_every_record_like_the_library() {
    let root = tempfile::tempdir().unwrap();
    let rm = reward_dir(root.path());
    let data = root.path().join("prefs.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt": "sea?", "chosen": "blue.", "rejected": "blue. the sea is big."}"#,
            "\n",
            r#"{"prompt": "sky?", "chosen": "grey.", "rejected": "it is grey today."}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = root.path().join("scores.jsonl");
    ok(&alignkit([
        "reward",
        "score",
        "--model",
        rm.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);

    let device = Default::default();
    let (_, model) = load_reward_model::<Flex>(&rm, &device).unwrap();
    let expected = score(
        &model,
        &rm,
        &data,
        8,
        2048,
        CompletionEnd::Template,
        &device,
    )
    .unwrap();
    match expected[0].score {
        Score::Pair { chosen, rejected } => {
            assert_eq!(lines[0]["line"], 1);
            assert!((lines[0]["chosen"].as_f64().unwrap() - chosen as f64).abs() < 1e-6);
            assert!((lines[0]["rejected"].as_f64().unwrap() - rejected as f64).abs() < 1e-6);
        }
        ref other => panic!("expected a pair, got {other:?}"),
    }
    match expected[1].score {
        Score::Pair { chosen, .. } => {
            assert_eq!(lines[1]["line"], 2);
            assert!((lines[1]["chosen"].as_f64().unwrap() - chosen as f64).abs() < 1e-6);
            let margin =
                lines[1]["chosen"].as_f64().unwrap() - lines[1]["rejected"].as_f64().unwrap();
            assert!((lines[1]["margin"].as_f64().unwrap() - margin).abs() < 1e-5);
        }
        ref other => panic!("expected a pair, got {other:?}"),
    }
}

#[test]
fn missing_reward_model_is_a_one_line_error() {
    let stderr = refused(&alignkit([
        "reward",
        "score",
        "--model",
        "/nonexistent/rm",
        "--data",
        "/nonexistent/d.jsonl",
    ]));
    assert!(stderr.contains("/nonexistent/rm"), "{stderr}");
}
