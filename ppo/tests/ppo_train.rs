//! End-to-end PPO with a critic on a tiny random model: a rule reward rises
//! with the importance ratio near 1, exact resume of policy, critic, both
//! optimizers and the adaptive KL coefficient, and one-line errors before any
//! work.

use std::path::Path;

use alignkit_model::heads::load_reward_model;
use alignkit_model::load_model;
use alignkit_ppo::{
    AdaptiveKlConfig, Event, PpoParams, RewardKind, RlConfig, RunOptions, StopReason, train_ppo,
};
use alignkit_train::testutil::*;
use serde_json::json;

fn write_prompts(path: &Path, n: usize) {
    let words = [
        "sky", "grass", "snow", "coal", "sun", "blood", "sea", "moon",
    ];
    let mut text = String::new();
    for i in 0..n {
        let w = words[i % words.len()];
        let rec = json!({"prompt": [{"role": "user", "content": format!("{w}?")}]});
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// PPO over the tiny model with a rule reward (the completion contains `a`),
/// the critic started from the policy with a fresh value head.
fn config(dir: &Path) -> RlConfig {
    let model = tiny_model_dir(&dir.join("model"));
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, 16);
    let mut c = RlConfig::ppo();
    c.model = model;
    c.output_dir = dir.join("run");
    c.learning_rate = 3e-3;
    c.data.train_file = prompts;
    c.data.max_prompt_len = 32;
    c.rollout.max_completion_length = 8;
    c.rollout.log_completions_steps = 2;
    c.rollout.generation_batch_size = 16;
    c.rewards = vec![RewardKind::Rule {
        rule: "regex=a".parse().unwrap(),
        name: None,
        weight: 1.0,
    }];
    c.ppo = Some(PpoParams {
        num_generations: 4,
        num_ppo_epochs: 2,
        num_mini_batches: 2,
        ..Default::default()
    });
    c.train.batch_size = 8;
    c.train.grad_accum = 2;
    c.train.max_steps = 20;
    c.train.save_steps = 0;
    c.train.keep_last = 0;
    c.schedule.kind = alignkit_train::ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}

fn run(c: &RlConfig) -> alignkit_ppo::PpoOutcome {
    train_ppo::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[test]
fn ppo_rule_reward_rises_with_the_ratio_near_one() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let out = run(&c);
    assert_eq!(out.stop, StopReason::Completed);
    let r = series(&c.output_dir, "objective/scores");
    assert_eq!(r.len(), 20);
    let (first, last) = (mean(&r[..5]), mean(&r[15..]));
    assert!(
        last > first + 0.25 && last > 0.5,
        "score did not rise: {r:?}"
    );
    let m = metrics(&c.output_dir);
    for key in [
        "objective/kl",
        "objective/entropy",
        "objective/non_score_reward",
        "objective/rlhf_reward",
        "objective/scores",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "policy/entropy_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "val/ratio_var",
        "val/num_eos_tokens",
        "rewards/regex/mean",
        "completions/mean_length",
        "kl_coef",
        "episode",
    ] {
        assert!(m[0].get(key).is_some(), "metrics lack `{key}`: {}", m[0]);
    }
    for (step, ratio) in series(&c.output_dir, "val/ratio").iter().enumerate() {
        assert!(
            (ratio - 1.0).abs() < 0.1,
            "val/ratio {ratio} at step {step}"
        );
    }
    // The KL penalty is in the reward: rlhf_reward = scores + non_score_reward.
    for rec in &m {
        let f = |k: &str| rec[k].as_f64().unwrap();
        let want = f("objective/scores") + f("objective/non_score_reward");
        assert!((f("objective/rlhf_reward") - want).abs() < 1e-9, "{rec}");
        let kl_term = -f("kl_coef") * f("objective/kl");
        assert!(
            (f("objective/non_score_reward") - kl_term).abs() < 1e-9,
            "{rec}"
        );
    }
    // The critic gets gradients at every step (its targets move with the
    // policy, so its loss need not fall on this moving target).
    let g = series(&c.output_dir, "critic_grad_norm");
    assert!(g.iter().all(|&x| x > 0.0 && x.is_finite()), "{g:?}");
    let v = series(&c.output_dir, "loss/value_avg");
    assert!(v.iter().all(|&x| x > 0.0 && x.is_finite()), "{v:?}");
    println!("scores {r:?}\nvalue loss {v:?}");
    load_model::<B>(&out.final_dir.unwrap(), &Default::default()).unwrap();
    let ckpt = out.last_checkpoint.unwrap();
    load_reward_model::<B>(&ckpt.join("critic"), &Default::default()).unwrap();
}

fn critic_bits(checkpoint: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let (_, critic) = load_reward_model::<B>(&checkpoint.join("critic"), &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", checkpoint.display()));
    bits(&critic)
}

/// kill at step 5 (a panic after the step-4 checkpoint), resume: every metric,
/// the final policy, the critic and the adapted KL coefficient are identical.
#[test]
fn ppo_resume_after_a_crash_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.train.max_steps = 7;
    c.train.save_steps = 2;
    let p = c.ppo.as_mut().unwrap();
    p.kl_coef = 0.1;
    p.kl_estimator = alignkit_ppo::gae::KlEstimator::K3;
    p.whiten_rewards = true;
    p.adaptive_kl = Some(AdaptiveKlConfig {
        target: 0.01,
        horizon: 100.0,
    });
    p.critic_learning_rate = Some(1e-3);
    c.rollout.missing_eos_penalty = Some(0.5);
    let keys = [
        "objective/scores",
        "objective/kl",
        "loss/policy_avg",
        "loss/value_avg",
        "val/ratio",
        "grad_norm",
        "critic_grad_norm",
        "kl_coef",
    ];
    let kill = KilledRun {
        kill_at: 5,
        resumed_from: 4,
        partial_at: None,
        keys: &keys,
    };
    // The final policy, and the critic in the last checkpoint, compared too.
    let (whole, _) = assert_resumes_bit_for_bit(tmp.path(), kill, &mut resumable(&c));
    let coef = series(&whole, "kl_coef");
    assert!(
        coef.windows(2).any(|w| w[0] != w[1]),
        "kl_coef adapts: {coef:?}"
    );
}

/// [`assert_resumes_bit_for_bit`]'s trainer: PPO with `c`, into `out`.
fn resumable(
    c: &RlConfig,
) -> impl FnMut(&Path, RunOptions<'static>, &mut dyn FnMut(usize)) -> alignkit_ppo::PpoOutcome {
    move |out, options, step| {
        let mut c = c.clone();
        c.output_dir = out.to_path_buf();
        train_ppo::<AB>(&c, &Default::default(), options, &mut |e| {
            if let Event::PpoStep(m) = e {
                step(m.step);
            }
        })
        .unwrap()
    }
}

/// A LoRA policy and critic (the critic from a reward model, which is also
/// the reward): the run trains and resumes to the same critic.
#[test]
fn ppo_lora_critic_from_a_reward_model_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    let rm = reward_model_dir(&tmp.path().join("rm"));
    c.rewards.push(RewardKind::Model {
        path: rm,
        name: Some("rm".into()),
        weight: 1.0,
    });
    c.lora = Some(alignkit_model::lora::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    });
    c.train.max_steps = 4;
    c.train.save_steps = 2;
    // The last checkpoints' critic/ (adapter and score head) compared too.
    let kill = KilledRun {
        kill_at: 3,
        resumed_from: 2,
        partial_at: None,
        keys: &["loss/value_avg", "loss/policy_avg"],
    };
    assert_resumes_bit_for_bit(tmp.path(), kill, &mut resumable(&c));
}

/// The critic's starting model (`ppo.value_model`) replaced between an
/// interrupt and the resume refuses the resume in one line naming its key and
/// path (issue 33).
#[test]
fn a_replaced_value_model_refuses_the_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    let vm = reward_model_dir(&tmp.path().join("vm"));
    c.ppo.as_mut().unwrap().value_model = Some(vm.clone());
    c.train.max_steps = 4;
    stop_at(&c.output_dir, 2, &mut resumable(&c));

    std::fs::remove_dir_all(&vm).unwrap();
    tiny_reward_model_dir_seeded(&vm, 4);
    let err = train_ppo::<AB>(&c, &Default::default(), RunOptions::RESUME, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert_model_replaced(&err, "ppo.value_model", &vm);
}

/// A reward model directory with the tiny tokenizer.
fn reward_model_dir(dir: &Path) -> std::path::PathBuf {
    tiny_reward_model_dir_seeded(dir, 3)
}

#[test]
fn bad_inputs_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let base = config(tmp.path());
    let fails = |c: &RlConfig, want: &str| {
        let err = train_ppo::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("expected an error containing {want:?}"))
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!c.output_dir.exists(), "work started for: {err}");
    };
    // A critic init that is not a reward or value model: the policy itself.
    let mut c = base.clone();
    c.ppo.as_mut().unwrap().value_model = Some(c.model.clone());
    fails(&c, "is not a reward or value model");
    // A value model whose tokenizer differs from the policy's.
    let rm = reward_model_dir(&tmp.path().join("rm-other-tokenizer"));
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["a"].clone(), vocab["b"].clone());
    vocab.insert("a".into(), b);
    vocab.insert("b".into(), a);
    std::fs::write(rm.join("tokenizer.json"), tok.to_string()).unwrap();
    let mut c = base.clone();
    c.ppo.as_mut().unwrap().value_model = Some(rm);
    fails(&c, "tokenizer differs from the policy's");
    // 16 completions per step do not split into 3 mini-batches.
    let mut c = base.clone();
    c.ppo.as_mut().unwrap().num_mini_batches = 3;
    fails(&c, "config: `ppo.num_mini_batches`: 3: the 16 completions");
    // Mini-batches of 4 are not whole micro-batches of 8.
    let mut c = base.clone();
    c.ppo.as_mut().unwrap().num_mini_batches = 4;
    fails(&c, "not a whole number of micro-batches");
    let mut c = base.clone();
    c.ppo.as_mut().unwrap().lam = 1.5;
    fails(&c, "config: `ppo.lam`: 1.5 is not in [0, 1]");
    // A shared-backbone critic has no model of its own to start from.
    let mut c = base.clone();
    let p = c.ppo.as_mut().unwrap();
    p.shared_backbone = true;
    p.value_model = Some(reward_model_dir(&tmp.path().join("rm-shared")));
    fails(
        &c,
        "config: `ppo.value_model`: a critic on the policy's backbone",
    );
}

/// `ppo.shared_backbone`: the critic is a value head on the policy's own
/// backbone. The rule reward rises as with a separate critic, the ratio stays
/// near 1, the head and the backbone both learn from the value loss, and a
/// checkpoint's critic is the head alone.
#[test]
fn ppo_with_a_value_head_on_the_policy_backbone_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.ppo.as_mut().unwrap().shared_backbone = true;
    c.train.save_steps = 10;
    let out = run(&c);
    let r = series(&c.output_dir, "objective/scores");
    let (first, last) = (mean(&r[..5]), mean(&r[15..]));
    assert!(
        last > first + 0.25 && last > 0.5,
        "score did not rise: {r:?}"
    );
    for (step, ratio) in series(&c.output_dir, "val/ratio").iter().enumerate() {
        assert!(
            (ratio - 1.0).abs() < 0.1,
            "val/ratio {ratio} at step {step}"
        );
    }
    let g = series(&c.output_dir, "critic_grad_norm");
    assert!(g.iter().all(|&x| x > 0.0 && x.is_finite()), "{g:?}");
    println!("scores {r:?}");
    let critic = out.last_checkpoint.unwrap().join("critic");
    let mut files: Vec<String> = std::fs::read_dir(&critic)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["optimizer.safetensors", "score.safetensors"]);
    // The policy is exported without the value head.
    load_model::<B>(&out.final_dir.unwrap(), &Default::default()).unwrap();
}

/// LoRA policy with a shared-backbone critic: the value loss reaches the
/// adapters (the run differs from one with vf_coef near zero) and a crash +
/// resume gives the same metrics, adapter and value head, bit for bit.
#[test]
fn ppo_shared_backbone_with_lora_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.ppo.as_mut().unwrap().shared_backbone = true;
    c.lora = Some(alignkit_model::lora::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    });
    c.train.max_steps = 5;
    c.train.save_steps = 2;
    let keys = [
        "loss/policy_avg",
        "loss/value_avg",
        "grad_norm",
        "critic_grad_norm",
    ];
    let kill = KilledRun {
        kill_at: 4,
        resumed_from: 2,
        partial_at: None,
        keys: &keys,
    };
    let (whole, _) =
        assert_resumes_bit_for_bit(&tmp.path().join("resume"), kill, &mut resumable(&c));

    let mut quiet = c.clone();
    quiet.output_dir = tmp.path().join("quiet");
    quiet.ppo.as_mut().unwrap().vf_coef = 1e-6;
    run(&quiet);
    assert_ne!(
        series(&quiet.output_dir, "grad_norm")[0],
        series(&whole, "grad_norm")[0],
        "the value loss moves the shared backbone's adapters"
    );
}

/// `train.gradient_checkpointing` on the policy and the critic (their forward
/// passes interleave before their backward passes), and on a policy whose
/// backbone carries the value head: the same run, bit for bit.
#[test]
fn ppo_with_gradient_checkpointing_is_the_same_run() {
    for shared in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.ppo.as_mut().unwrap().shared_backbone = shared;
        c.train.max_steps = 3;
        let recomputed = alignkit_model::recompute::layers_recomputed;
        let before = recomputed();
        let plain = run(&c);
        assert_eq!(recomputed(), before, "no checkpointing asked");
        c.output_dir = tmp.path().join("checkpointed");
        c.train.gradient_checkpointing = true;
        let checkpointed = run(&c);
        assert!(recomputed() > before, "the layers were recomputed");
        for key in [
            "objective/scores",
            "loss/policy_avg",
            "loss/value_avg",
            "val/ratio",
            "grad_norm",
            "critic_grad_norm",
        ] {
            let (a, b) = (
                series(&tmp.path().join("run"), key),
                series(&c.output_dir, key),
            );
            assert_eq!(a.len(), 3, "{key}");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&a),
                bits(&b),
                "{key} (shared {shared}): {a:?} vs {b:?}"
            );
        }
        let policy = |dir: &Path| bits(&load_model::<B>(dir, &Default::default()).unwrap().1);
        assert_eq!(
            policy(&plain.final_dir.unwrap()),
            policy(&checkpointed.final_dir.unwrap()),
            "final policies differ"
        );
        let (a, b) = (
            plain.last_checkpoint.unwrap(),
            checkpointed.last_checkpoint.unwrap(),
        );
        if shared {
            let score = |dir: &Path| std::fs::read(dir.join("critic/score.safetensors")).unwrap();
            assert_eq!(score(&a), score(&b), "final value heads differ");
        } else {
            assert_eq!(critic_bits(&a), critic_bits(&b), "final critics differ");
        }
    }
}
