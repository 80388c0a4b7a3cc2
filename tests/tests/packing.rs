//! Packing SFT examples into shared rows must not change any example's loss:
//! with segment-aware masks and restarting positions, each token's log-prob in
//! a packed row equals its log-prob when the example runs alone.

use alignkit_datasets::{Sequence, pack};
use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, LlamaConfig, LlamaForCausalLM, ModelType};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};

type B = Flex;

/// log p(ids[t] | ids[..t]) for t in 1..T of each row, given positions and segments.
fn row_logprobs(
    model: &LlamaForCausalLM<B>,
    rows: &[Vec<u32>],
    positions: &[Vec<i64>],
    segments: Option<&[Vec<u32>]>,
) -> Vec<Vec<f32>> {
    let device = Default::default();
    let (b, t) = (rows.len(), rows[0].len());
    let valid: Vec<Vec<bool>> = match segments {
        Some(seg) => seg
            .iter()
            .map(|r| r.iter().map(|&s| s != 0).collect())
            .collect(),
        None => vec![vec![true; t]; b],
    };
    let ids: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new(positions.concat(), [b, t]),
            &device,
        ),
        mask: attention_mask::<B>(&valid, t, segments, &device),
    };
    let flat = sequence_logprobs(model, input)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    flat.chunks(t - 1).map(<[f32]>::to_vec).collect()
}

#[test]
fn packed_loss_equals_sum_of_unpacked_losses() {
    let device = Default::default();
    B::seed(&device, 7);
    let config = LlamaConfig::tiny(ModelType::Llama);
    let model = LlamaForCausalLM::<B>::init(&config, &device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let seqs: Vec<Sequence> = (0..7)
        .map(|_| {
            let len = rng.random_range(3..14);
            Sequence {
                input_ids: (0..len)
                    .map(|_| rng.random_range(3..config.vocab_size as u32))
                    .collect(),
                loss_mask: (0..len).map(|t| t > 0 && rng.random_bool(0.7)).collect(),
            }
        })
        .collect();

    // Unpacked: each example alone.
    let mut unpacked_total = 0.0f64;
    let mut unpacked: Vec<Vec<f32>> = Vec::new();
    for s in &seqs {
        let pos = vec![(0..s.len() as i64).collect::<Vec<_>>()];
        let lp = row_logprobs(&model, std::slice::from_ref(&s.input_ids), &pos, None).remove(0);
        for (t, &m) in s.loss_mask.iter().enumerate() {
            if m {
                unpacked_total -= lp[t - 1] as f64;
            }
        }
        unpacked.push(lp);
    }

    // Packed: several examples per 24-token row.
    let rows = pack(&seqs, 24, 0).unwrap();
    assert!(rows.len() < seqs.len(), "packing should share rows");
    let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.input_ids.clone()).collect();
    let pos: Vec<Vec<i64>> = rows.iter().map(|r| r.position_ids.clone()).collect();
    let seg: Vec<Vec<u32>> = rows.iter().map(|r| r.segment_ids.clone()).collect();
    let packed = row_logprobs(&model, &ids, &pos, Some(&seg));

    let mut packed_total = 0.0f64;
    let mut worst = 0.0f32;
    for (row, lp) in rows.iter().zip(&packed) {
        // Walk the row's examples in order to line tokens up with the unpacked run.
        let mut offset = 0;
        for &ex in &row.examples {
            let s = &seqs[ex];
            for t in 1..s.len() {
                if s.loss_mask[t] {
                    assert!(row.loss_mask[offset + t], "loss mask moved in packing");
                    packed_total -= lp[offset + t - 1] as f64;
                    worst = worst.max((lp[offset + t - 1] - unpacked[ex][t - 1]).abs());
                }
            }
            assert!(
                !row.loss_mask[offset],
                "a segment start must not be a target"
            );
            offset += s.len();
        }
    }
    assert!(worst <= 1e-5, "per-token |Δlogprob| = {worst}");
    assert!(
        (packed_total - unpacked_total).abs() <= 1e-5 * unpacked_total.abs().max(1.0),
        "packed loss {packed_total} != unpacked {unpacked_total}"
    );
}
