//! `alignkit generate --prompts ... --out` and `alignkit eval winrate|drift` on
//! tiny random models: candidates the labeler reads, resumption without
//! duplicates, the context cap, cached generations, each judge, the human
//! round trip through the labeler's judgment log, and one-line refusals.

use std::path::{Path, PathBuf};
use std::process::Output;

use alignkit_labeler::{
    Decision, JudgeMode, Judgment, JudgmentLog, Record, Response, load_candidates,
};
use alignkit_model::SaveDtype;
use alignkit_model::heads::{reward_model_from_causal_lm, save_reward_model};
use burn::backend::Flex;
use serde_json::{Value, json};

mod common;
use common::{alignkit, ok, refused, tiny_model};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Prompts with a reference `answer` field.
/// Replace the text of `model`'s cached responses in `out/generations`
/// (response i gets `text(i)`), so that a judge reads known responses.
fn rewrite_cached_responses(out: &Path, model: &Path, text: impl Fn(usize) -> String) {
    let cache = std::fs::read_dir(out.join("generations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| read_json(f)["model"] == s(model))
        .unwrap();
    let mut g = read_json(&cache);
    for (i, r) in g["responses"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        r["text"] = json!(text(i));
    }
    std::fs::write(&cache, g.to_string()).unwrap();
}

fn prompts(path: &Path, n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"prompt": format!("q{i}: what is {i} plus {i}?"), "answer": (2 * i).to_string()})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    path.to_path_buf()
}

/// A copy of a tiny model whose tokenizer maps the characters to other ids.
fn other_tokenizer(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let path = to.join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let n = vocab.len() as u64;
    for (_, id) in vocab.iter_mut() {
        let i = id.as_u64().unwrap();
        if i >= 3 {
            *id = json!(3 + (n - 1 - i));
        }
    }
    std::fs::write(&path, tok.to_string()).unwrap();
    to.to_path_buf()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn generate_writes_candidates_the_labeler_reads_and_resumes_without_duplicates() {
    let root = tempfile::tempdir().unwrap();
    let a = tiny_model(&root.path().join("a"));
    let b = tiny_model(&root.path().join("b"));
    let p = prompts(&root.path().join("p.jsonl"), 5);
    let out = root.path().join("cand.jsonl");
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--prompts",
            s(&p),
            "--model",
            s(&a),
            "--model",
            s(&b),
            "--num-samples",
            "2",
            "--temperature",
            "0.8",
            "--seed",
            "3",
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        alignkit(&args)
    };
    ok(&run(&out, &[]));
    let full = std::fs::read_to_string(&out).unwrap();
    let loaded = load_candidates(&out).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(loaded.items.len(), 5);
    for item in &loaded.items {
        let sources: Vec<_> = item
            .responses
            .iter()
            .map(|r| r.source.clone().unwrap())
            .collect();
        assert_eq!(sources, [s(&a), s(&a), s(&b), s(&b)]);
    }
    let first: Value = serde_json::from_str(full.lines().next().unwrap()).unwrap();
    assert_eq!(first["generation"]["temperature"], json!(0.8f32));
    assert_eq!(first["generation"]["num_samples"], 2);

    // Interrupted after the first batch, in the middle of writing the second.
    let lines: Vec<&str> = full.lines().collect();
    let torn = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]);
    let resumed = root.path().join("resumed.jsonl");
    std::fs::write(&resumed, torn).unwrap();
    let (_, stderr) = ok(&run(&resumed, &[]));
    assert!(stderr.contains("incomplete last line"), "{stderr}");
    assert!(stderr.contains("2 of 5 items already written"), "{stderr}");
    // The same items, the same samples (batches are seeded by position), no duplicate.
    assert_eq!(std::fs::read_to_string(&resumed).unwrap(), full);

    // Nothing left to do; the file is untouched.
    let (_, stderr) = ok(&run(&out, &[]));
    assert!(stderr.contains("0 item(s) written"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), full);

    // Other settings would mix two experiments in one file.
    let err = refused(&run(&out, &["--top-k", "5"]));
    assert!(
        err.contains("other settings") && err.contains("top_k"),
        "{err}"
    );

    // The labeler's limits and greedy duplicates are refused up front.
    let err = refused(&alignkit([
        "generate",
        "--prompts",
        s(&p),
        "--model",
        s(&a),
        "--out",
        s(&root.path().join("x.jsonl")),
    ]));
    assert!(err.contains("2 to 9 responses"), "{err}");
    let err = refused(&alignkit([
        "generate",
        "--prompts",
        s(&p),
        "--model",
        s(&a),
        "--num-samples",
        "2",
        "--out",
        s(&root.path().join("x.jsonl")),
    ]));
    assert!(err.contains("greedy"), "{err}");
}

#[test]
fn generate_caps_at_the_context_and_checks_its_flags() {
    let root = tempfile::tempdir().unwrap();
    let a = tiny_model(&root.path().join("a"));
    // The tiny model's context is 256 tokens; "hi" is 2 (no BOS).
    let out = alignkit([
        "generate",
        "--model",
        s(&a),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "100000",
        "--json",
    ]);
    let (stdout, stderr) = ok(&out);
    assert!(
        stderr.contains("--max-new-tokens 100000 capped at 254"),
        "{stderr}"
    );
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line["tokens"].as_array().unwrap().len() <= 254);

    // Interactive: the text streams to stdout and ends with a newline.
    let (stdout, _) = ok(&alignkit([
        "generate",
        "--model",
        s(&a),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "5",
    ]));
    assert!(stdout.ends_with('\n'));

    let nowhere = "/nonexistent/model";
    let err = refused(&alignkit([
        "generate",
        "--model",
        nowhere,
        "--prompt",
        "x",
        "--temperature",
        "-1",
    ]));
    assert!(err.contains("--temperature must be >= 0"), "{err}");
    let err = refused(&alignkit([
        "generate", "--model", nowhere, "--prompt", "x", "--system", "be brief",
    ]));
    assert!(err.contains("--system needs --chat"), "{err}");
    let err = refused(&alignkit([
        "generate", "--model", nowhere, "--prompt", "x", "--stop", "",
    ]));
    assert!(err.contains("--stop"), "{err}");
    let err = refused(&alignkit([
        "generate", "--model", nowhere, "--prompt", "x", "--top-p", "-0.5",
    ]));
    assert!(err.contains("--top-p"), "{err}");
}

fn winrate(extra: &[&str]) -> Output {
    let mut args = vec!["eval", "winrate"];
    args.extend_from_slice(extra);
    alignkit(&args)
}

#[test]
fn winrate_caches_generations_and_judges_with_rules() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let baseline = tiny_model(&root.path().join("baseline"));
    let p = prompts(&root.path().join("p.jsonl"), 6);
    let out = root.path().join("ev");
    let args = [
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&p),
        "--judge",
        "rule:exact=answer",
        "--judge",
        "rule:regex=^[0-9]+$",
        "--max-new-tokens",
        "8",
        "--out",
        s(&out),
        "--json",
    ];
    let (stdout, stderr) = ok(&winrate(&args));
    assert!(stderr.contains("policy: 6 responses generated"), "{stderr}");
    let first: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(first["cached"]["policy"], false);
    assert_eq!(first["judges"].as_array().unwrap().len(), 2);
    assert!(out.join("winrate.svg").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("responses.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );

    // Again: no generation at all; the same numbers.
    let (stdout, stderr) = ok(&winrate(&args));
    assert!(
        stderr.contains("policy: 6 responses from the cache"),
        "{stderr}"
    );
    assert!(
        stderr.contains("baseline: 6 responses from the cache"),
        "{stderr}"
    );
    assert!(!stderr.contains("generated"), "{stderr}");
    let second: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(second["cached"]["policy"], true);
    assert_eq!(first["judges"], second["judges"]);

    // The judges read what the cache holds: give the policy the reference answers.
    rewrite_cached_responses(&out, &policy, |i| (2 * i).to_string());
    let (stdout, _) = ok(&winrate(&args));
    let third: Value = serde_json::from_str(&stdout).unwrap();
    let exact = &third["judges"][0]["result"];
    assert_eq!(third["judges"][0]["judge"], "rule:exact=answer");
    // A random character model never writes "0".."10" exactly; every prompt is a win.
    assert_eq!(exact["wins"], 6, "{exact}");
    assert_eq!(exact["win_rate"], 1.0);
    // 6 wins, 0 losses: p = 2 / 64.
    assert!((exact["sign_test_p"].as_f64().unwrap() - 2.0 / 64.0).abs() < 1e-12);
    // Each side's pass rate and their paired difference: 6/6 against 0/6.
    let rates = &third["judges"][0]["pass_rates"];
    assert_eq!(rates["a"]["successes"], 6, "{rates}");
    assert_eq!(rates["b"]["successes"], 0, "{rates}");
    assert_eq!(rates["only_a"], 6);
    assert_eq!(rates["difference"]["delta"], 1.0);
    assert!(
        rates["difference"]["low"].as_f64().unwrap() > 0.0,
        "{rates}"
    );
    let table_args: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let (table, _) = ok(&winrate(&table_args));
    assert!(
        table.contains("rule:exact=answer pass rate: policy 6/6 = 100.0%")
            && table.contains("baseline 0/6 = 0.0%")
            && table.contains("difference +100.0 points")
            && table.contains("(Newcombe, paired), above 0"),
        "{table}"
    );

    // A new sampling setting is a new cache entry.
    let mut changed = args.to_vec();
    let at = changed.iter().position(|a| *a == "8").unwrap();
    changed[at] = "9";
    let (_, stderr) = ok(&winrate(&changed));
    assert!(stderr.contains("policy: 6 responses generated"), "{stderr}");
}

/// `--judge sentiment` scores both sides with VADER: a policy whose cached
/// responses are warm praise beats a random character model on every prompt.
#[test]
fn winrate_judges_sentiment() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let baseline = tiny_model(&root.path().join("baseline"));
    let p = prompts(&root.path().join("p.jsonl"), 4);
    let out = root.path().join("ev");
    let args = [
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&p),
        "--judge",
        "sentiment",
        "--max-new-tokens",
        "6",
        "--out",
        s(&out),
        "--json",
    ];
    ok(&winrate(&args));
    rewrite_cached_responses(&out, &policy, |_| {
        "What a wonderful, delightful film. I loved it!".to_string()
    });
    let (stdout, _) = ok(&winrate(&args));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let judge = &report["judges"][0];
    assert_eq!(judge["judge"], "sentiment");
    assert_eq!(judge["result"]["wins"], 4, "{judge}");
    let mean = &judge["mean_scores"];
    assert!(mean["policy"].as_f64().unwrap() > 0.8, "{mean}");
    assert!(mean["baseline"].as_f64().unwrap().abs() < 0.5, "{mean}");
    // The paired difference: its mean is the difference of the means, and
    // its interval lies above 0 when the policy wins on every prompt.
    let d = &mean["difference"];
    let gap = mean["policy"].as_f64().unwrap() - mean["baseline"].as_f64().unwrap();
    assert!((d["mean"].as_f64().unwrap() - gap).abs() < 1e-12, "{d}");
    assert_eq!(d["n"], 4);
    assert!(d["low"].as_f64().unwrap() > 0.0, "{d}");
}

#[test]
fn winrate_allows_different_tokenizers_and_scores_with_a_reward_model() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let baseline = other_tokenizer(&policy, &root.path().join("baseline"));
    let p = prompts(&root.path().join("p.jsonl"), 4);
    let device = Default::default();
    let (config, rm) = reward_model_from_causal_lm::<Flex>(&policy, &device).unwrap();
    let rm_dir = root.path().join("rm");
    save_reward_model(&rm, &config, &rm_dir, SaveDtype::F32).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(policy.join(f), rm_dir.join(f)).unwrap();
    }
    let judge = format!("reward:{}", s(&rm_dir));
    let ev = root.path().join("ev");
    let base = [
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&p),
        "--judge",
        &judge,
        "--max-new-tokens",
        "6",
        "--json",
        "--out",
        s(&ev),
    ];
    let (stdout, _) = ok(&winrate(&base));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let r = &report["judges"][0]["result"];
    assert_eq!(r["n"], 4);
    // Same weights, different tokenizers: the two sides read the prompts differently.
    let rows: Vec<Value> = std::fs::read_to_string(root.path().join("ev/responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().any(|r| r["policy"] != r["baseline"]),
        "{rows:?}"
    );
    for row in &rows {
        let v = &row[&judge];
        let diff = v["policy_score"].as_f64().unwrap() - v["baseline_score"].as_f64().unwrap();
        let expected = if diff > 0.0 {
            "win"
        } else if diff < 0.0 {
            "loss"
        } else {
            "tie"
        };
        assert_eq!(v["outcome"], expected, "{row}");
    }
    // A margin wider than any reward difference makes every prompt a tie: 50%.
    let mut wide = base.to_vec();
    wide.extend(["--tie-margin", "1000"]);
    let (stdout, _) = ok(&winrate(&wide));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let r = &report["judges"][0]["result"];
    assert_eq!(
        (r["ties"].as_u64(), r["win_rate"].as_f64()),
        (Some(4), Some(0.5))
    );
    assert_eq!(r["sign_test_p"], 1.0);
}

/// A pairwise judgment of `item` in the labeler's format, shown in `shown` order.
fn judgment(
    item: &alignkit_labeler::Item,
    annotator: &str,
    shown: Vec<usize>,
    decision: Decision,
) -> Record {
    Record::Judgment(Judgment {
        rid: format!("{annotator}-{}", item.id),
        item: item.id.clone(),
        annotator: annotator.into(),
        ts: "2026-01-01T00:00:00.000Z".into(),
        mode: JudgeMode::Pairwise,
        seed: 0,
        shown,
        decision,
        note: String::new(),
        rationale: String::new(),
        flagged: false,
        duration_ms: 500,
        supersedes: None,
        prompt: item.prompt.clone(),
        responses: item
            .responses
            .iter()
            .map(|r| Response {
                text: r.text.clone(),
                source: r.source.clone(),
            })
            .collect(),
    })
}

#[test]
fn human_judgments_map_shown_positions_back_to_policy_and_baseline() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let baseline = tiny_model(&root.path().join("baseline"));
    let p = prompts(&root.path().join("p.jsonl"), 8);
    let out = root.path().join("ev");
    let (_, stderr) = ok(&winrate(&[
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&p),
        "--judge",
        "human",
        "--max-new-tokens",
        "6",
        "--out",
        s(&out),
    ]));
    assert!(stderr.contains("alignkit label"), "{stderr}");
    let candidates = out.join("human-candidates.jsonl");
    let items = load_candidates(&candidates).unwrap().items;
    assert_eq!(items.len(), 8);
    // Blind and shuffled: the policy is first in some items and second in others.
    let policy_first = items
        .iter()
        .filter(|i| i.responses[0].source.as_deref() == Some("policy"))
        .count();
    assert!(policy_first > 0 && policy_first < 8, "{policy_first}");

    // alice always picks the policy, whichever position it is shown in; the
    // labeler shows the two in a random order of its own too.
    let judgments = root.path().join("j.jsonl");
    let (mut log, _) = JudgmentLog::open(&judgments).unwrap();
    for (k, item) in items.iter().enumerate() {
        let shown = if k % 3 == 0 { vec![1, 0] } else { vec![0, 1] };
        let first_is_policy = item.responses[shown[0]].source.as_deref() == Some("policy");
        let d = if first_is_policy {
            Decision::A
        } else {
            Decision::B
        };
        log.append(&judgment(item, "alice", shown, d)).unwrap();
    }
    drop(log);
    let (stdout, _) = ok(&winrate(&[
        "--judgments",
        s(&judgments),
        "--out",
        s(&out),
        "--json",
    ]));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let r = &report["judges"][0]["result"];
    assert_eq!(
        (r["wins"].as_u64(), r["win_rate"].as_f64()),
        (Some(8), Some(1.0)),
        "{r}"
    );
    // Beside, not over, what the machine judges wrote.
    assert!(out.join("human-winrate.svg").is_file());
    assert!(out.join("human-winrate.json").is_file());

    // bob always picks what is shown first: pure position bias, and he disagrees
    // with alice wherever the policy was shown second.
    let (mut log, _) = JudgmentLog::open(&judgments).unwrap();
    for item in &items {
        log.append(&judgment(item, "bob", vec![0, 1], Decision::A))
            .unwrap();
    }
    drop(log);
    let (stdout, _) = ok(&winrate(&[
        "--judgments",
        s(&judgments),
        "--candidates",
        s(&candidates),
        "--json",
    ]));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let human = &report["judges"][0]["human"];
    let annotators = human["annotators"].as_array().unwrap();
    assert_eq!(annotators[0][0], "alice");
    assert_eq!(annotators[0][1]["win_rate"], 1.0);
    assert_eq!(annotators[1][1]["wins"].as_u64(), Some(policy_first as u64));
    // Per item: alice's win and bob's verdict averaged; a tie where bob picked the baseline.
    let r = &report["judges"][0]["result"];
    assert_eq!(r["wins"].as_u64(), Some(policy_first as u64));
    assert_eq!(r["ties"].as_u64(), Some(8 - policy_first as u64));
    let first_shown = &human["first_shown_wins"];
    let alice_first = items
        .iter()
        .enumerate()
        .filter(|(k, i)| {
            let shown0 = if k % 3 == 0 { 1 } else { 0 };
            i.responses[shown0].source.as_deref() == Some("policy")
        })
        .count();
    assert_eq!(
        first_shown["successes"].as_u64(),
        Some(8 + alice_first as u64)
    );
    assert_eq!(first_shown["trials"], 16);
    assert_eq!(human["agreement"]["annotators"], 2);

    // Judgments of another candidates file are refused.
    let other_p = root.path().join("other.jsonl");
    std::fs::write(
        &other_p,
        "{\"prompt\": \"something else\"}\n{\"prompt\": \"and more\"}\n",
    )
    .unwrap();
    let other = root.path().join("ev2");
    ok(&winrate(&[
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&other_p),
        "--judge",
        "human",
        "--max-new-tokens",
        "4",
        "--out",
        s(&other),
    ]));
    let err = refused(&winrate(&[
        "--judgments",
        s(&judgments),
        "--candidates",
        s(&other.join("human-candidates.jsonl")),
    ]));
    assert!(err.contains("another candidates file"), "{err}");
}

#[test]
fn bad_winrate_input_is_one_line() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let empty = root.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let err = refused(&winrate(&[
        "--policy",
        s(&policy),
        "--baseline",
        s(&policy),
        "--prompts",
        s(&empty),
        "--judge",
        "rule:one-sentence",
        "--out",
        s(&root.path().join("ev")),
    ]));
    // Named with the file, by the reader of every JSONL file.
    assert!(
        err.contains("empty.jsonl") && err.contains("no JSON records"),
        "{err}"
    );
    let no_field = root.path().join("p.jsonl");
    std::fs::write(&no_field, "{\"prompt\": \"hi\"}\n").unwrap();
    let err = refused(&winrate(&[
        "--policy",
        s(&policy),
        "--baseline",
        s(&policy),
        "--prompts",
        s(&no_field),
        "--judge",
        "rule:exact=answer",
        "--out",
        s(&root.path().join("ev")),
    ]));
    assert!(err.contains(":1:") && err.contains("answer"), "{err}");
    let err = refused(&winrate(&[
        "--policy",
        s(&policy),
        "--baseline",
        s(&policy),
        "--prompts",
        s(&no_field),
        "--judge",
        "rule:regex=(",
        "--out",
        s(&root.path().join("ev")),
    ]));
    assert!(err.contains("regex=("), "{err}");
    let err = refused(&winrate(&[
        "--judgments",
        s(&root.path().join("j.jsonl")),
        "--out",
        s(&root.path().join("none")),
    ]));
    assert!(
        err.contains("--judgments") && err.contains("j.jsonl: the file does not exist"),
        "{err}"
    );
}

#[test]
fn drift_is_zero_against_itself_and_needs_one_vocabulary() {
    let root = tempfile::tempdir().unwrap();
    let policy = tiny_model(&root.path().join("policy"));
    let p = prompts(&root.path().join("p.jsonl"), 3);
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/general-text.txt");
    let (stdout, _) = ok(&alignkit([
        "eval",
        "drift",
        "--policy",
        s(&policy),
        "--reference",
        s(&policy),
        "--prompts",
        s(&p),
        "--text",
        text,
        "--num-samples",
        "2",
        "--max-new-tokens",
        "8",
        "--json",
    ]));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["samples"], 6);
    assert_eq!(report["kl"]["mean"], 0.0);
    let t = &report["text"];
    assert!(t["policy"]["tokens"].as_u64().unwrap() > 1000, "{t}");
    assert_eq!(t["policy_nll_per_token"], t["reference_nll_per_token"]);
    // A random character-level model: near-uniform over 96 tokens.
    let ppl = t["policy_perplexity"].as_f64().unwrap();
    assert!(ppl > 30.0 && ppl < 300.0, "{ppl}");
    assert!(
        report.get("score").is_none(),
        "no --score, no score: {report}"
    );

    // --score sentiment scores the same samples: one VADER score each.
    let (stdout, _) = ok(&alignkit([
        "eval",
        "drift",
        "--policy",
        s(&policy),
        "--reference",
        s(&policy),
        "--prompts",
        s(&p),
        "--num-samples",
        "2",
        "--max-new-tokens",
        "8",
        "--score",
        "sentiment",
    ]));
    assert!(
        stdout.contains("sentiment (VADER compound) of the same samples: mean "),
        "{stdout}"
    );

    let other = other_tokenizer(&policy, &root.path().join("other"));
    let err = refused(&alignkit([
        "eval",
        "drift",
        "--policy",
        s(&policy),
        "--reference",
        s(&other),
        "--prompts",
        s(&p),
    ]));
    assert!(err.contains("different tokenizers"), "{err}");
}
