//! End-to-end reward-model training on a tiny random model: preferences are
//! learned (full and LoRA), the export loads as a sequence classifier and
//! scores files, resume reproduces an uninterrupted run, and bad data fails
//! before any work.

mod common;

use alignkit_datasets::CompletionEnd;
use alignkit_model::heads::load_reward_model;
use alignkit_model::lora::LoraConfig;
use alignkit_reward::{
    Event, RewardConfig, RewardOutcome, RunOptions, Score, StopReason, score, train,
};
use common::*;

fn run(c: &RewardConfig) -> RewardOutcome {
    train::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap()
}

fn setup() -> (tempfile::TempDir, RewardConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    let data = tmp.path().join("prefs.jsonl");
    write_prefs(&data, &PREFS);
    let c = config(&model, &data, &tmp.path().join("run"));
    (tmp, c)
}

#[test]
fn a_reward_model_learns_the_preferences_and_exports_a_classifier() {
    let (_tmp, mut c) = setup();
    c.train.max_steps = 30;
    c.center_rewards_coefficient = Some(0.01);
    let out = run(&c);
    assert_eq!(out.stop, StopReason::Completed);

    let m = metrics(&c.output_dir);
    assert_eq!(m.len(), 30);
    for key in [
        "loss",
        "accuracy",
        "margin",
        "min_reward",
        "mean_reward",
        "max_reward",
        "learning_rate",
        "grad_norm",
        "num_tokens",
        "epoch",
    ] {
        assert!(m[0].get(key).is_some(), "metrics lack `{key}`: {}", m[0]);
    }
    let loss = series(&c.output_dir, "loss");
    assert!(loss[29] < 0.2 * loss[0], "{loss:?}");
    assert_eq!(m[29]["accuracy"].as_f64().unwrap(), 1.0, "{}", m[29]);
    assert!(m[29]["margin"].as_f64().unwrap() > 2.0, "{}", m[29]);
    let (min, mean, max) = (
        m[29]["min_reward"].as_f64().unwrap(),
        m[29]["mean_reward"].as_f64().unwrap(),
        m[29]["max_reward"].as_f64().unwrap(),
    );
    assert!(min < mean && mean < max, "{}", m[29]);

    // final/ is a LlamaForSequenceClassification directory with the tokenizer.
    let final_dir = out.final_dir.unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(final_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(
        (json["num_labels"].as_u64(), json["pad_token_id"].as_u64()),
        (Some(1), Some(2))
    );
    let device = Default::default();
    let (_, rm) = load_reward_model::<B>(&final_dir, &device).unwrap();

    // Scoring the training file with the export: chosen above rejected everywhere.
    let scores = score(
        &rm,
        &final_dir,
        &c.data.train_file,
        4,
        64,
        CompletionEnd::Template,
        &device,
    )
    .unwrap();
    assert_eq!(scores.len(), PREFS.len());
    for s in &scores {
        match s.score {
            Score::Pair { chosen, rejected } => assert!(chosen > rejected, "{s:?}"),
            Score::Single(_) => panic!("a preference file scores pairs"),
        }
    }
    // A completions file gets one reward per record, the same as the pair's side.
    let single = c.output_dir.join("answers.jsonl");
    std::fs::write(
        &single,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"sky?\"},{\"role\":\"assistant\",\"content\":\"blue, thanks\"}]}\n",
    )
    .unwrap();
    let one = score(
        &rm,
        &final_dir,
        &single,
        4,
        64,
        CompletionEnd::Template,
        &device,
    )
    .unwrap();
    let (Score::Single(r), Score::Pair { chosen, .. }) = (&one[0].score, &scores[0].score) else {
        panic!("{one:?}");
    };
    assert!((r - chosen).abs() < 1e-5, "{r} vs {chosen}");
}

#[test]
fn lora_reward_model_trains_adapters_and_head() {
    let (tmp, mut c) = setup();
    c.lora = Some(LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    });
    c.learning_rate = 2e-2;
    c.train.max_steps = 20;
    let mut trainable = 0;
    let out = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Started(info) = e {
            trainable = info.trainable_params;
        }
    })
    .unwrap();
    // Adapters on 7 projections × 2 layers (r = 4) plus the head [1, 32].
    let config = tiny_config();
    let (c_, h, f, kv) = (32, 32, 64, 16);
    let per_layer = 4 * (c_ + h) // q_proj
        + 4 * (c_ + kv) * 2 // k_proj, v_proj
        + 4 * (h + c_) // o_proj
        + 4 * (c_ + f) * 2 // gate_proj, up_proj
        + 4 * (f + c_); // down_proj
    assert_eq!(
        trainable,
        per_layer * config.num_hidden_layers + config.hidden_size
    );
    let m = metrics(&c.output_dir);
    assert_eq!(m[19]["accuracy"].as_f64().unwrap(), 1.0, "{}", m[19]);
    // The merged export loads and still ranks every pair right.
    let device = Default::default();
    let final_dir = out.final_dir.unwrap();
    let (_, rm) = load_reward_model::<B>(&final_dir, &device).unwrap();
    let scores = score(
        &rm,
        &final_dir,
        &c.data.train_file,
        4,
        64,
        CompletionEnd::Template,
        &device,
    )
    .unwrap();
    assert!(
        scores
            .iter()
            .all(|s| matches!(s.score, Score::Pair { chosen, rejected } if chosen > rejected))
    );
    drop(tmp);
}

/// A kill -9 during training (after the checkpoint of step 2) and one during
/// the write of the checkpoint of step 4: the resumed run's losses and final
/// weights (backbone and head) equal the uninterrupted run's bit for bit,
/// full and LoRA.
#[test]
fn a_killed_run_resumes_bit_for_bit() {
    for lora in [false, true] {
        let (tmp, mut c) = setup();
        c.train.max_steps = 6;
        c.train.save_steps = 2;
        c.train.grad_accum = 2;
        c.train.batch_size = 2;
        if lora {
            c.lora = Some(LoraConfig {
                r: 2,
                ..LoraConfig::default()
            });
        }
        assert_resumes_bit_for_bit(
            tmp.path(),
            KilledRun {
                kill_at: 3,
                resumed_from: 2,
                partial_at: Some(4),
                keys: &["loss", "grad_norm", "margin", "mean_reward"],
            },
            &mut |out, options, step| {
                let mut c = c.clone();
                c.output_dir = out.to_path_buf();
                train::<AB>(&c, &Default::default(), options, &mut |e| {
                    if let Event::Step(m) = e {
                        step(m.step);
                    }
                })
                .unwrap()
            },
        );
    }
}

/// The resume contract: the seed, the batch size, a loss coefficient or the
/// data's content refuse in one line naming each key; a moved run directory
/// with a raised `max_steps` continues, and the change is recorded.
#[test]
fn resume_refuses_what_changes_the_run_and_accepts_bookkeeping() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 2;
    c.train.save_steps = 1;
    run(&c);
    let try_resume = |c: &RewardConfig| {
        train::<AB>(c, &Default::default(), RunOptions::RESUME, &mut |_| {})
            .map(|o| o.steps)
            .map_err(|e| e.to_string())
    };

    let mut changed = c.clone();
    changed.train.seed = 7;
    changed.train.batch_size = 4;
    let err = try_resume(&changed).unwrap_err();
    assert!(
        err.contains(
            "cannot resume: 2 settings changed (train.batch_size 3 → 4; train.seed 42 → 7)"
        ),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    let mut changed = c.clone();
    changed.center_rewards_coefficient = Some(0.01);
    let err = try_resume(&changed).unwrap_err();
    assert!(
        err.contains("center_rewards_coefficient absent → 0.01"),
        "{err}"
    );

    let original = std::fs::read(&c.data.train_file).unwrap();
    write_prefs(&c.data.train_file, &PREFS[..5]);
    let err = try_resume(&c).unwrap_err();
    assert!(err.contains("data.train_file content sha256 "), "{err}");
    std::fs::write(&c.data.train_file, original).unwrap();

    let moved = tmp.path().join("moved");
    std::fs::rename(&c.output_dir, &moved).unwrap();
    c.output_dir = moved;
    c.train.max_steps = 4;
    assert_eq!(try_resume(&c), Ok(4));
    assert_eq!(
        recorded_resume_keys(&c.output_dir, 4),
        ["output_dir", "train.max_steps"]
    );
}

#[test]
fn bad_pairs_are_rejected_before_any_work() {
    let (tmp, mut c) = setup();
    let data = tmp.path().join("bad.jsonl");
    let mut prefs = PREFS.to_vec();
    prefs.insert(1, ("moon?", "grey", "grey"));
    write_prefs(&data, &prefs);
    c.data.train_file = data.clone();
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    assert!(
        err.contains("`chosen` and `rejected` are identical"),
        "{err}"
    );
    assert!(!c.output_dir.exists());

    let rec = |m: &str| {
        format!("{{\"prompt\":\"q\",\"chosen\":\"a\",\"rejected\":\"b\",\"margin\":{m}}}\n")
    };
    std::fs::write(&data, rec("0.5") + &rec("\"big\"")).unwrap();
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.jsonl:2: field `margin`: expected a number"),
        "{err}"
    );
}

#[test]
fn margins_from_the_data_enter_the_loss() {
    // With every reward equal at the start (a zero head), the first loss is
    // mean(−log σ(−m)) = mean(softplus(m)): ln 2 without margins,
    // softplus(1) = 1.3132617 with margin 1 on every pair.
    let (tmp, mut c) = setup();
    c.train.max_steps = 1;
    c.learning_rate = 0.0;
    let data = tmp.path().join("margins.jsonl");
    let mut text = String::new();
    for (q, a, b) in PREFS {
        text.push_str(&format!(
            "{{\"prompt\":\"{q}\",\"chosen\":\"{a}\",\"rejected\":\"{b}\",\"margin\":1.0}}\n"
        ));
    }
    std::fs::write(&data, text).unwrap();
    c.data.train_file = data;
    // A reward-model start with a zero head scores everything 0.
    let start = tmp.path().join("zero-head");
    {
        let device = Default::default();
        let (config, lm) = alignkit_model::load_model::<B>(&c.model, &device).unwrap();
        let mut rm = alignkit_model::heads::RewardModel::from_backbone(lm.model, &config, &device);
        rm.score.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::zeros(
            [1, config.hidden_size],
            &device,
        ));
        let mut config = config;
        config.pad_token_id = Some(2);
        alignkit_model::heads::save_reward_model(
            &rm,
            &config,
            &start,
            alignkit_model::SaveDtype::F32,
        )
        .unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(c.model.join(f), start.join(f)).unwrap();
        }
    }
    c.model = start;
    run(&c);
    let loss = series(&c.output_dir, "loss");
    assert!((loss[0] - 1.313_261_7).abs() < 1e-6, "{loss:?}");
}

/// A validation split that selects none of the pairs is an error, not an
/// evaluation on nothing (issue 12.6).
#[test]
fn an_empty_validation_split_is_an_error() {
    let (_tmp, mut c) = setup();
    c.data.validation_split = 0.01;
    c.train.eval_steps = 1;
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: `data.validation_split`: 0.01 selects none of the 6 examples; raise it, give data.validation_file, or set it to 0 (no evaluation)"
    );
    assert!(!c.output_dir.exists());
}
