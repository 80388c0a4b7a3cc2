//! What `alignkit eval winrate` found, and how it is shown: the terminal
//! table, `--json`, and the files `winrate.json`, `winrate.svg` and
//! `responses.jsonl` (`human-winrate.*` for people's judgments).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use alignkit_datasets::Turns;
use alignkit_eval::generations::GenerationSettings;
use alignkit_eval::{MeanInterval, Outcome, PairedRates, Proportion, WinRate};
use alignkit_model::checkpoint::write_atomic;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::POLICY;

/// The mean score of each side under a scoring judge.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MeanScores {
    pub policy: f64,
    pub baseline: f64,
    /// Per prompt policy − baseline: its mean and Student-t interval (the
    /// paired comparison of the scores, beside the win rate's sign test).
    pub difference: MeanInterval,
}

/// One judge's verdicts and their summary.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeResult {
    pub judge: String,
    pub result: WinRate,
    /// Per prompt, in prompt order (machine judges), or per item (people).
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    /// Reward judge: (policy, baseline) score per prompt.
    #[serde(skip)]
    pub scores: Vec<(f64, f64)>,
    /// Score judges (reward model, sentiment): each side's mean score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_scores: Option<MeanScores>,
    /// Rule judge: each side's pass rate and their paired difference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_rates: Option<PairedRates>,
    /// People: per-annotator win rates, position bias and agreement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human: Option<HumanDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HumanDetail {
    pub judgments: usize,
    pub skipped: usize,
    pub flagged: usize,
    pub annotators: Vec<(String, WinRate)>,
    /// How often the response shown first (A) won a decisive judgment.
    pub first_shown_wins: Proportion,
    /// Inter-annotator agreement from the labeler's statistics (Cohen's κ for two, Fleiss' for more).
    pub agreement: Option<alignkit_labeler::stats::Agreement>,
}

/// What `eval winrate` found.
#[derive(Debug, Clone, Serialize)]
pub struct WinrateReport {
    pub policy: String,
    pub baseline: String,
    pub prompts: usize,
    pub settings: BTreeMap<String, GenerationSettings>,
    pub judges: Vec<JudgeResult>,
    /// Generations read from the cache (true) or sampled (false), per side.
    pub cached: BTreeMap<String, bool>,
    /// The candidates file written for `--judge human`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human_candidates: Option<PathBuf>,
    /// With `--judgments`: the candidates file the judgments are about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judged_file: Option<String>,
    #[serde(skip)]
    pub rows: Vec<ResponseRow>,
}

/// One prompt with both responses, for `OUT/responses.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseRow {
    pub prompt: Turns,
    pub policy: String,
    pub baseline: String,
}

impl WinrateReport {
    /// The terminal table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let settings = self.settings.get(POLICY);
        let how = match settings {
            Some(g) if g.temperature == 0.0 => {
                format!(", greedy, at most {} new tokens", g.max_new_tokens)
            }
            Some(g) => format!(
                ", temperature {} (seed {}), at most {} new tokens",
                g.temperature, g.seed, g.max_new_tokens
            ),
            None => String::new(),
        };
        match &self.judged_file {
            Some(file) => {
                let _ = writeln!(s, "human judgments of {}: {} items", file, self.prompts);
            }
            None => {
                let _ = writeln!(
                    s,
                    "policy {} vs baseline {}: {} prompts{how}",
                    self.policy, self.baseline, self.prompts
                );
            }
        }
        let w = self
            .judges
            .iter()
            .map(|j| j.judge.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        if !self.judges.is_empty() {
            let _ = writeln!(
                s,
                "  {:<w$} {:>4} {:>4} {:>4}  {:>8}  {:<17} {:>7}  length-controlled",
                "judge", "win", "tie", "loss", "win rate", "95% CI (Wilson)", "sign p",
            );
        }
        for j in &self.judges {
            let r = &j.result;
            let lc = &r.length_controlled;
            let _ = writeln!(
                s,
                "  {:<w$} {:>4} {:>4} {:>4}  {:>8}  {:<17} {:>7}  {} [{}, {}]",
                j.judge,
                r.wins,
                r.ties,
                r.losses,
                pct(r.win_rate),
                format!("[{}, {}]", pct(r.low), pct(r.high)),
                p_value(r.sign_test_p),
                pct(lc.win_rate),
                pct(lc.low),
                pct(lc.high),
            );
        }
        if let Some(r) = self.judges.first().map(|j| &j.result) {
            let _ = writeln!(
                s,
                "  ties count half; sign test drops ties; mean length (characters): policy {:.1}, baseline {:.1}",
                r.mean_policy_len, r.mean_baseline_len
            );
        }
        for j in &self.judges {
            let Some(m) = &j.mean_scores else { continue };
            let d = &m.difference;
            let _ = writeln!(
                s,
                "  {} mean score: policy {:.4}, baseline {:.4}; paired difference {:+.4}, {:.0}% CI [{:+.4}, {:+.4}]",
                j.judge,
                m.policy,
                m.baseline,
                d.mean,
                d.level * 100.0,
                d.low,
                d.high
            );
        }
        for j in &self.judges {
            let Some(r) = &j.pass_rates else { continue };
            let rate = |p: &Proportion| {
                format!(
                    "{}/{} = {} [{}, {}]",
                    p.successes,
                    p.trials,
                    pct(p.rate),
                    pct(p.low),
                    pct(p.high)
                )
            };
            let d = &r.difference;
            let _ = writeln!(
                s,
                "  {} pass rate: policy {}, baseline {}; difference {:+.1} points, 95% CI [{:+.1}, {:+.1}] (Newcombe, paired){}",
                j.judge,
                rate(&r.a),
                rate(&r.b),
                100.0 * d.delta,
                100.0 * d.low,
                100.0 * d.high,
                if d.significant() { ", above 0" } else { "" },
            );
        }
        for j in &self.judges {
            let Some(h) = &j.human else { continue };
            let _ = writeln!(
                s,
                "  {} judgments ({} skipped, {} flagged left out); one verdict per item: the mean of its annotators'",
                h.judgments, h.skipped, h.flagged
            );
            for (a, r) in &h.annotators {
                let _ = writeln!(
                    s,
                    "    {a:<24} {:>4} {:>4} {:>4}  {:>8}  [{}, {}]",
                    r.wins,
                    r.ties,
                    r.losses,
                    pct(r.win_rate),
                    pct(r.low),
                    pct(r.high)
                );
            }
            let p = &h.first_shown_wins;
            let _ = writeln!(
                s,
                "  position bias: the first shown response won {} of {} decisive judgments ({} [{}, {}]; no bias: 50%)",
                p.successes,
                p.trials,
                pct(p.rate),
                pct(p.low),
                pct(p.high)
            );
            match &h.agreement {
                None => {
                    let _ = writeln!(s, "  agreement: no item judged by two or more annotators");
                }
                Some(a) => {
                    let (name, k) = match a.kappa {
                        alignkit_labeler::stats::Kappa::Cohen(k) => ("Cohen's kappa", k),
                        alignkit_labeler::stats::Kappa::Fleiss(k) => ("Fleiss' kappa", k),
                    };
                    let k = k.map_or("undefined".into(), |k| format!("{k:.3}"));
                    let _ = writeln!(
                        s,
                        "  agreement: {} units by {} annotators, raw {}, {name} {k}",
                        a.units,
                        a.annotators,
                        pct(a.raw)
                    );
                }
            }
        }
        if let Some(p) = &self.human_candidates {
            let _ = writeln!(s, "  human judge: candidates in {}", p.display());
        }
        s
    }

    /// Print (table or JSON) and write the files ([`WinrateReport::write_files`]).
    pub fn emit(&self, out: &Path, json: bool) -> Result<()> {
        self.write_files(out)?;
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{}", self.table());
            eprintln!("written: {}", out.join(self.file_name("json")).display());
        }
        Ok(())
    }

    /// `winrate.json` (or `human-winrate.json` for people's judgments, so that
    /// the machine judges' results beside them stay), `.svg`, and with
    /// generations `responses.jsonl`.
    fn file_name(&self, ext: &str) -> String {
        match self.judged_file {
            Some(_) => format!("human-winrate.{ext}"),
            None => format!("winrate.{ext}"),
        }
    }

    /// `OUT/winrate.json`, `OUT/winrate.svg` and `OUT/responses.jsonl` (each
    /// prompt with both responses and every judge's verdict).
    pub fn write_files(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&out.join(self.file_name("json")), text.as_bytes())?;
        if !self.rows.is_empty() {
            let mut lines = String::new();
            for (i, row) in self.rows.iter().enumerate() {
                let mut v = serde_json::to_value(row)?;
                let obj = v.as_object_mut().expect("an object");
                for j in &self.judges {
                    let mut verdict = Map::new();
                    verdict.insert("outcome".into(), serde_json::to_value(j.outcomes[i])?);
                    if let Some((p, b)) = j.scores.get(i) {
                        verdict.insert("policy_score".into(), json!(p));
                        verdict.insert("baseline_score".into(), json!(b));
                    }
                    obj.insert(j.judge.clone(), Value::Object(verdict));
                }
                writeln!(lines, "{v}").expect("writing to a string");
            }
            write_atomic(&out.join("responses.jsonl"), lines.as_bytes())?;
        }
        if !self.judges.is_empty() {
            let svg = out.join(self.file_name("svg"));
            write_svg(&svg, self).with_context(|| format!("writing {}", svg.display()))?;
        }
        Ok(())
    }
}

/// Win / tie / loss bars per judge with the win rate's Wilson interval as a whisker.
fn write_svg(path: &Path, report: &WinrateReport) -> Result<()> {
    use plotters::prelude::*;
    let n = report.judges.len();
    let height = 120 + 70 * n as u32;
    let root = SVGBackend::new(path, (800, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match &report.judged_file {
        Some(file) => format!("human judgments of {file} ({} items)", report.prompts),
        None => format!(
            "{} vs {} ({} prompts)",
            report.policy, report.baseline, report.prompts
        ),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .build_cartesian_2d(0f64..1f64, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(TRANSPARENT)
        .x_desc("share of prompts: win (green), tie (grey), loss (red); whisker: win rate, 95% Wilson CI")
        .x_label_formatter(&|x| format!("{:.0}%", 100.0 * x))
        .draw()?;
    let grey = RGBColor(190, 190, 190);
    for (i, j) in report.judges.iter().enumerate() {
        let r = &j.result;
        let y = (n - 1 - i) as f64;
        let total = r.n.max(1) as f64;
        let (w, t) = (r.wins as f64 / total, r.ties as f64 / total);
        let bars = [
            (0.0, w, GREEN.mix(0.6)),
            (w, w + t, grey.mix(0.9)),
            (w + t, 1.0, RED.mix(0.6)),
        ];
        chart.draw_series(
            bars.into_iter()
                .filter(|(a, b, _)| b > a)
                .map(|(a, b, c)| Rectangle::new([(a, y + 0.25), (b, y + 0.65)], c.filled())),
        )?;
        let mid = y + 0.45;
        chart.draw_series([
            PathElement::new(vec![(r.low, mid), (r.high, mid)], BLACK.stroke_width(2)),
            PathElement::new(
                vec![(r.low, mid - 0.08), (r.low, mid + 0.08)],
                BLACK.stroke_width(2),
            ),
            PathElement::new(
                vec![(r.high, mid - 0.08), (r.high, mid + 0.08)],
                BLACK.stroke_width(2),
            ),
        ])?;
        chart.draw_series([Circle::new((r.win_rate, mid), 4, BLACK.filled())])?;
        chart.draw_series([Text::new(
            format!(
                "{}: {} [{}, {}], LC {}",
                j.judge,
                pct(r.win_rate),
                pct(r.low),
                pct(r.high),
                pct(r.length_controlled.win_rate)
            ),
            (0.01, y + 0.92),
            ("sans-serif", 13),
        )])?;
    }
    chart.draw_series([PathElement::new(
        vec![(0.5, 0.0), (0.5, n as f64)],
        BLACK.mix(0.5),
    )])?;
    root.present()?;
    Ok(())
}

/// Three decimals, or two significant digits below 0.001 (a 60–0 split is not "0.000").
fn p_value(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}
