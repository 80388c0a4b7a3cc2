//! End-to-end GRPO and RLOO on a tiny random model: a rule reward rises,
//! sampling and training log-probs agree, exact resume, reward models, and
//! errors before any work.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use alignkit_eval::Rule;
use alignkit_model::load_model;
use alignkit_ppo::{Event, RewardKind, RlConfig, RunOptions, StopReason, train};
use alignkit_train::testutil::*;
use serde_json::json;

/// Chat prompts, with an `answer` field the rewards may read.
fn write_prompts(path: &Path, n: usize) {
    let words = [
        "sky", "grass", "snow", "coal", "sun", "blood", "sea", "moon",
    ];
    let mut text = String::new();
    for i in 0..n {
        let w = words[i % words.len()];
        let rec = json!({"prompt": [{"role": "user", "content": format!("{w}?")}], "answer": w});
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// GRPO over the tiny model with a rule reward: the completion contains `a`.
fn config(dir: &Path) -> RlConfig {
    let model = tiny_model_dir(&dir.join("model"));
    let prompts = dir.join("prompts.jsonl");
    write_prompts(&prompts, 8);
    let mut c = RlConfig::grpo();
    c.model = model;
    c.output_dir = dir.join("run");
    c.learning_rate = 1e-2;
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
    let g = c.grpo.as_mut().unwrap();
    g.num_generations = 8;
    c.train.batch_size = 16;
    c.train.grad_accum = 2;
    c.train.max_steps = 20;
    c.train.save_steps = 0;
    c.train.keep_last = 0;
    c.schedule.kind = alignkit_train::ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}

fn run(c: &RlConfig) -> alignkit_ppo::RlOutcome {
    train::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[test]
fn grpo_rule_reward_rises() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path());
    let out = run(&c);
    assert_eq!(out.stop, StopReason::Completed);
    let r = series(&c.output_dir, "rewards/regex/mean");
    assert_eq!(r.len(), 20);
    let (first, last) = (mean(&r[..5]), mean(&r[15..]));
    assert!(
        last > first + 0.3 && last > 0.5,
        "reward did not rise: {r:?}"
    );
    let m = metrics(&c.output_dir);
    for key in [
        "loss",
        "reward",
        "reward_std",
        "rewards/regex/mean",
        "rewards/regex/std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "num_tokens",
        "step_time",
        "time/generation",
        "time/optimization",
    ] {
        assert!(m[0].get(key).is_some(), "metrics lack `{key}`: {}", m[0]);
    }
    // One pass per rollout: the ratio is 1 on it, so nothing is ever clipped.
    assert!(
        series(&c.output_dir, "clip_ratio/region_mean")
            .iter()
            .all(|&x| x == 0.0)
    );
    let log = std::fs::read_to_string(c.output_dir.join("completions.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 2);
    assert!(first["rewards"]["regex"].is_number(), "{first}");
    assert_eq!(log.lines().count(), 10 * 8);
    load_model::<B>(&out.final_dir.unwrap(), &Default::default()).unwrap();
}

/// The sampler records log softmax(logits / T); the trainer computes the same
/// from its own forward pass, so they agree to rounding. At another
/// temperature they would not.
#[test]
fn sampling_and_training_logprobs_agree() {
    use alignkit_ppo::rollout::{ScoredTokens, load_prompts, roll_out, scaled_token_logprobs};
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.rollout.temperature = 0.7;
    let encoder = c.encoder().unwrap();
    let prompts = load_prompts(&c.data.train_file, &encoder).unwrap();
    let settings = c.rollout_settings().unwrap();
    let device = Default::default();
    let (_, model) = load_model::<B>(&c.model, &device).unwrap();
    let sampler = model.clone().for_decoding();
    let comps = roll_out(
        &sampler,
        &prompts,
        &[0, 3],
        &settings,
        encoder.tokenizer(),
        1,
        0,
        &device,
    )
    .unwrap();
    assert_eq!(comps.len(), 16);
    let rows: Vec<(&[u32], &[u32])> = comps
        .iter()
        .map(|x| (prompts[x.prompt].ids.as_slice(), x.tokens.as_slice()))
        .collect();
    let tokens = ScoredTokens::new(&rows, &vec![true; rows.len()], encoder.tokenizer().pad_id());
    let sampled: Vec<f32> = comps.iter().flat_map(|x| x.logprobs.clone()).collect();
    let diff = |t: f32| -> f32 {
        let lp = scaled_token_logprobs(&model, &tokens, t, false, &device).logp;
        let lp: Vec<f32> = lp.into_data().into_vec().unwrap();
        assert_eq!(lp.len(), sampled.len());
        lp.iter()
            .zip(&sampled)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    assert!(diff(0.7) < 1e-4, "same temperature: {}", diff(0.7));
    assert!(diff(1.0) > 1e-2, "another temperature: {}", diff(1.0));
    // Seeds per (step, prompt, sample): the same rows alone draw the same tokens.
    let alone = roll_out(
        &sampler,
        &prompts,
        &[3],
        &settings,
        encoder.tokenizer(),
        1,
        0,
        &device,
    )
    .unwrap();
    assert_eq!(alone[5].tokens, comps[13].tokens);
}

/// A stop string ends a completion; the text the rewards read ends before it.
#[test]
fn stop_strings_end_completions() {
    use alignkit_model::FinishReason;
    use alignkit_ppo::rollout::{load_prompts, roll_out};
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.rollout.stop = vec!["e".into()];
    c.rollout.max_completion_length = 24;
    let encoder = c.encoder().unwrap();
    let prompts = load_prompts(&c.data.train_file, &encoder).unwrap();
    let settings = c.rollout_settings().unwrap();
    let device = Default::default();
    let (_, model) = load_model::<B>(&c.model, &device).unwrap();
    let tok = encoder.tokenizer();
    let comps = roll_out(
        &model,
        &prompts,
        &[0, 1, 2, 3],
        &settings,
        tok,
        5,
        0,
        &device,
    )
    .unwrap();
    let stopped: Vec<_> = comps
        .iter()
        .filter(|x| x.finish == FinishReason::Stop)
        .collect();
    assert!(!stopped.is_empty(), "no completion sampled an `e`");
    for x in &stopped {
        let full = tok.decode(&x.tokens, true).unwrap();
        assert!(
            full.ends_with('e') && !x.text.contains('e'),
            "{full:?} → {:?}",
            x.text
        );
        assert_eq!(x.logprobs.len(), x.tokens.len());
        assert!(x.terminated());
    }
    for x in comps.iter().filter(|x| x.finish == FinishReason::Length) {
        assert!(
            !x.text.contains('e') && x.tokens.len() == 24,
            "{:?}",
            x.text
        );
    }
}

/// A run killed at step 5 (after the checkpoint of step 4) and resumed
/// reproduces the uninterrupted run: rewards, losses and final weights bit for
/// bit. GRPO with a reference (β > 0) and two passes per rollout.
#[test]
fn grpo_resume_after_a_crash_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.train.max_steps = 7;
    c.train.save_steps = 2;
    let g = c.grpo.as_mut().unwrap();
    g.num_iterations = 2;
    g.beta = 0.1;
    g.epsilon_high = Some(0.28);
    g.loss_type = alignkit_ppo::LossType::Grpo;
    exact_resume(tmp.path(), c);
}

/// RLOO with LoRA: the reference is the policy with its adapters disabled.
/// (No LoRA dropout: its masks come from the process-global backend
/// generator, which tests running in parallel share.)
#[test]
fn rloo_lora_resume_after_a_crash_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.grpo = None;
    c.rloo = Some(alignkit_ppo::RlooParams {
        num_generations: 4,
        num_iterations: 2,
        ..Default::default()
    });
    c.lora = Some(alignkit_model::lora::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    });
    c.rollout.mask_truncated_completions = true;
    c.rollout.missing_eos_penalty = Some(0.5);
    c.train.max_steps = 7;
    c.train.save_steps = 2;
    exact_resume(tmp.path(), c);
}

fn exact_resume(tmp: &Path, c: RlConfig) {
    let (whole, resumed) = assert_resumes_bit_for_bit(
        tmp,
        KilledRun {
            kill_at: 5,
            resumed_from: 4,
            partial_at: None,
            keys: &[
                "reward",
                "loss",
                "kl",
                "entropy",
                "grad_norm",
                "clip_ratio/region_mean",
            ],
        },
        &mut resumable(&c),
    );
    let kl = series(&whole, "kl");
    assert!(kl.iter().all(|k| k.is_finite()), "kl is logged: {kl:?}");
    let log = |dir: &Path| std::fs::read_to_string(dir.join("completions.jsonl")).unwrap();
    assert_eq!(log(&whole), log(&resumed));
}

/// [`assert_resumes_bit_for_bit`]'s trainer: GRPO or RLOO with `c`, into `out`.
fn resumable(
    c: &RlConfig,
) -> impl FnMut(&Path, RunOptions<'static>, &mut dyn FnMut(usize)) -> alignkit_ppo::RlOutcome {
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

/// A reward model directory with the tiny tokenizer.
fn reward_model_dir(dir: &Path) -> std::path::PathBuf {
    tiny_reward_model_dir_seeded(dir, 3)
}

/// A reward model replaced between an interrupt and the resume (issue 33:
/// the training reward jumped from about 0.1 to 1.75 without a word) refuses
/// the resume in one line naming its key and path; the same model moved
/// elsewhere resumes.
#[test]
fn a_replaced_reward_model_refuses_the_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    let rm = reward_model_dir(&tmp.path().join("rmcopy"));
    c.rewards = vec![RewardKind::Model {
        path: rm.clone(),
        name: None,
        weight: 1.0,
    }];
    c.train.max_steps = 4;
    stop_at(&c.output_dir, 2, &mut resumable(&c));

    let moved = tmp.path().join("rm-moved");
    std::fs::rename(&rm, &moved).unwrap();
    tiny_reward_model_dir_seeded(&rm, 4);
    let resume = |c: &RlConfig| {
        train::<AB>(c, &Default::default(), RunOptions::RESUME, &mut |_| {})
            .map(|o| o.steps)
            .map_err(|e| e.to_string())
    };
    assert_model_replaced(&resume(&c).unwrap_err(), "rewards[0].path", &rm);

    c.rewards[0] = RewardKind::Model {
        path: moved,
        name: None,
        weight: 1.0,
    };
    assert_eq!(resume(&c), Ok(4));
    assert_eq!(recorded_resume_keys(&c.output_dir, 4), ["rewards[0].path"]);
}

#[test]
fn a_reward_model_scores_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.rewards.push(RewardKind::Model {
        path: reward_model_dir(&tmp.path().join("rm")),
        name: None,
        weight: 0.5,
    });
    c.train.max_steps = 2;
    run(&c);
    let m = metrics(&c.output_dir);
    let rm = m[0]["rewards/reward_model/mean"].as_f64().unwrap();
    let std = m[0]["rewards/reward_model/std"].as_f64().unwrap();
    let rule = m[0]["rewards/regex/mean"].as_f64().unwrap();
    assert!(
        std > 0.0,
        "a random reward model scores completions differently"
    );
    let total = m[0]["reward"].as_f64().unwrap();
    assert!(
        (total - (rule + 0.5 * rm)).abs() < 1e-9,
        "{total} vs {rule} + {rm}/2"
    );
}

/// Each bad input is one line, before any work (no run directory).
#[test]
fn bad_inputs_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let base = config(tmp.path());
    let fail = |c: &RlConfig| -> String {
        let err = train::<AB>(c, &Default::default(), RunOptions::default(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            !c.output_dir.exists(),
            "{err}: the run directory was created"
        );
        assert!(!err.contains('\n'), "{err}");
        err
    };

    // A prompts file without prompts.
    let mut c = base.clone();
    let sft = tmp.path().join("sft.jsonl");
    write_chat_data(&sft, &PAIRS);
    c.data.train_file = sft;
    let err = fail(&c);
    assert!(
        err.contains("sft.jsonl:1:") && err.contains("prompt"),
        "{err}"
    );
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    c.data.train_file = empty;
    let err = fail(&c);
    assert!(err.contains("empty.jsonl"), "{err}");

    // num_generations < 2.
    let mut c = base.clone();
    c.grpo.as_mut().unwrap().num_generations = 1;
    let err = fail(&c);
    assert!(
        err.starts_with("config: `grpo.num_generations`: 1:"),
        "{err}"
    );

    // A reward model whose tokenizer differs from the policy's: two ids swapped.
    let mut c = base.clone();
    let rm = reward_model_dir(&tmp.path().join("rm-other"));
    let path = rm.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    vocab.insert("a".into(), json!(id_of('b')));
    vocab.insert("b".into(), json!(id_of('a')));
    std::fs::write(&path, tok.to_string()).unwrap();
    c.rewards.push(RewardKind::Model {
        path: rm,
        name: None,
        weight: 1.0,
    });
    let err = fail(&c);
    assert!(
        err.starts_with("config: `rewards[1].path`:") && err.contains("tokenizer differs"),
        "{err}"
    );

    // An unknown reward kind (in the TOML file): rejected when it is read.
    let file = tmp.path().join("grpo.toml");
    std::fs::write(&file, "[grpo]\n[[rewards]]\nkind = \"length\"\n").unwrap();
    let err = RlConfig::load(Some(&file), &[]).unwrap_err().to_string();
    assert!(
        err.contains("grpo.toml:3:") && err.contains("unknown variant `length`"),
        "{err}"
    );
}

/// A reward that cannot be computed names the prompt's FILE:LINE.
#[test]
fn an_uncomputable_reward_names_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.rewards = vec![RewardKind::Rule {
        rule: Rule::ExactMatch("solution".into()),
        name: None,
        weight: 1.0,
    }];
    let err = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompts.jsonl:"), "{err}");
    assert!(
        err.contains("reward `exact_match`") && err.contains("`solution`"),
        "{err}"
    );
}

/// A chat reply that ended its turn is scored after the template's trailer
/// (ChatML's newline after `<|im_end|>`): where `alignkit reward score`,
/// transformers and TRL read the same conversation rendered whole — not at
/// the end-of-turn token, where the score differs.
#[test]
fn a_reward_model_reads_a_chat_reply_where_the_rendered_conversation_ends() {
    use alignkit_datasets::{EncodeConfig, Encoder, Location, Message, Role, Turns};
    use alignkit_model::{FinishReason, ForwardInput, heads::load_reward_model, mask};
    use alignkit_ppo::reward::Rewards;
    use alignkit_ppo::rollout::{Completion, Prompt};
    use burn::tensor::{Int, Tensor, TensorData};

    let tmp = tempfile::tempdir().unwrap();
    let rm = reward_model_dir(&tmp.path().join("rm"));
    let device = Default::default();
    let encoder = Encoder::from_dir(&rm, EncodeConfig::default()).unwrap();
    let trailer = encoder.turn_trailer();
    assert_eq!(trailer, encoder.tokenizer().encode_raw("\n").unwrap());

    let user = vec![Message::new(Role::User, "sky?".to_string())];
    let prompt_ids = encoder.chat_ids(&user, true).unwrap();
    let mut reply = encoder.tokenizer().encode_raw("blue.").unwrap();
    reply.push(2); // <|im_end|>
    let prompts = [Prompt {
        at: Location {
            path: "p.jsonl".into(),
            line: 1,
        },
        prompt: Turns::Messages(user.clone()),
        ids: prompt_ids,
        fields: Default::default(),
        chat: true,
    }];
    let completion = |finish| Completion {
        prompt: 0,
        sample: 0,
        tokens: reply.clone(),
        logprobs: vec![0.0; reply.len()],
        finish,
        text: "blue.".into(),
    };
    let spec = [RewardKind::Model {
        path: rm.clone(),
        name: None,
        weight: 1.0,
    }];
    let rewards = Rewards::<B>::load(&spec, 2, trailer, 4, &device).unwrap();
    let scored = rewards
        .score(
            &prompts,
            &[
                completion(FinishReason::Eos),
                completion(FinishReason::Length),
            ],
            &device,
        )
        .unwrap()
        .total;

    // The whole conversation as the template renders it, scored at every token.
    let mut turns = user;
    turns.push(Message::new(Role::Assistant, "blue.".to_string()));
    let full = encoder.chat_ids(&turns, false).unwrap();
    let t = full.len();
    let ids: Vec<i64> = full.iter().map(|&i| i as i64).collect();
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..t as i64).collect::<Vec<_>>(), [1, t]),
            &device,
        ),
        mask: mask::attention_mask::<B>(&[vec![true; t]], t, None, &device),
    };
    let per_token = load_reward_model::<B>(&rm, &device)
        .unwrap()
        .1
        .token_scores(input)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .unwrap();
    let (at_newline, at_end_of_turn) = (per_token[t - 1], per_token[t - 2]);
    assert!(
        (scored[0] - at_newline).abs() < 1e-5,
        "{} vs {at_newline}",
        scored[0]
    );
    assert!(
        (at_newline - at_end_of_turn).abs() > 1e-4,
        "the test can tell them apart"
    );
    // A reply cut at the length limit ended no turn: read at its last token.
    assert!(
        (scored[1] - at_end_of_turn).abs() < 1e-5,
        "{} vs {at_end_of_turn}",
        scored[1]
    );
}

/// `[eval]`: held-out prompts at step 0, every 2 steps and at the end; the
/// KL of the untrained policy to itself is 0 up to rounding (the sampler's
/// log-probs against the reference's forward pass), and grows as it trains;
/// a resume drops the evaluations after its checkpoint and redoes them.
#[test]
fn held_out_evaluations_log_reward_and_kl() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.grpo.as_mut().unwrap().beta = 0.0;
    c.train.max_steps = 5;
    c.train.save_steps = 2;
    let held_out = tmp.path().join("held-out.jsonl");
    write_prompts(&held_out, 3);
    c.eval = alignkit_ppo::EvalConfig {
        file: held_out,
        steps: 2,
        num_samples: 2,
        max_completion_length: Some(6),
        // The same rule under another name: the evaluation's own judge.
        rewards: vec![RewardKind::Rule {
            rule: "regex=a".parse().unwrap(),
            name: Some("judge".into()),
            weight: 1.0,
        }],
    };
    let mut seen = Vec::new();
    train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
        if let Event::Eval(r) = e {
            seen.push(r.step)
        }
    })
    .unwrap();
    assert_eq!(seen, [0, 2, 4, 5]);
    let read = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("eval.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let records = read(&c.output_dir);
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["eval/completions"], 6, "{r}");
        assert!(r["eval/rewards/judge/mean"].is_number(), "{r}");
        assert!(r.get("eval/rewards/regex/mean").is_none(), "{r}");
        assert!(r["eval/mean_length"].as_f64().unwrap() <= 6.0, "{r}");
        assert!(r["eval/text"]["distinct_2"].is_number(), "{r}");
    }
    let kl: Vec<f64> = records
        .iter()
        .map(|r| r["eval/kl"].as_f64().unwrap())
        .collect();
    assert!(
        kl[0].abs() < 1e-3,
        "the start policy against itself: {kl:?}"
    );
    assert!(kl[3] > 0.05, "training moves the policy away: {kl:?}");
    let rewards: Vec<f64> = records
        .iter()
        .map(|r| r["eval/reward"].as_f64().unwrap())
        .collect();
    assert!(rewards[3] > rewards[0], "{rewards:?}");

    // Crash after step 3 (checkpoint at 2), resume: the same evaluations.
    let first = c.output_dir.clone();
    c.output_dir = tmp.path().join("crashed");
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |e| {
            if let Event::Step(m) = e
                && m.step == 3
            {
                panic!("simulated kill at step 3");
            }
        })
    }));
    assert!(crashed.is_err());
    train::<AB>(&c, &Default::default(), RunOptions::RESUME, &mut |_| {}).unwrap();
    let text = |dir: &Path| std::fs::read_to_string(dir.join("eval.jsonl")).unwrap();
    let strip_time = |t: String| -> Vec<serde_json::Value> {
        t.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("eval/time");
                v
            })
            .collect()
    };
    assert_eq!(strip_time(text(&first)), strip_time(text(&c.output_dir)));
}
