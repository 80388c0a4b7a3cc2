//! `alignkit eval frontier RUN_DIR...`: the reward-versus-KL frontier of
//! several runs, read from what the runs measured — `eval.jsonl` of an RL run
//! with an `[eval]` table (one point per evaluation: the held-out reward and
//! the Monte-Carlo sequence KL to the reference), or `drift-step-N.json`
//! reports of `alignkit eval drift --score ... --json` for other runs (DPO).
//! Writes `frontier.svg` (KL on x, reward on y, one colour per method, a line
//! through each run's points in step order) and `frontier.md` (per run, the
//! best reward among its points with KL within each budget), and prints the
//! table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

#[derive(Args, Clone)]
pub struct FrontierArgs {
    /// Run directories (each with config.toml and eval.jsonl or drift-step-N.json).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where frontier.svg and frontier.md go.
    #[arg(long)]
    pub out: PathBuf,
    /// KL budgets (nats per completion) of the table's columns.
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    pub budgets: Vec<f64>,
}

/// One run: its method, KL knob, seed and measured points.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPoints {
    pub dir: PathBuf,
    /// `ppo`, `ppo-rm` (PPO on a learned reward model), `grpo`, `rloo`, `dpo`.
    pub method: String,
    /// β (GRPO, RLOO, DPO) or kl_coef (PPO).
    pub knob: f64,
    pub seed: u64,
    /// (step, KL, reward), in step order.
    pub points: Vec<(usize, f64, f64)>,
    /// Text statistics of the last point's completions, when measured.
    pub last_text: Option<alignkit_eval::TextStats>,
}

impl RunPoints {
    /// The best reward among points with KL ≤ `budget`.
    pub fn best_within(&self, budget: f64) -> Option<f64> {
        self.points
            .iter()
            .filter(|p| p.1 <= budget)
            .map(|p| p.2)
            .max_by(f64::total_cmp)
    }
}

/// Read one run directory.
pub fn read_run(dir: &Path) -> Result<RunPoints> {
    let config_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: not a run directory", config_path.display()))?;
    let config: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", config_path.display()))?;
    let num =
        |v: Option<&toml::Value>| v.and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)));
    let learned_reward = config
        .get("rewards")
        .and_then(toml::Value::as_array)
        .is_some_and(|r| {
            r.iter()
                .any(|r| r.get("kind").and_then(toml::Value::as_str) == Some("model"))
        });
    let table = |name: &str| config.get(name).and_then(toml::Value::as_table);
    let (method, knob) = if let Some(t) = table("ppo") {
        let m = if learned_reward { "ppo-rm" } else { "ppo" };
        (m.to_string(), num(t.get("kl_coef")))
    } else if let Some(t) = table("grpo") {
        ("grpo".into(), num(t.get("beta")))
    } else if let Some(t) = table("rloo") {
        ("rloo".into(), num(t.get("beta")))
    } else if config.contains_key("loss_type") {
        ("dpo".into(), num(config.get("beta")))
    } else {
        bail!(
            "{}: neither an RL ([grpo], [rloo], [ppo]) nor a DPO config",
            config_path.display()
        );
    };
    let knob = knob.with_context(|| format!("{}: no KL knob", config_path.display()))?;
    let seed = config
        .get("train")
        .and_then(|t| t.get("seed"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(0) as u64;
    let mut points = Vec::new();
    // (step, the text statistics of that point)
    let mut texts: Vec<(usize, alignkit_eval::TextStats)> = Vec::new();
    let eval = dir.join(alignkit_ppo::metrics::EVAL_FILE);
    if eval.is_file() {
        let text = std::fs::read_to_string(&eval)?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", eval.display(), i + 1))?;
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .with_context(|| format!("{}:{}: no `{k}`", eval.display(), i + 1))
            };
            let step = get("step")? as usize;
            points.push((step, get("eval/kl")?, get("eval/reward")?));
            if let Some(t) = text_stats(v.get("eval/text")) {
                texts.push((step, t));
            }
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(step) = name
            .strip_prefix("drift-step-")
            .and_then(|s| s.strip_suffix(".json"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| path.display().to_string())?;
        let kl = v.pointer("/kl/mean").and_then(Value::as_f64);
        let score = v.pointer("/score/mean").and_then(Value::as_f64);
        if let Some(t) = text_stats(v.get("text_stats")) {
            texts.push((step, t));
        }
        match (kl, score) {
            (Some(kl), Some(score)) => points.push((step, kl, score)),
            _ => bail!(
                "{}: a drift report with a score (alignkit eval drift --score ... --json)",
                path.display()
            ),
        }
    }
    if points.is_empty() {
        bail!(
            "{}: no eval.jsonl (an RL run with an [eval] table) and no drift-step-N.json",
            dir.display()
        );
    }
    points.sort_by_key(|p| p.0);
    let last = points.last().map(|p| p.0);
    let last_text = texts.into_iter().find(|t| Some(t.0) == last).map(|t| t.1);
    Ok(RunPoints {
        dir: dir.to_path_buf(),
        method,
        knob,
        seed,
        points,
        last_text,
    })
}

fn text_stats(v: Option<&Value>) -> Option<alignkit_eval::TextStats> {
    let v = v?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    Some(alignkit_eval::TextStats {
        exclamation_share: f("exclamation_share")?,
        caps_word_share: f("caps_word_share")?,
        distinct_2: f("distinct_2")?,
        mean_chars: f("mean_chars")?,
    })
}

/// The Markdown table: one row per run.
pub fn table(runs: &[RunPoints], budgets: &[f64]) -> String {
    let mut s = String::from("| method | KL knob | seed | points | ");
    for b in budgets {
        let _ = write!(s, "best reward at KL ≤ {b} | ");
    }
    s.push_str(
        "last KL | last reward | ! share | CAPS words | distinct-2 | chars |\n|---|---|---|---|",
    );
    for _ in budgets {
        s.push_str("---|");
    }
    s.push_str("---|---|---|---|---|---|\n");
    for r in runs {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | ",
            r.method,
            r.knob,
            r.seed,
            r.points.len()
        );
        for &b in budgets {
            match r.best_within(b) {
                Some(v) => {
                    let _ = write!(s, "{v:.3} | ");
                }
                None => s.push_str("— | "),
            }
        }
        let last = r
            .points
            .last()
            .expect("read_run refuses runs without points");
        let _ = write!(s, "{:.2} | {:.3} |", last.1, last.2);
        match &r.last_text {
            Some(t) => {
                let _ = writeln!(
                    s,
                    " {:.4} | {:.4} | {:.3} | {:.0} |",
                    t.exclamation_share, t.caps_word_share, t.distinct_2, t.mean_chars
                );
            }
            None => s.push_str(" — | — | — | — |\n"),
        }
    }
    s
}

fn draw(runs: &[RunPoints], svg: &Path) -> Result<()> {
    use plotters::prelude::*;
    let all = runs.iter().flat_map(|r| r.points.iter());
    let (mut x_hi, mut y_lo, mut y_hi) = (1e-3f64, f64::INFINITY, f64::NEG_INFINITY);
    let mut x_lo = 0f64;
    for p in all {
        x_lo = x_lo.min(p.1);
        x_hi = x_hi.max(p.1);
        y_lo = y_lo.min(p.2);
        y_hi = y_hi.max(p.2);
    }
    let pad = ((y_hi - y_lo) * 0.05).max(1e-3);
    let root = SVGBackend::new(svg, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("reward against KL to the reference", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi * 1.05, (y_lo - pad)..(y_hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("sequence KL(π ‖ π_ref), nats")
        .y_desc("held-out reward")
        .draw()?;
    let methods: Vec<&str> = {
        let mut m: Vec<&str> = runs.iter().map(|r| r.method.as_str()).collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    let colour = |m: &str| -> RGBColor {
        let c = Palette99::pick(methods.iter().position(|x| *x == m).unwrap_or(0)).to_rgba();
        RGBColor(c.0, c.1, c.2)
    };
    let mut labelled = BTreeMap::new();
    for r in runs {
        let c = colour(&r.method);
        let pts: Vec<(f64, f64)> = r.points.iter().map(|p| (p.1, p.2)).collect();
        let line = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(1)))?;
        if labelled.insert(r.method.clone(), ()).is_none() {
            let c2 = c;
            line.label(r.method.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c2.stroke_width(3))
            });
        }
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn run(args: FrontierArgs) -> Result<()> {
    if args.budgets.iter().any(|b| !(b.is_finite() && *b >= 0.0)) {
        bail!("--budgets: non-negative numbers, e.g. 2,5,10");
    }
    let mut runs = args
        .runs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    runs.sort_by(|a, b| {
        (a.method.as_str(), a.seed)
            .cmp(&(b.method.as_str(), b.seed))
            .then(a.knob.total_cmp(&b.knob))
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let svg = args.out.join("frontier.svg");
    draw(&runs, &svg).with_context(|| format!("writing {}", svg.display()))?;
    let md = table(&runs, &args.budgets);
    let md_path = args.out.join("frontier.md");
    alignkit_model::checkpoint::write_atomic(&md_path, md.as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    print!("{md}");
    eprintln!("wrote {} and {}", svg.display(), md_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(root: &Path, name: &str, config: &str, eval: &[(usize, f64, f64)]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let lines: String = eval
            .iter()
            .map(|(s, kl, r)| {
                format!(
                    "{}\n",
                    serde_json::json!({"step": s, "eval/kl": kl, "eval/reward": r})
                )
            })
            .collect();
        std::fs::write(dir.join("eval.jsonl"), lines).unwrap();
        dir
    }

    /// Methods and knobs come from the configs; the best reward within each
    /// budget is read off the points; a DPO run's drift reports are points too.
    #[test]
    fn runs_are_read_and_tabulated_per_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let ppo = run_dir(
            tmp.path(),
            "ppo",
            "[ppo]\nkl_coef = 0.1\n[train]\nseed = 7\n[[rewards]]\nkind = \"sentiment\"\n",
            &[
                (0, 0.0, 0.1),
                (5, 1.5, 0.3),
                (10, 4.0, 0.5),
                (15, 12.0, 0.9),
            ],
        );
        let rm = run_dir(
            tmp.path(),
            "rm",
            "[ppo]\nkl_coef = 0.05\n[[rewards]]\nkind = \"model\"\npath = \"x\"\n",
            &[(0, 0.0, 0.1)],
        );
        let dpo = tmp.path().join("dpo");
        std::fs::create_dir_all(&dpo).unwrap();
        std::fs::write(
            dpo.join("config.toml"),
            "beta = 0.2\nloss_type = \"sigmoid\"\n",
        )
        .unwrap();
        std::fs::write(
            dpo.join("drift-step-20.json"),
            r#"{"kl": {"mean": 3.0}, "score": {"mean": 0.4}, "text_stats": {"exclamation_share": 0.01, "caps_word_share": 0.05, "distinct_2": 0.9, "mean_chars": 80.0}}"#,
        )
        .unwrap();
        let runs: Vec<RunPoints> = [&ppo, &rm, &dpo]
            .iter()
            .map(|d| read_run(d).unwrap())
            .collect();
        assert_eq!(
            (runs[0].method.as_str(), runs[0].knob, runs[0].seed),
            ("ppo", 0.1, 7)
        );
        assert_eq!(runs[1].method, "ppo-rm");
        assert_eq!((runs[2].method.as_str(), runs[2].knob), ("dpo", 0.2));
        assert_eq!(runs[2].points, [(20, 3.0, 0.4)]);
        assert_eq!(runs[0].best_within(2.0), Some(0.3));
        assert_eq!(runs[0].best_within(5.0), Some(0.5));
        assert_eq!(runs[0].best_within(10.0), Some(0.5));
        assert_eq!(runs[2].best_within(2.0), None);
        let t = table(&runs, &[2.0, 5.0, 10.0]);
        assert!(
            t.contains("| ppo | 0.1 | 7 | 4 | 0.300 | 0.500 | 0.500 | 12.00 | 0.900 |"),
            "{t}"
        );
        assert!(
            t.contains("| dpo | 0.2 | 0 | 1 | — | 0.400 | 0.400 | 3.00 | 0.400 |"),
            "{t}"
        );
        draw(&runs, &tmp.path().join("f.svg")).unwrap();
        let svg = std::fs::read_to_string(tmp.path().join("f.svg")).unwrap();
        assert!(svg.contains("ppo-rm") && svg.contains("dpo"), "legend");

        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("config.toml"), "[grpo]\nbeta = 0.1\n").unwrap();
        let err = read_run(&empty).unwrap_err().to_string();
        assert!(err.contains("no eval.jsonl"), "{err}");
    }
}
