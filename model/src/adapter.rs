//! One LoRA adapter and its term in a linear layer's forward pass: a leaf
//! below the decoder, so `transformer` can hold adapters without depending on
//! [`crate::lora`] (which attaches, merges, saves and loads them, and so sits
//! above the decoder).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::fused::LoraTerm;

/// One adapter: y_lora = s·(dropout(x)·Aᵀ)·Bᵀ.
///
/// Shapes: x [.., in] → [.., out].
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// A [r, in] (PEFT's `lora_A.weight`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// B [out, r] (PEFT's `lora_B.weight`), zero at init so training starts
    /// from the base model.
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// The adapter's term of its layer, on the layer's input x: dropout
    /// (only while gradients are recorded, as burn's `Dropout`) gives the
    /// adapter its own input.
    pub fn term<const D: usize>(&self, x: &Tensor<B, D>) -> LoraTerm<B, D> {
        let input = (self.dropout > 0.0 && B::ad_enabled(&x.device())).then(|| {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(Distribution::Bernoulli(keep));
            x.clone() * mask.div_scalar(keep)
        });
        LoraTerm {
            input,
            a: self.lora_a.val(),
            b: self.lora_b.val(),
            scale: self.scale,
        }
    }

    /// ΔW = s·B·A [out, in].
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b
            .val()
            .matmul(self.lora_a.val())
            .mul_scalar(self.scale)
    }
}
