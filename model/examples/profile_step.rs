//! Time SmolLM2 inference forwards and training steps (batch 4 x 256: forward
//! with autodiff, backward)
//! on the Flex backend:
//! `MODEL=~/.cache/alignkit/models/smollm2-135m-instruct cargo run --release -p alignkit-model --features burn/x86-v4 --example profile_step`
use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, load_model};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use std::time::Instant;
type B = Autodiff<Flex>;
fn main() {
    let d = Default::default();
    let dir = std::path::PathBuf::from(std::env::var("MODEL").unwrap());
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (_c, model) = load_model::<B>(&dir, &d).unwrap();
    let (b, t) = (4, 256);
    let ids: Vec<i64> = (0..b * t).map(|i| (i * 7919 % 49000) as i64).collect();
    let mk = || ForwardInput::<B> {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), &d),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..b).flat_map(|_| 0..t as i64).collect::<Vec<_>>(), [b, t]),
            &d,
        ),
        mask: attention_mask::<B>(&vec![vec![true; t]; b], t, None, &d),
    };
    let inference = burn::module::AutodiffModule::valid(&model);
    let mk_inner = || ForwardInput::<Flex> {
        input_ids: Tensor::from_data(TensorData::new(ids.clone(), [b, t]), &d),
        positions: Tensor::from_data(
            TensorData::new((0..b).flat_map(|_| 0..t as i64).collect::<Vec<_>>(), [b, t]),
            &d,
        ),
        mask: attention_mask::<Flex>(&vec![vec![true; t]; b], t, None, &d),
    };
    for _ in 0..reps {
        let t0 = Instant::now();
        let v: f32 = sequence_logprobs(&inference, mk_inner())
            .mean()
            .neg()
            .into_scalar();
        println!(
            "loss {v:.4} inference forward {:.3}",
            t0.elapsed().as_secs_f64()
        );
    }
    for _ in 0..reps {
        let t0 = Instant::now();
        let loss = sequence_logprobs(&model, mk()).mean().neg();
        let v: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        drop(grads);
        println!(
            "loss {v:.4} forward {:.3} backward {:.3}",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
}
