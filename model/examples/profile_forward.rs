//! Time the parts of one SmolLM2 forward pass (batch 4 x 256) on the Flex backend:
//! `MODEL=~/.cache/alignkit/models/smollm2-135m-instruct cargo run --release -p alignkit-model --features burn/x86-v4 --example profile_forward`
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, load_model};
use burn::backend::Flex;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use std::time::Instant;
type B = Flex;
fn main() {
    let d = Default::default();
    let dir = std::path::PathBuf::from(std::env::var("MODEL").unwrap());
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
    for _ in 0..2 {
        let t0 = Instant::now();
        let input = mk();
        let angles = model.model.rope.angles(input.positions);
        let mut x = model.model.embed_tokens.forward(input.input_ids);
        let _ = x.clone().into_data();
        let t1 = Instant::now();
        let (mut ta, mut tm) = (0.0, 0.0);
        for layer in &model.model.layers {
            let s = Instant::now();
            let h = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &angles,
                input.mask.clone(),
                None,
            );
            x = x + h;
            let _ = x.clone().into_data();
            ta += s.elapsed().as_secs_f64();
            let s = Instant::now();
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
            let _ = x.clone().into_data();
            tm += s.elapsed().as_secs_f64();
        }
        let h = model.model.norm.forward(x);
        let t2 = Instant::now();
        let logits = model.lm_logits(h);
        let _ = logits.clone().into_data();
        let t3 = Instant::now();
        let lp = log_softmax(logits, 2);
        let _ = lp.into_data();
        let t4 = Instant::now();
        println!(
            "embed {:.3} attn {:.3} mlp {:.3} head {:.3} logsoftmax {:.3}",
            (t1 - t0).as_secs_f64(),
            ta,
            tm,
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64()
        );
    }
}
