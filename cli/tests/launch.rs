//! `alignkit launch`: two ranks on loopback train as one process with the
//! double micro-batch (burn-collective's global level, one process per
//! rank); a rank killed mid-run stops the other with one line, and the run
//! resumes to the single process's weights.
//!
//! Tolerance: the ranks' gradients (each normalised by the whole step's
//! token count) are summed by the all-reduce, where one process sums one
//! micro-batch's rows inside its matmuls; the two orders of f32 addition
//! differ by a few ulps per step (relative 1e-7 of a gradient), which Adam's
//! normalisation can amplify on near-zero second moments. Over three steps
//! of a tiny model the losses agree to 1e-5 and the weights to 1e-4.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alignkit_model::load_model;
use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use common::{alignkit, ok, refused, tiny_model};
use serde_json::{Value, json};

const QUESTIONS: [&str; 12] = [
    "sky?", "grass?", "snow?", "coal?", "sun?", "blood?", "sea?", "milk?", "night?", "leaf?",
    "rose?", "ash?",
];

fn write_sft(path: &Path) {
    let lines: Vec<String> = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"prompt": q, "completion": "x".repeat(2 + i % 5)}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn write_prefs(path: &Path) {
    let lines: Vec<String> = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({"prompt": q, "chosen": "yes.", "rejected": "no, ".repeat(1 + i % 3)}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// The trainer flags of a run of `steps` steps with `batch` examples per
/// rank.
fn trainer_args(
    kind: &str,
    model: &Path,
    data: &Path,
    run: &Path,
    batch: usize,
    steps: usize,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        kind.into(),
        "--model".into(),
        model.display().to_string(),
        "--train-file".into(),
        data.display().to_string(),
        "--output-dir".into(),
        run.display().to_string(),
        "--batch-size".into(),
        batch.to_string(),
        "--max-steps".into(),
        steps.to_string(),
        "--set".into(),
        "train.save_steps=1".into(),
        "--set".into(),
        "train.keep_last=0".into(),
        // Large enough that a wrong gradient shows in the next steps.
        "--set".into(),
        "learning_rate=0.01".into(),
    ];
    if kind == "sft" {
        args.extend([
            "--max-len".into(),
            "48".into(),
            "--lora-r".into(),
            "4".into(),
        ]);
    }
    args
}

fn write_prompts(path: &Path) {
    let lines: Vec<String> = QUESTIONS
        .iter()
        .map(|q| json!({ "prompt": q }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// An online-RL run's command (`table`: grpo, rloo or ppo, with `params`)
/// of three steps, `batch` completions per rank and forward pass, `accum`
/// passes a step, its config written next to `run`.
fn rl_args(
    table: &str,
    params: &str,
    model: &Path,
    prompts: &Path,
    run: &Path,
    (batch, accum): (usize, usize),
) -> Vec<String> {
    let config = run.with_extension("toml");
    let text = format!(
        "model = {model:?}\noutput_dir = {run:?}\nlearning_rate = 1e-2\n\n\
         [{table}]\nnum_generations = 4\n{params}\n\n\
         [data]\ntrain_file = {prompts:?}\nmax_prompt_len = 16\ntext_as_chat = true\n\n\
         [rollout]\nmax_completion_length = 6\n\n\
         [[rewards]]\nkind = \"rule\"\nrule = {{ regex = \"e\" }}\n\n\
         [train]\nbatch_size = {batch}\ngrad_accum = {accum}\nmax_steps = 3\nsave_steps = 1\n\n\
         [lora]\nr = 4\nalpha = 8\n"
    );
    std::fs::write(&config, text).unwrap();
    vec![
        table.to_string(),
        "--config".into(),
        config.display().to_string(),
    ]
}

fn launch(port: u16, trainer: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["launch", "--nproc-per-node", "2", "--master-port"]
        .map(String::from)
        .to_vec();
    args.push(port.to_string());
    args.push("--".into());
    args.extend_from_slice(trainer);
    args
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every float parameter of the model in `dir`, flattened.
fn weights(dir: &Path) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor<Flex> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
            let values = param.val().into_data().convert::<f32>();
            self.0.extend(values.to_vec::<f32>().unwrap());
        }
    }
    let (_, model) = load_model::<Flex>(dir, &Default::default()).unwrap();
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

fn assert_same_run(one: &Path, two: &Path, keys: &[&str]) {
    assert_same_metrics(one, two, keys);
    let (wa, wb) = (weights(&one.join("final")), weights(&two.join("final")));
    assert_eq!(wa.len(), wb.len());
    let worst = wa
        .iter()
        .zip(&wb)
        .map(|(u, v)| (u - v).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "final weights differ by {worst}");
}

fn assert_same_metrics(one: &Path, two: &Path, keys: &[&str]) {
    let (a, b) = (metrics(one), metrics(two));
    assert_eq!(a.len(), b.len(), "steps logged");
    for (x, y) in a.iter().zip(&b) {
        for key in keys {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-5 * u.abs().max(1.0),
                "step {}: {key} {u} (one process) vs {v} (two ranks)",
                x["step"]
            );
        }
    }
}

#[test]
fn two_ranks_train_every_trainer_as_one_process_with_the_double_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("launch-model"));
    let (sft, prefs) = (tmp.path().join("sft.jsonl"), tmp.path().join("prefs.jsonl"));
    write_sft(&sft);
    write_prefs(&prefs);
    for (kind, data, port, keys) in [
        (
            "sft",
            &sft,
            29610,
            &["loss", "grad_norm", "mean_token_accuracy"][..],
        ),
        (
            "dpo",
            &prefs,
            29620,
            &["loss", "grad_norm", "rewards/margins"][..],
        ),
    ] {
        let one = tmp.path().join(format!("{kind}-one"));
        let two = tmp.path().join(format!("{kind}-two"));
        ok(&alignkit(trainer_args(kind, &model, data, &one, 4, 3)));
        ok(&alignkit(launch(
            port,
            &trainer_args(kind, &model, data, &two, 2, 3),
        )));
        assert_same_run(&one, &two, keys);
    }

    // A reward model: the same metrics (its extremes gathered over the ranks).
    let reward = |run: &Path, batch: usize| -> Vec<String> {
        let mut args = vec!["reward".to_string()];
        args.extend(trainer_args("train", &model, &prefs, run, batch, 3));
        args
    };
    let (one, two) = (tmp.path().join("reward-one"), tmp.path().join("reward-two"));
    ok(&alignkit(reward(&one, 4)));
    ok(&alignkit(launch(29625, &reward(&two, 2))));
    let keys = [
        "loss",
        "grad_norm",
        "accuracy",
        "margin",
        "min_reward",
        "max_reward",
    ];
    assert_same_metrics(&one, &two, &keys);

    // GRPO and RLOO: each rank samples its share of the step's prompts (the
    // same completions: seeds are per prompt and sample), advantages from all
    // ranks' rewards, the loss normalised over the whole step.
    let prompts = tmp.path().join("prompts.jsonl");
    write_prompts(&prompts);
    // PPO: rewards and advantages whitened over all ranks' tokens, each
    // mini-batch drawn from the whole step's completions, the policy's and
    // the critic's gradients summed, the KL controller fed all ranks' KL;
    // with a separate critic (the policy's weights, a fresh head) and with a
    // value head on the policy's backbone.
    let ppo = "num_ppo_epochs = 2\nnum_mini_batches = 2\nwhiten_rewards = true\n\
               adaptive_kl = { target = 0.01, horizon = 100 }";
    // (PPO's mini-batches are whole forward passes: 2 of 4 per step.)
    let runs = [
        ("grpo", "beta = 0.05", 29760, 1),
        ("rloo", "beta = 0.05", 29765, 1),
        ("ppo", ppo, 29750, 2),
        ("ppo", &format!("{ppo}\nshared_backbone = true"), 29755, 2),
    ];
    for (table, params, port, accum) in runs {
        let rl = |run: &Path, batch: usize| {
            rl_args(table, params, &model, &prompts, run, (batch / accum, accum))
        };
        let one = tmp.path().join(format!("{table}-{port}-one"));
        let two = tmp.path().join(format!("{table}-{port}-two"));
        ok(&alignkit(rl(&one, 8)));
        ok(&alignkit(launch(port, &rl(&two, 4))));
        let keys: &[&str] = match table {
            "ppo" => &[
                "loss/policy_avg",
                "loss/value_avg",
                "grad_norm",
                "critic_grad_norm",
                "objective/kl",
                "objective/scores",
                "kl_coef",
                "policy/clipfrac_avg",
                "val/num_eos_tokens",
                "episode",
                "completions/mean_length",
            ],
            _ => &[
                "loss",
                "grad_norm",
                "reward",
                "reward_std",
                "completions/mean_length",
            ],
        };
        assert_same_run(&one, &two, keys);
    }
}

/// `alignkit launch --devices cpu,cpu`: two local peers, threads of one
/// process summing through burn-collective's local level, train SFT, DPO
/// and GRPO as one process with the double batch (the tolerance of the
/// module's header: the local level's tree sums in another order); devices
/// of two backends, processes as well as peers, and LoRA dropout (one
/// random generator for both peers) are refused in one line.
#[test]
fn two_local_peers_in_one_process_train_as_one_process_with_the_double_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("peers-model"));
    let (sft, prefs, prompts) = (
        tmp.path().join("sft.jsonl"),
        tmp.path().join("prefs.jsonl"),
        tmp.path().join("prompts.jsonl"),
    );
    write_sft(&sft);
    write_prefs(&prefs);
    write_prompts(&prompts);
    let peers = |trainer: Vec<String>| -> Vec<String> {
        let mut args: Vec<String> = ["launch", "--devices", "cpu,cpu", "--"]
            .map(String::from)
            .to_vec();
        args.extend(trainer);
        args
    };
    for (kind, data, keys) in [
        (
            "sft",
            &sft,
            &["loss", "grad_norm", "mean_token_accuracy"][..],
        ),
        ("dpo", &prefs, &["loss", "grad_norm", "rewards/margins"][..]),
    ] {
        let one = tmp.path().join(format!("{kind}-one"));
        let two = tmp.path().join(format!("{kind}-peers"));
        ok(&alignkit(trainer_args(kind, &model, data, &one, 4, 3)));
        let out = ok(&alignkit(peers(trainer_args(
            kind, &model, data, &two, 2, 3,
        ))));
        assert_same_run(&one, &two, keys);
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(two.join("checkpoints/step-3/trainer_state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(state["world_size"], 2, "{state} {out:?}");
    }
    let rl = |run: &Path, batch: usize| {
        rl_args("grpo", "beta = 0.05", &model, &prompts, run, (batch, 1))
    };
    let (one, two) = (tmp.path().join("grpo-one"), tmp.path().join("grpo-peers"));
    ok(&alignkit(rl(&one, 8)));
    ok(&alignkit(peers(rl(&two, 4))));
    assert_same_run(&one, &two, &["loss", "grad_norm", "reward", "reward_std"]);

    let sft_two = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["launch"].map(String::from).to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push("--".into());
        args.extend(trainer_args(
            "sft",
            &model,
            &sft,
            &tmp.path().join("refused"),
            2,
            1,
        ));
        args
    };
    let line = refused(&alignkit(sft_two(&["--devices", "cpu,wgpu:cpu"])));
    assert!(line.contains("one backend"), "{line}");
    let line = refused(&alignkit(sft_two(&[
        "--devices",
        "cpu,cpu",
        "--nproc-per-node",
        "2",
    ])));
    assert!(line.contains("leave out --nproc-per-node"), "{line}");
    let mut dropout = sft_two(&["--devices", "cpu,cpu"]);
    dropout.extend(["--set".into(), "lora.dropout=0.1".into()]);
    // The process refuses it (the launcher then names the failed rank).
    let out = alignkit(dropout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(
        stderr.contains("lora.dropout = 0.1") && stderr.contains("--nproc-per-node"),
        "{stderr}"
    );
    assert!(!tmp.path().join("refused/checkpoints").exists());
}

/// The pids of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let path = format!("/proc/{parent}/task/{parent}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether process `pid` runs (a zombie no longer does: without a reaping
/// init, an orphan's entry stays until the container ends).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Wait (at most two minutes) until `done`.
fn wait_until(done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "waited too long"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A rank killed by SIGKILL: the launcher names it and stops the other; a
/// rank started by hand (WORLD_SIZE/RANK, as Slurm would) whose peer hangs
/// stops within its timeout with one line. Both runs resume to the weights
/// of one process.
#[test]
fn a_killed_rank_stops_the_others_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("launch-kill-model"));
    let sft = tmp.path().join("sft.jsonl");
    write_sft(&sft);
    let steps = 12;
    let one = tmp.path().join("one");
    ok(&alignkit(trainer_args("sft", &model, &sft, &one, 4, steps)));

    // Through the launcher.
    let run = tmp.path().join("launched");
    let args = launch(29630, &trainer_args("sft", &model, &sft, &run, 2, steps));
    let launcher = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(|| run.join("checkpoints/step-2").exists());
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "two ranks: {ranks:?}");
    let victim = *ranks.iter().max().unwrap();
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let out = launcher.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("(pid {victim}) was killed by signal 9 (SIGKILL)")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut resume = launch(29640, &trainer_args("sft", &model, &sft, &run, 2, steps));
    resume.push("--resume".into());
    ok(&alignkit(resume));
    assert_same_run(&one, &run, &["loss", "grad_norm"]);

    // Ctrl-C to the launcher: every rank stops at the same step and saves,
    // the launch exits as an interrupted run does, and resumes; then the
    // launcher killed outright: its ranks end too (none is left behind).
    // A long run, so that the signals come mid-run.
    let run = tmp.path().join("interrupted");
    let long = |port: u16, resume: bool| {
        let mut args = launch(port, &trainer_args("sft", &model, &sft, &run, 2, 3000));
        args.extend(["--set".into(), "train.save_steps=0".into()]);
        if resume {
            args.push("--resume".into());
        }
        Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let steps_logged =
        || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |m| m.lines().count());
    let launcher = long(29635, false);
    wait_until(|| steps_logged() >= 2);
    Command::new("kill")
        .args(["-INT", &launcher.id().to_string()])
        .status()
        .unwrap();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let saved = common::metric_steps(&run).len();
    assert!((2..3000).contains(&saved), "{saved} steps before the stop");
    assert!(
        run.join(format!("checkpoints/step-{saved}")).is_dir(),
        "{stderr}"
    );
    let mut launcher = long(29645, true);
    wait_until(|| steps_logged() > saved + 1);
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    wait_until(|| !ranks.iter().any(|&p| alive(p)));

    // Started by hand, with a short timeout: rank 0 runs the orchestrator.
    let run = tmp.path().join("by-hand");
    let rank = |r: usize| {
        Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .args(trainer_args("sft", &model, &sft, &run, 2, steps))
            .env("WORLD_SIZE", "2")
            .env("RANK", r.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", "29650")
            .env("ALIGNKIT_DIST_TIMEOUT", "5")
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let rank0 = rank(0);
    let mut rank1 = rank(1);
    wait_until(|| run.join("checkpoints/step-2").exists());
    // Rank 1 hangs (stopped, its connections open): rank 0's watchdog ends it.
    let pid = rank1.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let hung = Instant::now();
    let out = rank0.wait_with_output().unwrap();
    assert!(
        hung.elapsed() < Duration::from_secs(20),
        "{:?}",
        hung.elapsed()
    );
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: rank 0: ")
            && last.contains("no answer from the other ranks in 5 s"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut resume = launch(29660, &trainer_args("sft", &model, &sft, &run, 2, steps));
    resume.push("--resume".into());
    ok(&alignkit(resume));
    assert_same_run(&one, &run, &["loss", "grad_norm"]);
}

/// Forget `run`'s steps after `step`: its later checkpoints and `final/`.
fn rewind(run: &Path, step: usize) {
    for entry in std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let n: usize = name.trim_start_matches("step-").parse().unwrap();
        if n > step {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    std::fs::remove_dir_all(run.join("final")).unwrap();
}

/// A checkpoint of two ranks resumes in one process (with the double
/// batch, the same global batch) and the reverse; the resumed run says it is
/// no longer bit-exact, and ends where one process ends.
#[test]
fn checkpoints_move_between_one_process_and_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("launch-move-model"));
    let sft = tmp.path().join("sft.jsonl");
    write_sft(&sft);
    let one = tmp.path().join("one");
    ok(&alignkit(trainer_args("sft", &model, &sft, &one, 4, 6)));

    let two = tmp.path().join("two-then-one");
    ok(&alignkit(launch(
        29700,
        &trainer_args("sft", &model, &sft, &two, 2, 6),
    )));
    rewind(&two, 3);
    let mut resume = trainer_args("sft", &model, &sft, &two, 4, 6);
    resume.push("--resume".into());
    let (_, stderr) = ok(&alignkit(resume));
    assert!(
        stderr.contains("world_size (same global batch; no longer bit-exact) 2 → 1"),
        "{stderr}"
    );
    assert_same_run(&one, &two, &["loss", "grad_norm"]);

    let back = tmp.path().join("one-then-two");
    ok(&alignkit(trainer_args("sft", &model, &sft, &back, 4, 6)));
    rewind(&back, 3);
    let mut resume = launch(29710, &trainer_args("sft", &model, &sft, &back, 2, 6));
    resume.push("--resume".into());
    ok(&alignkit(resume));
    assert_same_run(&one, &back, &["loss", "grad_norm"]);

    // Another global batch is another run.
    rewind(&back, 3);
    let mut other = launch(29720, &trainer_args("sft", &model, &sft, &back, 4, 6));
    other.push("--resume".into());
    let out = alignkit(other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("train.batch_size"), "{stderr}");
}

#[test]
fn launches_that_cannot_work_are_refused_in_one_line_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sft = |port: &str| -> Vec<String> {
        [
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            port,
            "--",
            "sft",
            "--output-dir",
        ]
        .map(String::from)
        .into_iter()
        .chain([run.display().to_string()])
        .collect()
    };
    // The master port in use.
    let busy = std::net::TcpListener::bind("0.0.0.0:29670").unwrap();
    let line = refused(&alignkit(sft("29670")));
    assert!(
        line.contains("port 29670") && line.contains("--master-port"),
        "{line}"
    );
    drop(busy);
    // A rank's data port in use.
    let busy = std::net::TcpListener::bind("0.0.0.0:29682").unwrap();
    let line = refused(&alignkit(sft("29680")));
    assert!(
        line.contains("port 29682") && line.contains("local rank 1"),
        "{line}"
    );
    drop(busy);
    // A command that is not a trainer, a node rank out of range,
    // an unreachable master.
    let line = refused(&alignkit(["launch", "--", "generate", "--prompt", "hi"]));
    assert!(line.contains("runs a trainer"), "{line}");
    let line = refused(&alignkit([
        "launch",
        "--nnodes",
        "2",
        "--node-rank",
        "2",
        "--",
        "sft",
    ]));
    assert!(line.contains("--node-rank 2"), "{line}");
    let line = refused(&alignkit([
        "launch",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-port",
        "29690",
        "--timeout",
        "1",
        "--",
        "sft",
    ]));
    assert!(
        line.contains("cannot reach the master at 127.0.0.1:29690"),
        "{line}"
    );
    assert!(!run.exists());
    let _: PathBuf = run;
}
