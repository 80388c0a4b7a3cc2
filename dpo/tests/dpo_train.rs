//! End-to-end DPO on a tiny random model: preferences are learned, the
//! first step starts from policy == reference, precomputed reference log-probs
//! are cached across runs, LoRA uses the adapter-free policy as reference,
//! resume reproduces an uninterrupted run, and bad data fails before work.

mod common;

use std::path::Path;

use alignkit_dpo::{
    CacheStatus, DpoConfig, DpoOutcome, Event, ReferenceKind, RunOptions, StopReason, train,
};
use alignkit_model::load_model;
use alignkit_model::lora::LoraConfig;
use common::*;

fn run(c: &DpoConfig) -> DpoOutcome {
    train::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap()
}

fn setup() -> (tempfile::TempDir, DpoConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    let data = tmp.path().join("prefs.jsonl");
    write_prefs(&data, &PREFS);
    let c = config(&model, &data, &tmp.path().join("run"));
    (tmp, c)
}

const LN2: f64 = std::f64::consts::LN_2;

#[test]
fn preferences_are_learned_from_a_frozen_reference() {
    let (_tmp, mut c) = setup();
    c.train.max_steps = 24;
    c.train.batch_size = 3;
    c.beta = 0.5;
    let mut kinds = Vec::new();
    let out = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Started(info) = e {
            kinds.push(info.reference);
        }
    })
    .unwrap();
    assert_eq!(kinds, vec![ReferenceKind::FrozenModel]);
    assert_eq!(out.stop, StopReason::Completed);

    // Step 1: the policy is the reference, so every pair's loss is ln 2 and
    // every implicit reward 0.
    let m = metrics(&c.output_dir);
    assert_eq!(m.len(), 24);
    assert!(
        (m[0]["loss"].as_f64().unwrap() - LN2).abs() < 1e-6,
        "{}",
        m[0]
    );
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
        assert!(m[0][key].as_f64().unwrap().abs() < 1e-6, "{key}: {}", m[0]);
    }
    for key in [
        "loss",
        "learning_rate",
        "grad_norm",
        "num_tokens",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "epoch",
    ] {
        assert!(m[0].get(key).is_some(), "metrics lack `{key}`: {}", m[0]);
    }
    // Later: the chosen answer is preferred by a clear margin on every pair.
    let last = &m[m.len() - 1];
    let loss = series(&c.output_dir, "loss");
    assert!(loss[loss.len() - 1] < 0.3 * LN2, "{loss:?}");
    assert_eq!(last["rewards/accuracies"].as_f64().unwrap(), 1.0, "{last}");
    assert!(last["rewards/margins"].as_f64().unwrap() > 1.0, "{last}");

    // final/ is an HF directory.
    let final_dir = out.final_dir.unwrap();
    load_model::<B>(&final_dir, &Default::default()).unwrap();
    assert!(final_dir.join("tokenizer.json").is_file());
    let resolved = DpoConfig::load(Some(&c.output_dir.join("config.toml")), &[]).unwrap();
    assert_eq!(resolved, c.with_absolute_paths().unwrap());
}

#[test]
fn precomputed_reference_is_cached_across_runs() {
    let (tmp, mut c) = setup();
    c.precompute_ref_log_probs = true;
    c.ref_cache_dir = Some(tmp.path().join("ref-cache"));
    c.train.max_steps = 3;
    let statuses = |c: &DpoConfig| {
        let mut seen = Vec::new();
        let mut forwards = 0;
        train::<AB>(
            c,
            &Default::default(),
            RunOptions::default(),
            &mut |e| match e {
                Event::Reference { split, status, .. } => seen.push((split.to_string(), status)),
                Event::ReferenceProgress { .. } => forwards += 1,
                Event::Started(info) => assert_eq!(info.reference, ReferenceKind::Precomputed),
                _ => {}
            },
        )
        .unwrap();
        (seen, forwards)
    };

    // First run: one reference pass over the 6 pairs (3 batches of 2), stored.
    let (seen, forwards) = statuses(&c);
    assert_eq!(seen, vec![("train".to_string(), CacheStatus::Computed)]);
    assert_eq!(forwards, 3);
    let first = series(&c.output_dir, "loss");

    // Second run elsewhere, same model/data/settings: no reference forward.
    let mut c2 = c.clone();
    c2.output_dir = tmp.path().join("run2");
    let (seen, forwards) = statuses(&c2);
    assert_eq!(seen, vec![("train".to_string(), CacheStatus::Hit)]);
    assert_eq!(forwards, 0);
    assert_eq!(series(&c2.output_dir, "loss"), first);

    // A frozen reference model run per batch gives the same losses.
    let mut c3 = c.clone();
    c3.output_dir = tmp.path().join("run3");
    c3.precompute_ref_log_probs = false;
    run(&c3);
    let per_batch = series(&c3.output_dir, "loss");
    for (a, b) in first.iter().zip(&per_batch) {
        assert!((a - b).abs() < 1e-5, "{first:?} vs {per_batch:?}");
    }

    // Other data: another cache entry.
    let mut c4 = c.clone();
    c4.output_dir = tmp.path().join("run4");
    c4.data.train_file = tmp.path().join("prefs4.jsonl");
    write_prefs(&c4.data.train_file, &PREFS[..4]);
    let (seen, _) = statuses(&c4);
    assert_eq!(seen, vec![("train".to_string(), CacheStatus::Computed)]);
}

#[test]
fn lora_reference_is_the_policy_without_adapters() {
    let (_tmp, mut c) = setup();
    c.lora = Some(LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    });
    c.learning_rate = 2e-2;
    c.beta = 0.5;
    c.train.max_steps = 12;
    c.train.batch_size = 3;
    let mut kind = None;
    train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Started(info) = e {
            kind = Some(info.reference);
        }
    })
    .unwrap();
    assert_eq!(kind, Some(ReferenceKind::AdaptersDisabled));
    // Fresh adapters (B = 0): policy == reference at step 1.
    let loss = series(&c.output_dir, "loss");
    assert!((loss[0] - LN2).abs() < 1e-5, "{loss:?}");
    // Training moves the adapters, and the reference (adapters off) stays put:
    // the margin grows.
    let margins = series(&c.output_dir, "rewards/margins");
    assert!(margins[margins.len() - 1] > 0.5, "{margins:?}");
}

/// A kill -9 during training (after the checkpoint of step 2) and one during
/// the write of the checkpoint of step 4: the resumed run's losses and final
/// weights equal the uninterrupted run's bit for bit, full and LoRA.
#[test]
fn a_killed_run_resumes_bit_for_bit() {
    for lora in [false, true] {
        let (tmp, mut c) = setup();
        c.train.max_steps = 6;
        c.train.save_steps = 2;
        c.train.grad_accum = 2;
        c.rpo_alpha = Some(0.5);
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
                keys: &["loss", "grad_norm", "rewards/margins", "nll_loss"],
            },
            &mut resumable(&c),
        );
    }
}

/// [`assert_resumes_bit_for_bit`]'s trainer: DPO with `c`, into `out`.
fn resumable(
    c: &DpoConfig,
) -> impl FnMut(&Path, RunOptions<'static>, &mut dyn FnMut(usize)) -> DpoOutcome {
    move |out, options, step| {
        let mut c = c.clone();
        c.output_dir = out.to_path_buf();
        train::<AB>(&c, &Default::default(), options, &mut |e| {
            if let Event::Step(m) = e {
                step(m.step);
            }
        })
        .unwrap()
    }
}

/// The resume contract: β, the seed or the data's content refuse in one line
/// naming each key; a moved run directory with a raised `max_steps`
/// continues, and the change is recorded in the checkpoint.
#[test]
fn resume_refuses_what_changes_the_run_and_accepts_bookkeeping() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 2;
    c.train.save_steps = 1;
    run(&c);
    let try_resume = |c: &DpoConfig| {
        train::<AB>(c, &Default::default(), RunOptions::RESUME, &mut |_| {})
            .map(|o| o.steps)
            .map_err(|e| e.to_string())
    };

    let mut changed = c.clone();
    changed.beta = 0.2;
    changed.train.seed = 7;
    let err = try_resume(&changed).unwrap_err();
    assert!(
        err.contains("cannot resume: 2 settings changed (beta 0.1 → 0.2; train.seed 42 → 7)"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

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

/// A reference model given through a symlink that is re-pointed at another
/// model between an interrupt and the resume refuses the resume in one line
/// naming `ref_model` and its path (issue 33); the same model named by its
/// own directory resumes.
#[test]
fn a_re_pointed_reference_model_refuses_the_resume() {
    let (tmp, mut c) = setup();
    let first = tiny_model_dir_seeded(&tmp.path().join("ref-a"), 11);
    let other = tiny_model_dir_seeded(&tmp.path().join("ref-b"), 12);
    let link = tmp.path().join("ref");
    std::os::unix::fs::symlink(&first, &link).unwrap();
    c.ref_model = Some(link.clone());
    c.train.max_steps = 4;
    stop_at(&c.output_dir, 2, &mut resumable(&c));

    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let resume = |c: &DpoConfig| {
        train::<AB>(c, &Default::default(), RunOptions::RESUME, &mut |_| {})
            .map(|o| o.steps)
            .map_err(|e| e.to_string())
    };
    assert_model_replaced(&resume(&c).unwrap_err(), "ref_model", &link);

    c.ref_model = Some(first);
    assert_eq!(resume(&c), Ok(4));
    assert_eq!(recorded_resume_keys(&c.output_dir, 4), ["ref_model"]);
}

#[test]
fn identical_pairs_are_rejected_before_any_work() {
    let (tmp, mut c) = setup();
    let data = tmp.path().join("bad.jsonl");
    let mut prefs = PREFS.to_vec();
    prefs.insert(3, ("moon?", "grey", "grey"));
    write_prefs(&data, &prefs);
    c.data.train_file = data;
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.jsonl:4:"), "{err}");
    assert!(
        err.contains("`chosen` and `rejected` are identical"),
        "{err}"
    );
    assert!(
        !c.output_dir.exists(),
        "no run directory before the data is checked"
    );
}

#[test]
fn eval_metrics_carry_the_eval_prefix() {
    let (tmp, mut c) = setup();
    let val = tmp.path().join("val.jsonl");
    write_prefs(&val, &PREFS[..3]);
    c.data.validation_file = Some(val);
    c.train.eval_steps = 2;
    c.train.max_steps = 4;
    c.precompute_ref_log_probs = true;
    let mut seen = Vec::new();
    train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Reference { split, .. } = e {
            seen.push(split.to_string());
        }
    })
    .unwrap();
    assert_eq!(seen, ["train", "validation"]);
    let m = metrics(&c.output_dir);
    assert!(m[0].get("eval_loss").is_none());
    for key in [
        "eval_loss",
        "eval_rewards/chosen",
        "eval_rewards/rejected",
        "eval_rewards/margins",
        "eval_rewards/accuracies",
        "eval_logps/chosen",
        "eval_logps/rejected",
        "eval_logits/chosen",
        "eval_logits/rejected",
    ] {
        assert!(m[1].get(key).is_some(), "`{key}` missing: {}", m[1]);
    }
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
