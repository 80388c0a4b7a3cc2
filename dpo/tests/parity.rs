//! Parity with TRL's DPO formulas on a tiny model (fixture from
//! scripts/fixtures_dpo.py, computed with torch in f32): completion log-prob
//! sums of policy and reference, and for every loss variant the per-pair
//! losses, the batch loss and every logged metric, within 1e-5.

use std::path::{Path, PathBuf};

use alignkit_datasets::{PaddingSide, PreferenceExample, Truncation, collate_pairs};
use alignkit_dpo::{DpoLoss, DpoObjective, DpoSums, completion_logps, dpo_loss};
use alignkit_model::load_model;
use burn::backend::Flex;
use burn::tensor::Tensor;
use serde_json::Value;

type B = Flex;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpo-tiny")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn host(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data().convert::<f64>().into_vec::<f64>().unwrap()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{what}: got {got:?}, want {want:?}");
    }
}

#[test]
fn logps_losses_and_metrics_match_trl() {
    let device = Default::default();
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let (_, policy) = load_model::<B>(&fixture().join("policy"), &device).unwrap();
    let (_, reference) = load_model::<B>(&fixture().join("reference"), &device).unwrap();
    let pairs: Vec<PreferenceExample> = exp["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PreferenceExample {
            prompt_ids: ids(&p["prompt_ids"]),
            chosen_ids: ids(&p["chosen_ids"]),
            rejected_ids: ids(&p["rejected_ids"]),
            chosen_has_eos: true,
            rejected_has_eos: true,
            chosen_truncation: Truncation::default(),
            rejected_truncation: Truncation::default(),
        })
        .collect();
    let pad = exp["pad_token_id"].as_u64().unwrap() as u32;
    let batch = collate_pairs(&pairs, pad, PaddingSide::Right);

    let pol = completion_logps(&policy, &batch, &device);
    let refr = completion_logps(&reference, &batch, &device).logps;
    close(
        &host(pol.logps.chosen.clone()),
        &floats(&exp["logps"]["chosen"]),
        "logps chosen",
    );
    close(
        &host(pol.logps.rejected.clone()),
        &floats(&exp["logps"]["rejected"]),
        "logps rejected",
    );
    close(
        &host(refr.chosen.clone()),
        &floats(&exp["ref_logps"]["chosen"]),
        "ref chosen",
    );
    close(
        &host(refr.rejected.clone()),
        &floats(&exp["ref_logps"]["rejected"]),
        "ref rejected",
    );
    assert_eq!(
        host(pol.tokens.chosen.clone()),
        floats(&exp["tokens"]["chosen"])
    );
    assert_eq!(
        host(pol.tokens.rejected.clone()),
        floats(&exp["tokens"]["rejected"])
    );

    let beta = exp["beta"].as_f64().unwrap();
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let loss: DpoLoss = serde_json::from_value(case["loss_type"].clone()).unwrap();
        let eps = case["label_smoothing"].as_f64().unwrap();
        let rpo = case["rpo_alpha"].as_f64();
        let what = format!("{} ε={eps} rpo={rpo:?}", loss.as_str());
        let objective = DpoObjective::new(loss, beta, eps, rpo).unwrap();
        let out = dpo_loss(&objective, &pol.logps, &refr, &pol.tokens);
        close(&host(out.losses.clone()), &floats(&case["losses"]), &what);
        close(
            &host(out.loss()),
            &[case["metrics"]["loss"].as_f64().unwrap()],
            &what,
        );

        let s = DpoSums::of(&out, &pol);
        let m = &case["metrics"];
        let mut got = vec![
            s.loss(),
            s.rewards_chosen(),
            s.rewards_rejected(),
            s.rewards_margins(),
            s.rewards_accuracies(),
            s.logps_chosen(),
            s.logps_rejected(),
            s.logits_chosen(),
            s.logits_rejected(),
        ];
        let mut want: Vec<f64> = [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
        ]
        .iter()
        .map(|k| m[*k].as_f64().unwrap())
        .collect();
        if rpo.is_some() {
            got.push(s.nll_loss().unwrap());
            want.push(m["nll_loss"].as_f64().unwrap());
        }
        close(&got, &want, &format!("{what} metrics"));
    }
}
