//! Exact resume with LoRA dropout. Dropout masks come from the backend's
//! generator, reseeded from (seed, step, micro-batch) before every forward; the
//! generator is process-global, so this test has its own binary.

mod common_sft;

use std::panic::{AssertUnwindSafe, catch_unwind};

use alignkit_model::lora::LoraConfig;
use alignkit_sft::{Event, RunOptions, train};
use common_sft::*;

#[test]
fn resume_with_lora_dropout_reproduces_the_losses_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    let data = tmp.path().join("train.jsonl");
    write_chat_data(&data, &PAIRS);
    let mut c = config(&model, &data, &tmp.path().join("run"));
    c.lora = Some(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.2,
        ..Default::default()
    });
    c.train.max_steps = 8;
    c.train.save_steps = 4;
    train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap();
    let want = series(&c.output_dir, "loss");

    // Dropout is on: without it the same run computes other losses.
    let mut no_dropout = c.clone();
    no_dropout.output_dir = tmp.path().join("no-dropout");
    no_dropout.lora.as_mut().unwrap().dropout = 0.0;
    train::<AB>(
        &no_dropout,
        &Default::default(),
        RunOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(series(&no_dropout.output_dir, "loss")[1], want[1]);

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
    let resume = RunOptions::RESUME;
    train::<AB>(&c, &Default::default(), resume, &mut |_| {}).unwrap();
    let got = series(&c.output_dir, "loss");
    let b = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b(&want), b(&got), "{want:?} vs {got:?}");
}
