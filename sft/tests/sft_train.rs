//! End-to-end SFT on a tiny random model: learning, exact resume, the NaN
//! guard, early stopping, and errors before training.

mod common_sft;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use alignkit_model::load_model;
use alignkit_sft::{Event, RunOptions, SftConfig, SftOutcome, StopReason, train};
use common_sft::*;

fn run(c: &SftConfig) -> SftOutcome {
    train::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap()
}

fn setup() -> (tempfile::TempDir, SftConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    let data = tmp.path().join("train.jsonl");
    write_chat_data(&data, &PAIRS);
    let c = config(&model, &data, &tmp.path().join("run"));
    (tmp, c)
}

#[test]
fn loss_falls_on_a_memorisation_task() {
    let (_tmp, mut c) = setup();
    c.train.max_steps = 60;
    c.train.batch_size = 3;
    let out = run(&c);
    assert_eq!(out.stop, StopReason::Completed);
    let l = series(&c.output_dir, "loss");
    assert_eq!(l.len(), 60);
    let first = l[0];
    let last = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.1 * first, "loss did not fall enough: {l:?}");
    let m = metrics(&c.output_dir);
    for key in [
        "loss",
        "learning_rate",
        "grad_norm",
        "num_tokens",
        "mean_token_accuracy",
        "entropy",
        "tokens_per_second",
        "epoch",
    ] {
        assert!(m[0].get(key).is_some(), "metrics lack `{key}`: {}", m[0]);
    }
    let acc = |r: &serde_json::Value| r["mean_token_accuracy"].as_f64().unwrap();
    let accs: Vec<f64> = m.iter().map(acc).collect();
    assert!(accs[accs.len() - 2..].iter().all(|&a| a > 0.8), "{accs:?}");

    // final/ is an HF directory the model loader (and transformers) reads.
    let final_dir = out.final_dir.unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
    ] {
        assert!(final_dir.join(f).is_file(), "final/ lacks {f}");
    }
    load_model::<B>(&final_dir, &Default::default()).unwrap();
    let card = std::fs::read_to_string(final_dir.join("README.md")).unwrap();
    let sha = alignkit_train::sha256_file(&c.data.train_file).unwrap();
    assert!(
        card.contains(&sha) && card.contains("full fine-tuning") && card.contains("[train]"),
        "{card}"
    );

    // config.toml is the resolved config and reads back as the same config.
    let resolved = SftConfig::load(Some(&c.output_dir.join("config.toml")), &[]).unwrap();
    assert_eq!(resolved, c.with_absolute_paths().unwrap());
}

/// The losses of a run, interrupted by a crash and resumed, equal the
/// uninterrupted run's bit for bit — here resumed with selective activation
/// checkpointing turned on, which the contract allows (less memory, the same
/// gradients).
#[test]
fn resume_after_a_crash_reproduces_the_losses_exactly() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 10;
    c.train.grad_accum = 2;
    c.train.batch_size = 2;
    c.schedule.kind = alignkit_train::ScheduleKind::Cosine;
    c.schedule.warmup_steps = 2;
    c.optim.weight_decay = 0.1;
    let recomputed_before = alignkit_model::recompute::layers_recomputed();
    // A crash (kill -9: nothing saved) at step 6, after the checkpoint at
    // step 4, and one half-way through writing the checkpoint of step 8.
    assert_resumes_bit_for_bit(
        tmp.path(),
        KilledRun {
            kill_at: 6,
            resumed_from: 4,
            partial_at: Some(8),
            keys: &["loss", "grad_norm", "mean_token_accuracy"],
        },
        &mut |out, options, step| {
            let mut c = c.clone();
            c.output_dir = out.to_path_buf();
            if options.resume {
                c.train.gradient_checkpointing = true;
                c.train.recompute_granularity = alignkit_model::recompute::Granularity::Selective;
            }
            train::<AB>(&c, &Default::default(), options, &mut |e| {
                if let Event::Step(m) = e {
                    step(m.step);
                }
            })
            .unwrap()
        },
    );
    assert!(alignkit_model::recompute::layers_recomputed() > recomputed_before);
}

/// The resume contract: the seed, the learning rate or the data's content
/// refuse in one line naming each key; a moved run directory with a raised
/// `max_steps` continues, and the change is recorded; a key the checkpoint
/// predates reads as its default.
#[test]
fn resume_refuses_what_changes_the_run_and_accepts_bookkeeping() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 2;
    c.train.save_steps = 1;
    run(&c);
    let try_resume = |c: &SftConfig| {
        let opts = RunOptions::RESUME;
        train::<AB>(c, &Default::default(), opts, &mut |_| {})
            .map(|o| o.steps)
            .map_err(|e| e.to_string())
    };

    let mut changed = c.clone();
    changed.train.seed = 7;
    changed.learning_rate = 1.0;
    let err = try_resume(&changed).unwrap_err();
    let lr = c.learning_rate;
    assert!(
        err.contains(&format!(
            "cannot resume: 2 settings changed (learning_rate {lr:?} → 1.0; train.seed 42 → 7)"
        )),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

    let original = std::fs::read(&c.data.train_file).unwrap();
    write_chat_data(&c.data.train_file, &PAIRS[..PAIRS.len() - 1]);
    let err = try_resume(&c).unwrap_err();
    assert!(err.contains("data.train_file content sha256 "), "{err}");
    std::fs::write(&c.data.train_file, original).unwrap();

    // A checkpoint an older alignkit wrote, before `train.seed` existed: the
    // key reads as its default (42, this run's), so it is no change at all.
    let state = c.output_dir.join("checkpoints/step-2/trainer_state.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let train = json["config"]["train"].as_object_mut().unwrap();
    assert_eq!(train.remove("seed"), Some(serde_json::json!(42)));
    std::fs::write(&state, serde_json::to_string(&json).unwrap()).unwrap();

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

/// Ctrl-C: the stop flag saves a checkpoint and returns; --resume continues.
#[test]
fn stop_flag_saves_and_resume_continues() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 6;
    c.train.save_steps = 0;
    run(&c);
    let want = series(&c.output_dir, "loss");

    c.output_dir = tmp.path().join("stopped");
    let stop = AtomicBool::new(false);
    let out = train::<AB>(
        &c,
        &Default::default(),
        RunOptions {
            resume: false,
            stop: Some(&stop),
            ..Default::default()
        },
        &mut |e| {
            if let Event::Step(m) = e
                && m.step == 3
            {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::Interrupted);
    assert_eq!(out.steps, 3);
    assert!(out.final_dir.is_none());
    assert!(
        c.output_dir
            .join("checkpoints/step-3/trainer_state.json")
            .is_file()
    );
    let opts = RunOptions::RESUME;
    train::<AB>(&c, &Default::default(), opts, &mut |_| {}).unwrap();
    let got = series(&c.output_dir, "loss");
    assert_eq!(
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

/// One micro-batch of 4 or two of 2 accumulated: the same token-mean loss and
/// gradient (examples have different lengths, so a mean of per-micro-batch
/// means would differ).
#[test]
fn gradient_accumulation_is_a_token_mean_over_the_step() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 2;
    c.train.batch_size = 4;
    c.train.grad_accum = 1;
    run(&c);
    let a = metrics(&c.output_dir);
    c.output_dir = tmp.path().join("accum");
    c.train.batch_size = 2;
    c.train.grad_accum = 2;
    run(&c);
    let b = metrics(&c.output_dir);
    for key in ["loss", "grad_norm"] {
        let (x, y) = (a[0][key].as_f64().unwrap(), b[0][key].as_f64().unwrap());
        assert!((x - y).abs() < 1e-5 * x.abs().max(1.0), "{key}: {x} vs {y}");
    }
    let (x, y) = (
        a[1]["loss"].as_f64().unwrap(),
        b[1]["loss"].as_f64().unwrap(),
    );
    assert!((x - y).abs() < 1e-4, "after one update: {x} vs {y}");
}

/// Packed rows compute exactly what padded rows compute.
#[test]
fn packing_gives_the_same_loss() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 1;
    c.train.batch_size = 6;
    run(&c);
    let a = metrics(&c.output_dir)[0]["loss"].as_f64().unwrap();
    c.output_dir = tmp.path().join("packed");
    c.data.packing = true;
    run(&c);
    let b = metrics(&c.output_dir)[0]["loss"].as_f64().unwrap();
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn early_stopping_keeps_the_best_checkpoint() {
    let (_tmp, mut c) = setup();
    c.learning_rate = 0.0; // the validation loss can never improve after the first evaluation
    c.data.validation_split = 0.5;
    c.train.max_steps = 20;
    c.train.eval_steps = 2;
    c.train.early_stopping_patience = 2;
    c.train.keep_last = 1;
    let out = run(&c);
    assert_eq!(out.stop, StopReason::EarlyStopped);
    assert_eq!(out.steps, 6);
    assert_eq!(out.best.unwrap().step, 2);
    let m = metrics(&c.output_dir);
    assert!(m[1]["eval_loss"].as_f64().is_some() && m[0].get("eval_loss").is_none());
    let kept: Vec<usize> = alignkit_train::list_checkpoints(&c.output_dir.join("checkpoints"))
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(kept, vec![2, 6], "keep_last 1 plus the best");
}

/// A NaN in one example's embedding: its steps are skipped and reported; the
/// others train. LoRA keeps the poisoned base weights frozen, so the saved
/// adapter stays finite.
#[test]
fn nan_steps_are_skipped_and_reported() {
    let (_tmp, mut c) = setup();
    poison(&c.model, 'z');
    // Only "blue" contains no 'z'... we add one example with 'z' to 6 clean ones.
    let mut pairs = PAIRS.to_vec();
    pairs.push(("zoo?", "zebra"));
    write_chat_data(&c.data.train_file, &pairs);
    c.lora = Some(Default::default());
    c.train.batch_size = 1;
    c.train.max_steps = 14;
    c.train.max_bad_steps = 3;
    let mut reported = Vec::new();
    let out = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Step(m) = e
            && let Some(r) = &m.skipped
        {
            reported.push((m.step, r.clone()));
        }
    })
    .unwrap();
    assert_eq!(out.stop, StopReason::Completed);
    assert_eq!(
        reported.len(),
        2,
        "one poisoned example per epoch of 7: {reported:?}"
    );
    assert!(reported[0].1.contains("loss is NaN"), "{reported:?}");
    assert_eq!(out.skipped_steps, 2);
    let m = metrics(&c.output_dir);
    let clean: Vec<f64> = m
        .iter()
        .filter(|r| r.get("skipped").is_none())
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(clean.len(), 12);
    assert!(clean.iter().all(|l| l.is_finite()));
    // The clean steps updated the adapter, and what was saved is finite.
    let ckpt = out.last_checkpoint.unwrap();
    let (adapter, _) =
        alignkit_train::tensors::read_f32_tensors(&ckpt.join("adapter_model.safetensors")).unwrap();
    assert!(
        adapter
            .values()
            .all(|(_, v)| v.iter().all(|x| x.is_finite()))
    );
    assert!(
        adapter
            .iter()
            .filter(|(k, _)| k.contains("lora_B"))
            .all(|(_, (_, v))| v.iter().any(|&x| x != 0.0))
    );
}

/// Every example poisoned: training stops after max_bad_steps and never
/// writes a checkpoint.
#[test]
fn consecutive_nan_steps_stop_training_without_saving() {
    let (_tmp, mut c) = setup();
    poison(&c.model, '?');
    c.train.max_bad_steps = 3;
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 consecutive steps"), "{err}");
    assert!(
        alignkit_train::list_checkpoints(&c.output_dir.join("checkpoints"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(series(&c.output_dir, "loss").len(), 3);
}

fn poison(model_dir: &std::path::Path, c: char) {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    rewrite_model(model_dir, |mut m| {
        let w = m.model.embed_tokens.weight.val();
        let [v, h] = w.dims();
        let mut data: Vec<f32> = w.into_data().to_vec().unwrap();
        let row = id_of(c) as usize;
        data[row * h..(row + 1) * h].fill(f32::NAN);
        m.model.embed_tokens.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(data, [v, h]),
            &Default::default(),
        ));
        m
    });
}

/// Each bad input is a one-line error, reported before any step runs.
#[test]
fn bad_input_fails_before_training_with_one_line() {
    let (tmp, c) = setup();
    let try_run = |c: &SftConfig, resume: bool| -> String {
        let mut stepped = false;
        let r = train::<AB>(
            c,
            &Default::default(),
            RunOptions {
                resume,
                ..Default::default()
            },
            &mut |e| {
                if matches!(e, Event::Step(_)) {
                    stepped = true;
                }
            },
        );
        assert!(!stepped, "trained before failing");
        let msg = r.unwrap_err().to_string();
        assert!(!msg.contains('\n'), "not one line: {msg}");
        msg
    };

    // Unknown key in the config file.
    let path = tmp.path().join("sft.toml");
    std::fs::write(&path, "model = \"m\"\nlerning_rate = 1e-4\n").unwrap();
    let msg = SftConfig::load(Some(&path), &[]).unwrap_err().to_string();
    assert!(
        msg.contains("sft.toml:2:1: unknown field `lerning_rate`"),
        "{msg}"
    );

    // A data file that does not exist.
    let mut bad = c.clone();
    bad.data.train_file = tmp.path().join("nope.jsonl");
    let msg = try_run(&bad, false);
    assert!(
        msg.contains("data.train_file") && msg.contains("nope.jsonl does not exist"),
        "{msg}"
    );

    // --resume without a complete checkpoint (only a partial one).
    std::fs::create_dir_all(c.output_dir.join("checkpoints/.tmp-step-4")).unwrap();
    std::fs::create_dir_all(c.output_dir.join("checkpoints/step-2")).unwrap();
    let msg = try_run(&c, true);
    assert!(
        msg.contains("no complete checkpoint to resume from"),
        "{msg}"
    );

    // A checkpoint made from a different model.
    let mut short = c.clone();
    short.output_dir = tmp.path().join("other-run");
    short.train.max_steps = 1;
    run(&short);
    let other_model = tiny_model_dir_seeded(&tmp.path().join("other-model"), 8);
    let mut wrong = short.clone();
    wrong.model = other_model;
    let msg = try_run(&wrong, true);
    assert!(msg.contains("made from a different model"), "{msg}");

    // Starting fresh over an existing run.
    let msg = try_run(&short, false);
    assert!(msg.contains("already holds checkpoints"), "{msg}");
}

/// A validation split that selects none of the examples is an error, not an
/// evaluation reporting `eval_loss 0.0` (issue 12.6).
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
}

/// `train.gradient_checkpointing` recomputes each layer in the backward pass
/// (keeping only its input, or also its projections' outputs with
/// `recompute_granularity = "selective"`): the same losses, gradient norms
/// and final weights, bit for bit.
#[test]
fn gradient_checkpointing_trains_the_same_run_bit_for_bit() {
    use alignkit_model::recompute::Granularity;
    let (tmp, mut c) = setup();
    c.train.max_steps = 4;
    c.train.batch_size = 2;
    c.train.grad_accum = 2;
    let recomputed = alignkit_model::recompute::layers_recomputed;
    let before = recomputed();
    let plain = run(&c);
    assert_eq!(recomputed(), before, "no checkpointing asked");
    let plain_dir = tmp.path().join("run");
    let plain_weights = load_model::<B>(&plain.final_dir.unwrap(), &Default::default())
        .unwrap()
        .1;
    for granularity in [Granularity::Full, Granularity::Selective] {
        c.output_dir = tmp.path().join(format!("checkpointed-{granularity:?}"));
        c.train.gradient_checkpointing = true;
        c.train.recompute_granularity = granularity;
        let before = recomputed();
        let checkpointed = run(&c);
        // The layer below the last (2 layers; the last one keeps its
        // activations) × 6 micro-batches: 6 examples in 3 micro-batches an
        // epoch, accumulated 2 + 1, so 4 steps take 6.
        assert_eq!(recomputed() - before, 6);
        for key in ["loss", "grad_norm"] {
            let (a, b) = (series(&plain_dir, key), series(&c.output_dir, key));
            assert_eq!(a.len(), 4);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{granularity:?} {key}: {a:?} vs {b:?}");
        }
        let b = load_model::<B>(&checkpointed.final_dir.unwrap(), &Default::default())
            .unwrap()
            .1;
        assert_eq!(
            bits(&plain_weights),
            bits(&b),
            "{granularity:?}: final weights differ"
        );
    }
}

/// `train.dtype = "bf16"` (here on the CPU backend, which supports bf16
/// tensors; the command line keeps the CPU at f32): the loss falls, the run
/// differs from the f32 one (the weights really are bf16), and a crash and
/// resume reproduces losses and final weights bit for bit, for full
/// fine-tuning and LoRA — the checkpoints hold the f32 masters.
#[test]
fn bf16_mixed_precision_learns_and_resumes_exactly() {
    for lora in [false, true] {
        let (tmp, mut c) = setup();
        c.train.max_steps = 10;
        c.train.batch_size = 3;
        if lora {
            c.lora = Some(alignkit_model::lora::LoraConfig {
                r: 4,
                alpha: 8.0,
                ..Default::default()
            });
            c.learning_rate = 3e-2;
        }
        let f32_run = run(&c);
        let f32_losses = series(&c.output_dir, "loss");
        c.train.dtype = alignkit_train::TrainDtype::Bf16;
        c.output_dir = tmp.path().join("bf16");
        let reference = run(&c);
        let want = series(&c.output_dir, "loss");
        // (LoRA on this tiny model barely moves in 10 steps, in f32 too.)
        assert!(
            lora || want[9] < 0.7 * want[0],
            "bf16 loss did not fall: {want:?}"
        );
        assert_ne!(want, f32_losses, "lora {lora}: bf16 run equals the f32 one");
        let gap = (want[9] - f32_losses[9]).abs() / f32_losses[9];
        assert!(gap < 0.1, "lora {lora}: {want:?} vs f32 {f32_losses:?}");
        drop(f32_run);

        c.output_dir = tmp.path().join("crashed");
        let crashed = catch_unwind(AssertUnwindSafe(|| {
            train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
                if let Event::Step(m) = e
                    && m.step == 6
                {
                    panic!("simulated kill at step 6");
                }
            })
        }));
        assert!(crashed.is_err());
        let resumed =
            train::<AB>(&c, &Default::default(), RunOptions::RESUME, &mut |_| {}).unwrap();
        let got = series(&c.output_dir, "loss");
        let to_bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            to_bits(&got),
            to_bits(&want),
            "lora {lora}: losses after resume"
        );
        let weights = |o: &SftOutcome| {
            let dir = o.final_dir.clone().unwrap();
            bits(&load_model::<B>(&dir, &Default::default()).unwrap().1)
        };
        assert_eq!(
            weights(&reference),
            weights(&resumed),
            "lora {lora}: final weights"
        );
    }
}

/// A checkpoint written before the run skeleton and streaming saves (commit
/// d7ea082: `alignkit sft` on the tiny model and data of `setup`, 2 steps,
/// `save_steps = 1`, a constant learning rate; `tests/fixtures/
/// checkpoint-d7ea082`) resumes under this version, and its continuation
/// equals an uninterrupted run of this version bit for bit.
#[test]
fn a_checkpoint_from_an_older_version_resumes_bit_for_bit() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 4;
    c.train.save_steps = 1;
    let whole = run(&c);

    let old = tmp.path().join("old");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint-d7ea082"),
        &old,
    );
    c.output_dir = old.clone();
    let mut steps = Vec::new();
    let resumed = train::<AB>(&c, &Default::default(), RunOptions::RESUME, &mut |e| {
        if let Event::Step(m) = e {
            steps.push(m.step);
        }
    })
    .unwrap();
    assert_eq!(steps, [3, 4], "resumed from the old checkpoint of step 2");
    let as_bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
    for key in ["loss", "grad_norm"] {
        assert_eq!(
            as_bits(series(&whole.run_dir, key)),
            as_bits(series(&old, key)),
            "{key}"
        );
    }
    let load = |o: &SftOutcome| {
        load_model::<B>(o.final_dir.as_ref().unwrap(), &Default::default())
            .unwrap()
            .1
    };
    assert_eq!(
        bits(&load(&whole)),
        bits(&load(&resumed)),
        "final weights differ"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
