//! The Llama-family decoder, read small → big:
//! linear → norm → rope → attention → mlp → block → model.
//!
//! Shapes use the letters of the crate docs: B batch, T new tokens, S keys
//! (cached + new), C hidden, H query heads, K key/value heads, G = H / K,
//! D head dim, F MLP width, V vocabulary.

use std::sync::Arc;

use burn::module::{Initializer, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{DType, ElementConversion, Int, Tensor, TensorData};

use crate::cache::{KvCache, LayerCache};
use crate::config::{Activation, LlamaConfig, NormPlacement, QkNorm, RopeScaling};
use crate::dtype::{to_dtype, to_f32};
use crate::fused::panels::Panels;
use crate::fused::{self, dense};
use crate::mask::MASKED;

pub mod recompute;

/// Standard deviation of the random init, as transformers' `initializer_range`.
const INIT_STD: f64 = 0.02;

/// Parameters are initialised lazily: loading a checkpoint replaces them before
/// any random numbers are drawn.
fn random_param<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Initializer::Normal {
        mean: 0.0,
        std: INIT_STD,
    }
    .init(shape, device)
}

/// A dense layer stored as transformers stores it: `weight` is [out, in],
/// optionally with a LoRA adapter: y = xWᵀ + b + (α/r)·(x·Aᵀ)·Bᵀ.
///
/// Shapes: x [.., in] → [.., out].
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Skipped by burn's visitors and mappers, so checkpoint load/save and
    /// `named_tensors` see base weights only; [`crate::lora::visit_adapters`]
    /// and [`crate::lora::map_adapters`] walk the adapters.
    #[module(skip)]
    pub lora: Option<crate::adapter::LoraAdapter<B>>,
    /// A contiguous [in, out] copy of `weight` for decoding on backends
    /// without the CPU kernels (see [`LlamaForCausalLM::for_decoding`]): a
    /// matrix-vector product against the transposed view is ~10x slower than
    /// against contiguous memory.
    #[module(skip)]
    pub decode_weight: Option<Tensor<B, 2>>,
    /// On the CPU backend, `weight` as column panels for decoding.
    #[module(skip)]
    pub decode_panels: Option<Arc<Panels>>,
}

impl<B: Backend> Linear<B> {
    pub fn init(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: random_param([d_out, d_in], device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            lora: None,
            decode_weight: None,
            decode_panels: None,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let decoded = decoded_product(
            &x,
            self.decode_panels.as_deref(),
            self.decode_weight.as_ref(),
            bias.clone(),
        );
        match decoded {
            Some(y) => match &self.lora {
                None => y,
                Some(adapter) => y + adapter.term(&x).apply(x),
            },
            None => {
                let lora = self.lora.as_ref().map(|adapter| adapter.term(&x));
                fused::linear(x, self.weight.val(), bias, lora)
            }
        }
    }

    /// [`Self::forward`] with its output as `out` says
    /// ([`fused::linear_as`]; activation checkpointing's recomputed layers).
    pub fn forward_as<const D: usize>(
        &self,
        x: Tensor<B, D>,
        out: fused::LinearOutput<B, D>,
    ) -> Tensor<B, D> {
        let lora = self.lora.as_ref().map(|adapter| adapter.term(&x));
        let bias = self.bias.as_ref().map(|b| b.val());
        fused::linear_as(x, self.weight.val(), bias, lora, out)
    }

    /// [`Self::forward`] for a projection whose output the layer reads, as
    /// `products` asks.
    fn forward_in(&self, x: Tensor<B, 3>, products: &mut Products<B>) -> Tensor<B, 3> {
        match products {
            Products::Form | Products::Recompute(None) => self.forward(x),
            Products::Keep(kept) => {
                let y = self.forward(x);
                kept.push(y.clone());
                y
            }
            Products::Recompute(Some(kept)) => {
                let value = kept.next().expect("one kept output per projection read");
                self.forward_as(x, fused::LinearOutput::Given(value))
            }
        }
    }
}

/// What a decoder layer's forward pass does about its projections' outputs
/// (activation checkpointing, [`recompute`]).
pub(crate) enum Products<'a, B: Backend> {
    /// Form every product (the plain pass).
    Form,
    /// Form every product and keep the outputs the layer reads (q, k, v, o,
    /// gate, up, in that order; not down's, the layer's output).
    Keep(&'a mut Vec<Tensor<B, 3>>),
    /// Recompute the layer for its backward pass: the down projection's
    /// output, never read, is not formed; with the outputs a [`Self::Keep`]
    /// pass kept, the other six products are not formed either.
    Recompute(Option<std::vec::IntoIter<Tensor<B, 3>>>),
}

/// A weight [out, in] laid out for decoding: column panels on the CPU
/// backend, else a contiguous [in, out] copy (see
/// [`LlamaForCausalLM::for_decoding`]).
fn decode_copies<B: Backend>(weight: Tensor<B, 2>) -> (Option<Arc<Panels>>, Option<Tensor<B, 2>>) {
    match fused::decode_panels(weight.clone()) {
        Some(panels) => (Some(panels), None),
        None => {
            let device = weight.device();
            let copy = Tensor::from_data(weight.transpose().into_data(), &device);
            (None, Some(copy))
        }
    }
}

/// x·Wᵀ (+ b) with the copies of [`decode_copies`]; `None` when there are
/// none, or x has too many rows for the panels (then use the weight itself).
fn decoded_product<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    panels: Option<&Panels>,
    dense_copy: Option<&Tensor<B, 2>>,
    bias: Option<Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    match (panels, dense_copy) {
        (Some(p), _) => fused::panels_forward(x, p, bias),
        (None, Some(w)) => Some(dense(x.clone(), w.clone(), bias)),
        (None, None) => None,
    }
}

/// Root-mean-square layer norm (Zhang & Sennrich 2019), computed in f32,
/// times (offset + w): Gemma stores w around 0 and adds 1.
///
/// Shapes: x [B, T, C] → [B, T, C].
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
    pub offset: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of `config`'s family: weights 1 (0 where they are offset).
    pub fn init(size: usize, config: &LlamaConfig, device: &B::Device) -> Self {
        let offset = config.model_type.norm_offset();
        let init = match offset == 0.0 {
            true => Initializer::Ones,
            false => Initializer::Zeros,
        };
        Self {
            weight: init.init([size], device),
            eps: config.rms_norm_eps,
            offset,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.offset == 0.0 {
            return fused::rms_norm(x, self.weight.val(), self.eps);
        }
        // Gemma: the whole norm in f32, (offset + w) included, cast back
        // last (transformers' `Gemma3RMSNorm`), so bf16 rounds once.
        let weight = to_f32(self.weight.val()).add_scalar(self.offset);
        match x.dtype() {
            DType::F32 => fused::rms_norm(x, weight, self.eps),
            dtype => to_dtype(fused::rms_norm(to_f32(x), weight, self.eps), dtype),
        }
    }
}

/// Rotary position embedding in transformers' rotate-half layout: dimension i
/// pairs with i + D/2 (not burn's interleaved 2i, 2i+1).
/// See: Su et al. 2021, "RoFormer", eq. 34; transformers `rotate_half`.
#[derive(Debug, Clone)]
pub struct Rope {
    /// θ_i for i in 0..D/2, with the scaling applied.
    pub inv_freq: Vec<f32>,
    /// LongRoPE's frequencies for a pass whose positions reach this many
    /// (the original context) or more.
    pub long: Option<(Vec<f32>, usize)>,
    /// cos and sin are multiplied by this (LongRoPE's `attention_factor`).
    pub magnitude: f64,
    /// The attention's score scale, which the query's angles carry.
    pub query_scale: f64,
}

/// cos and sin of position × θ for one forward pass, shared by every layer,
/// laid out like the projected heads they multiply ([B, T, heads, D],
/// contiguous) so the products run on the element-wise fast paths.
/// The query's copies carry the attention scale ([`Rope::query_scale`]).
pub struct RopeAngles<B: Backend> {
    cos_q: Tensor<B, 4>,
    sin_q: Tensor<B, 4>,
    cos_k: Tensor<B, 4>,
    sin_k: Tensor<B, 4>,
}

impl Rope {
    /// The global layers' RoPE.
    pub fn new(config: &LlamaConfig) -> Self {
        Self::with_base(config, config.rope_theta, config.rope_scaling.as_ref())
    }

    /// The sliding-window layers' RoPE, where its base differs (Gemma 3).
    pub fn local(config: &LlamaConfig) -> Option<Self> {
        let theta = config.local_rope_theta?;
        (!config.sliding.is_empty()).then(|| Self::with_base(config, theta, None))
    }

    fn with_base(config: &LlamaConfig, theta: f64, scaling: Option<&RopeScaling>) -> Self {
        let d = config.head_dim;
        let mut inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64))
            .collect();
        if let Some(RopeScaling::Linear { factor }) = scaling {
            inv_freq.iter_mut().for_each(|f| *f /= factor);
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|f| f as f32).collect::<Vec<_>>();
        let (mut long, mut magnitude) = (None, 1.0);
        if let Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        }) = scaling
        {
            let divided = |by: &[f64]| inv_freq.iter().zip(by).map(|(f, s)| f / s).collect();
            long = Some((
                f32s(divided(long_factor)),
                *original_max_position_embeddings,
            ));
            inv_freq = divided(short_factor);
            magnitude = *attention_factor;
        }
        if let Some(RopeScaling::Llama3(s)) = scaling {
            // See: transformers `_compute_llama3_parameters` (Llama 3.1 report, §3.3):
            // long wavelengths are divided by `factor`, short ones kept, and the band
            // between is interpolated smoothly.
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen
                        - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        Self {
            inv_freq: f32s(inv_freq),
            long,
            magnitude,
            query_scale: config.attention_scale,
        }
    }

    /// Angles for `heads` query and `kv_heads` key heads, computed in f32
    /// and stored in `dtype`, the activations' dtype.
    ///
    /// Shapes: positions [B, T] → [B, T, heads, D] each.
    pub fn angles<B: Backend>(
        &self,
        positions: Tensor<B, 2, Int>,
        heads: usize,
        kv_heads: usize,
        dtype: DType,
    ) -> RopeAngles<B> {
        let device = positions.device();
        let [b, t] = positions.dims();
        let half = self.inv_freq.len();
        let d = 2 * half;
        // LongRoPE switches to its long factors for the whole pass once a
        // position reaches the original context (transformers'
        // `longrope_frequency_update`: max(position) + 1 > original max).
        let inv_freq = match &self.long {
            Some((long, original))
                if positions.clone().max().into_scalar().elem::<i64>() >= *original as i64 =>
            {
                long
            }
            _ => &self.inv_freq,
        };
        let inv = Tensor::<B, 1>::from_data(TensorData::new(inv_freq.clone(), [half]), &device);
        let freqs = positions.float().unsqueeze_dim::<3>(2) * inv.reshape([1, 1, half]);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(2);
        let (cos, sin) = (emb.clone().cos(), emb.sin());
        // Broadcasting once here instead of in every layer.
        let spread = |x: Tensor<B, 4>, n: usize, scale: f64| {
            to_dtype(
                Tensor::zeros([b, t, n, d], &device) + x.mul_scalar(scale),
                dtype,
            )
        };
        let (scale, m) = (self.query_scale * self.magnitude, self.magnitude);
        RopeAngles {
            cos_q: spread(cos.clone(), heads, scale),
            sin_q: spread(sin.clone(), heads, scale),
            cos_k: spread(cos, kv_heads, m),
            sin_k: spread(sin, kv_heads, m),
        }
    }
}

impl<B: Backend> RopeAngles<B> {
    /// Shapes: x [B, T, heads, D] → [B, T, heads, D].
    fn rotate(&self, x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        fused::rope(x, cos.clone(), sin.clone())
    }

    /// Rotated and scaled by 1/√D. Shapes: [B, T, H, D].
    fn query(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.rotate(x, &self.cos_q, &self.sin_q)
    }

    /// Shapes: [B, T, K, D].
    fn key(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.rotate(x, &self.cos_k, &self.sin_k)
    }
}

/// What the layers of one forward pass read besides their input: RoPE
/// angles and attention masks, for the global layers and for the
/// sliding-window ones.
pub struct LayerInputs<B: Backend> {
    angles: RopeAngles<B>,
    /// The sliding layers' angles, where their RoPE base differs (Gemma 3).
    local_angles: Option<RopeAngles<B>>,
    /// [B, 1, 1, T, S], additive: broadcast over the K × G heads by the
    /// softmax.
    mask: Tensor<B, 5>,
    /// `mask` with the keys outside the window masked as well.
    sliding_mask: Option<Tensor<B, 5>>,
    /// The score scale, which a NoPE layer applies itself.
    query_scale: f64,
}

impl<B: Backend> LayerInputs<B> {
    /// The angles and mask of a global (`sliding` false) or sliding layer.
    fn of(&self, sliding: bool) -> (&RopeAngles<B>, &Tensor<B, 5>) {
        match sliding {
            false => (&self.angles, &self.mask),
            true => (
                self.local_angles.as_ref().unwrap_or(&self.angles),
                self.sliding_mask.as_ref().unwrap_or(&self.mask),
            ),
        }
    }
}

/// `mask` [B, 1, T, S] with the keys more than `window` − 1 places before
/// each query masked too: query t, at key index S − T + t, sees key s when
/// s > S − T + t − window (transformers' `sliding_window_overlay`; indices,
/// not positions, as there).
fn sliding_mask<B: Backend>(mask: Tensor<B, 4>, window: usize) -> Tensor<B, 4> {
    let [_, _, t, s] = mask.dims();
    let past = s - t;
    let band: Vec<f32> = (0..t)
        .flat_map(|q| (0..s).map(move |k| if k + window > past + q { 0.0 } else { MASKED }))
        .collect();
    let band = Tensor::<B, 4>::from_data(TensorData::new(band, [1, 1, t, s]), &mask.device());
    let dtype = mask.dtype();
    mask + to_dtype(band, dtype)
}

/// Grouped-query self-attention (Ainslie et al. 2023) with an optional KV
/// cache; queries and keys optionally RMS-normalised before RoPE (Qwen3,
/// OLMo 2), RoPE optionally left out (SmolLM3's NoPE layers).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// What `q_norm` and `k_norm` normalise over.
    #[module(skip)]
    pub qk_norm: QkNorm,
    /// Whether positions enter through RoPE (false: a NoPE layer).
    #[module(skip)]
    pub rope: bool,
    /// Whether the layer attends through the sliding window.
    #[module(skip)]
    pub sliding: bool,
}

impl<B: Backend> Attention<B> {
    /// Layer `layer`'s attention.
    pub fn init(config: &LlamaConfig, layer: usize, device: &B::Device) -> Self {
        let (c, h, k, d) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let qk_norm = config.model_type.qk_norm();
        let norm = |whole: usize| match qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some(RmsNorm::init(d, config, device)),
            QkNorm::Whole => Some(RmsNorm::init(whole, config, device)),
        };
        Self {
            q_proj: Linear::init(c, h * d, config.qkv_bias, device),
            k_proj: Linear::init(c, k * d, config.qkv_bias, device),
            v_proj: Linear::init(c, k * d, config.qkv_bias, device),
            o_proj: Linear::init(h * d, c, config.o_bias, device),
            q_norm: norm(h * d),
            k_norm: norm(k * d),
            num_heads: h,
            num_kv_heads: k,
            head_dim: d,
            qk_norm,
            rope: config.uses_rope(layer),
            sliding: config.is_sliding(layer),
        }
    }

    /// A projection's output [B, T, n·D] as n heads [B, T, n, D], through
    /// `norm` where the family normalises it.
    fn heads(&self, x: Tensor<B, 3>, norm: Option<&RmsNorm<B>>, n: usize) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        let d = self.head_dim;
        match (norm, self.qk_norm) {
            (Some(norm), QkNorm::PerHead) => {
                norm.forward(x.reshape([b, t * n, d])).reshape([b, t, n, d])
            }
            (Some(norm), QkNorm::Whole) => norm.forward(x).reshape([b, t, n, d]),
            _ => x.reshape([b, t, n, d]),
        }
    }

    /// Shapes: x [B, T, C] → [B, T, C].
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        inputs: &LayerInputs<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_in(x, inputs, cache, &mut Products::Form)
    }

    /// [`Self::forward`], with the projections' outputs as `products` asks.
    fn forward_in(
        &self,
        x: Tensor<B, 3>,
        inputs: &LayerInputs<B>,
        cache: Option<&mut LayerCache<B>>,
        products: &mut Products<B>,
    ) -> Tensor<B, 3> {
        let (rope, mask) = inputs.of(self.sliding);
        let mask = mask.clone();
        let [b, t, _] = x.dims();
        let (h, k, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let g = h / k;
        let q = self.q_proj.forward_in(x.clone(), products);
        let key = self.k_proj.forward_in(x.clone(), products);
        let value = self.v_proj.forward_in(x, products);
        let (q, key) = (
            self.heads(q, self.q_norm.as_ref(), h),
            self.heads(key, self.k_norm.as_ref(), k),
        );
        let (q, key) = match self.rope {
            true => (rope.query(q), rope.key(key)),
            // The scale that RoPE's query angles carry.
            false => (q.mul_scalar(inputs.query_scale), key),
        };
        let value = value.reshape([b, t, k, d]);

        // Query head h = kv·G + r shares key/value head kv (transformers
        // `repeat_kv`): the G axis broadcasts in the batched matmuls, so
        // nothing is repeated. The heads-first layouts are one row copy each
        // (`fused::permute`), which the reshapes around them would otherwise
        // make as a strided walk.
        let heads_first = [0, 2, 3, 1, 4];
        let q = fused::permute(q.reshape([b, t, k, g, d]), heads_first); // [B, K, G, T, D]
        let kv_heads_first =
            |x: Tensor<B, 4>| fused::permute(x.reshape([b, t, k, 1, d]), heads_first);
        let (key, value) = (kv_heads_first(key), kv_heads_first(value)); // [B, K, 1, T, D]
        // With a cache, the keys and values of every position so far, read
        // in place from its buffers.
        let (key, value) = match cache {
            Some(cache) => cache.append(key, value),
            None => (key, value),
        }; // [B, K, 1, S, D]
        let s = key.dims()[3];
        let out = if s == t {
            let probs = fused::masked_softmax(q.matmul(key.swap_dims(3, 4)), mask);
            probs.matmul(value) // [B, K, G, T, D]
        } else {
            // Decoding (T new tokens after a cached prefix, usually T = 1):
            // the G query heads of a key/value head become the rows of one
            // product, [G·T, D]·[D, S], instead of G products of T rows —
            // G times fewer (and less padded) small matmuls, the same sums.
            let rows = |x: Tensor<B, 5>| x.reshape([b, k, 1, g * t, d]);
            let scores = rows(q).matmul(key.swap_dims(3, 4)).reshape([b, k, g, t, s]);
            let probs = fused::masked_softmax(scores, mask).reshape([b, k, 1, g * t, s]);
            probs.matmul(value).reshape([b, k, g, t, d])
        };
        let out = fused::permute(out, [0, 3, 1, 2, 4]); // [B, T, K, G, D]
        self.o_proj.forward_in(out.reshape([b, t, h * d]), products)
    }
}

/// Gated feed-forward (Shazeer 2020): down(act(gate(x)) ⊙ up(x)), SwiGLU
/// (silu) or GeGLU (Gemma's tanh-approximated GELU).
///
/// Shapes: x [B, T, C] → [B, T, C], via [B, T, F].
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn init(config: &LlamaConfig, device: &B::Device) -> Self {
        let (c, f, bias) = (
            config.hidden_size,
            config.intermediate_size,
            config.mlp_bias,
        );
        Self {
            gate_proj: Linear::init(c, f, bias, device),
            up_proj: Linear::init(c, f, bias, device),
            down_proj: Linear::init(f, c, bias, device),
            activation: config.activation,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_in(x, &mut Products::Form, true)
    }

    /// [`Self::forward`], with the projections' outputs as `products` asks;
    /// `read`: whether the layer reads the output's value (a post-norm does),
    /// else a recomputing pass does not form it.
    fn forward_in(&self, x: Tensor<B, 3>, products: &mut Products<B>, read: bool) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward_in(x.clone(), products);
        let up = self.up_proj.forward_in(x, products);
        let hidden = fused::gated(gate, up, self.activation);
        match products {
            Products::Recompute(_) if !read => {
                self.down_proj.forward_as(hidden, fused::LinearOutput::Skip)
            }
            _ => self.down_proj.forward(hidden),
        }
    }
}

/// One transformer block, its norms where the family puts them
/// ([`NormPlacement`]), under transformers' names: before attention and MLP
/// (`input_layernorm`, `post_attention_layernorm`: Llama), on their outputs
/// (`post_attention_layernorm`, `post_feedforward_layernorm`: OLMo 2), or
/// both (all four, `pre_feedforward_layernorm` before the MLP: Gemma 3).
///
/// Shapes: x [B, T, C] → [B, T, C].
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: Option<RmsNorm<B>>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
    pub mlp: Mlp<B>,
    #[module(skip)]
    pub norms: NormPlacement,
}

/// The norms around a layer's two sublayers, each optional.
struct Around<'a, B: Backend> {
    attn_in: Option<&'a RmsNorm<B>>,
    attn_out: Option<&'a RmsNorm<B>>,
    mlp_in: Option<&'a RmsNorm<B>>,
    mlp_out: Option<&'a RmsNorm<B>>,
}

/// `norm(x)`, or x where there is no norm.
fn through<B: Backend>(norm: Option<&RmsNorm<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

impl<B: Backend> DecoderLayer<B> {
    /// Layer `layer` of `config`'s decoder.
    pub fn init(config: &LlamaConfig, layer: usize, device: &B::Device) -> Self {
        let norm = || RmsNorm::init(config.hidden_size, config, device);
        let norms = config.model_type.norms();
        let (pre, post) = match norms {
            NormPlacement::Pre => (true, false),
            NormPlacement::Post => (false, true),
            NormPlacement::Sandwich => (true, true),
        };
        Self {
            input_layernorm: pre.then(norm),
            self_attn: Attention::init(config, layer, device),
            post_attention_layernorm: norm(),
            pre_feedforward_layernorm: (pre && post).then(norm),
            post_feedforward_layernorm: post.then(norm),
            mlp: Mlp::init(config, device),
            norms,
        }
    }

    /// Which norm sits where: `post_attention_layernorm` normalises the
    /// MLP's input in a pre-norm layer, the attention's output otherwise.
    fn around(&self) -> Around<'_, B> {
        let post_attention = Some(&self.post_attention_layernorm);
        let (attn_out, mlp_in) = match self.norms {
            NormPlacement::Pre => (None, post_attention),
            NormPlacement::Post | NormPlacement::Sandwich => {
                (post_attention, self.pre_feedforward_layernorm.as_ref())
            }
        };
        Around {
            attn_in: self.input_layernorm.as_ref(),
            attn_out,
            mlp_in,
            mlp_out: self.post_feedforward_layernorm.as_ref(),
        }
    }

    /// The seven projections: q, k, v, o, gate, up, down.
    pub fn linears(&self) -> [&Linear<B>; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// [`Self::linears`], mutable.
    pub fn linears_mut(&mut self) -> [&mut Linear<B>; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        inputs: &LayerInputs<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_in(x, inputs, cache, &mut Products::Form)
    }

    /// [`Self::forward`], with the projections' outputs as `products` asks
    /// (activation checkpointing: a recomputing pass returns the layer's
    /// output for differentiation only, its value not formed; its gradients
    /// are [`Self::forward`]'s).
    pub(crate) fn forward_in(
        &self,
        x: Tensor<B, 3>,
        inputs: &LayerInputs<B>,
        cache: Option<&mut LayerCache<B>>,
        products: &mut Products<B>,
    ) -> Tensor<B, 3> {
        // x + out(attn(in(x))), then x + out(mlp(in(x))), each norm where
        // the family has one.
        let norms = self.around();
        let h = through(norms.attn_in, x.clone());
        let attn = self.self_attn.forward_in(h, inputs, cache, products);
        let x = x + through(norms.attn_out, attn);
        let h = through(norms.mlp_in, x.clone());
        let out = self.mlp.forward_in(h, products, norms.mlp_out.is_some());
        x + through(norms.mlp_out, out)
    }
}

/// Token embedding [V, C], as transformers' `nn.Embedding`, optionally
/// scaled (Gemma: by √C, rounded to the weights' dtype as transformers does).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub scale: Option<f32>,
}

impl<B: Backend> Embedding<B> {
    /// The embedding of `config`'s family: random weights, its scale.
    pub fn init(config: &LlamaConfig, device: &B::Device) -> Self {
        Self {
            weight: random_param([config.vocab_size, config.hidden_size], device),
            scale: config
                .model_type
                .scales_embeddings()
                .then(|| (config.hidden_size as f32).sqrt()),
        }
    }

    /// Shapes: ids [B, T] → [B, T, C].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = embedding(self.weight.val(), ids);
        match self.scale {
            None => x,
            Some(scale) => {
                let scale = match x.dtype() {
                    DType::BF16 => half::bf16::from_f32(scale).to_f32(),
                    DType::F16 => half::f16::from_f32(scale).to_f32(),
                    _ => scale,
                };
                x.mul_scalar(scale)
            }
        }
    }
}

/// The decoder stack without the LM head (`model.*` in the checkpoint); the
/// backbone shared by the causal LM and the reward/value heads.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub rope: Rope,
    /// The sliding-window layers' RoPE, where its base differs (Gemma 3).
    #[module(skip)]
    pub local_rope: Option<Rope>,
    /// How many keys a sliding layer's query sees.
    #[module(skip)]
    pub sliding_window: Option<usize>,
    /// The LM head's logits become cap·tanh(logits / cap).
    #[module(skip)]
    pub final_logit_softcapping: Option<f64>,
    /// Keep only each layer's input in training forward passes and recompute
    /// the layer in the backward pass ([`recompute`]).
    #[module(skip)]
    pub gradient_checkpointing: bool,
    /// What checkpointing keeps of each layer.
    #[module(skip)]
    pub recompute: recompute::Granularity,
}

impl<B: Backend> LlamaModel<B> {
    /// A randomly initialised backbone (weights ~ N(0, 0.02), norms 1, biases 0).
    pub fn init(config: &LlamaConfig, device: &B::Device) -> Self {
        Self {
            embed_tokens: Embedding::init(config, device),
            layers: (0..config.num_hidden_layers)
                .map(|i| DecoderLayer::init(config, i, device))
                .collect(),
            norm: RmsNorm::init(config.hidden_size, config, device),
            rope: Rope::new(config),
            local_rope: Rope::local(config),
            sliding_window: config.sliding_window,
            final_logit_softcapping: config.final_logit_softcapping,
            gradient_checkpointing: false,
            recompute: Default::default(),
        }
    }

    /// The dtype of the weights and activations (f32, or bf16/f16 in mixed
    /// precision, see [`crate::precision`]).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.weight.val().dtype()
    }

    /// Final hidden states after the last norm.
    ///
    /// Shapes: → [B, T, C].
    pub fn forward(
        &self,
        input: ForwardInput<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let input = match self.gradient_checkpointing && cache.is_none() {
            true => match recompute::forward(self, input) {
                Ok(hidden) => return hidden,
                Err(input) => input,
            },
            false => input,
        };
        if self.layers.is_empty() {
            return self
                .norm
                .forward(self.embed_tokens.forward(input.input_ids));
        }
        let inputs = self.layer_inputs(input.positions, input.mask);
        let mut x = self.embed_tokens.forward(input.input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = layer.forward(x, &inputs, layer_cache);
        }
        self.norm.forward(x)
    }

    /// The angles and masks every layer reads.
    ///
    /// Shapes: positions [B, T], mask [B, 1, T, S].
    pub(crate) fn layer_inputs(
        &self,
        positions: Tensor<B, 2, Int>,
        mask: Tensor<B, 4>,
    ) -> LayerInputs<B> {
        let (h, k) = self.layers.first().map_or((1, 1), |l| {
            (l.self_attn.num_heads, l.self_attn.num_kv_heads)
        });
        let dtype = self.dtype();
        let local_angles = self
            .local_rope
            .as_ref()
            .map(|rope| rope.angles(positions.clone(), h, k, dtype));
        let sliding_mask = self
            .sliding_window
            .map(|window| sliding_mask(mask.clone(), window).unsqueeze_dim::<5>(2));
        LayerInputs {
            angles: self.rope.angles(positions, h, k, dtype),
            local_angles,
            mask: mask.unsqueeze_dim::<5>(2),
            sliding_mask,
            query_scale: self.rope.query_scale,
        }
    }
}

/// The inputs of one forward pass.
///
/// Shapes: `input_ids` [B, T]; `positions` [B, T]; `mask` [B, 1, T, S] additive,
/// built by [`crate::mask`] from padding and (for packed rows) segment ids.
pub struct ForwardInput<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub positions: Tensor<B, 2, Int>,
    pub mask: Tensor<B, 4>,
}

/// The CPU backend's decoding panels of a model's weights, kept to prepare
/// later copies with the same weights without laying them out again (about a
/// second for SmolLM2): see [`LlamaForCausalLM::for_decoding_with`].
#[derive(Debug, Clone, Default)]
pub struct DecodePanels(pub(crate) Vec<Option<Arc<Panels>>>);

impl DecodePanels {
    /// Whether no weight has panels (backends without the CPU kernels).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// A causal language model: decoder + LM head (tied to the embedding when
/// `tie_word_embeddings`, in which case there is no `lm_head` tensor).
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    pub model: LlamaModel<B>,
    pub lm_head: Option<Linear<B>>,
    /// Contiguous [C, V] copy of the tied embedding, set by
    /// [`Self::for_decoding`] on backends without the CPU kernels.
    #[module(skip)]
    pub decode_head: Option<Tensor<B, 2>>,
    /// On the CPU backend, the tied embedding as column panels for decoding.
    #[module(skip)]
    pub decode_head_panels: Option<Arc<Panels>>,
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// A randomly initialised model (weights ~ N(0, 0.02), norms 1, biases 0).
    pub fn init(config: &LlamaConfig, device: &B::Device) -> Self {
        let lm_head = (!config.tie_word_embeddings)
            .then(|| Linear::init(config.hidden_size, config.vocab_size, false, device));
        Self::from_parts(LlamaModel::init(config, device), lm_head)
    }

    /// A causal LM from a backbone and an optional untied head (None: tied, or
    /// a head-less view of a backbone for the LoRA functions).
    pub fn from_parts(model: LlamaModel<B>, lm_head: Option<Linear<B>>) -> Self {
        Self {
            model,
            lm_head,
            decode_head: None,
            decode_head_panels: None,
        }
    }

    /// The same model with every projection and the LM head laid out for
    /// generation: column panels for the CPU backend's few-rows kernel
    /// ([`fused::panels`]), contiguous [in, out] copies elsewhere. Costs one
    /// copy of the weights; the copies are not parameters, so use it for
    /// inference only and prepare again after the weights change.
    pub fn for_decoding(self) -> Self {
        self.for_decoding_with(&DecodePanels::default())
    }

    /// [`Self::for_decoding`], taking each weight's panels from `kept` (from
    /// [`Self::decode_panels`] of an earlier copy) where it holds panels of
    /// that weight's shape: the caller vouches that those weights have not
    /// changed since, as LoRA's frozen base does not during a run.
    pub fn for_decoding_with(mut self, kept: &DecodePanels) -> Self {
        let mut kept = kept.0.iter();
        let mut prepare = |weight: Tensor<B, 2>| match kept.next().cloned().flatten() {
            Some(p) if p.dims() == weight.dims() => (Some(p), None),
            _ => decode_copies(weight),
        };
        for layer in self.model.layers.iter_mut() {
            for linear in layer.linears_mut() {
                (linear.decode_panels, linear.decode_weight) = prepare(linear.weight.val());
            }
        }
        match &mut self.lm_head {
            Some(head) => (head.decode_panels, head.decode_weight) = prepare(head.weight.val()),
            None => {
                (self.decode_head_panels, self.decode_head) =
                    prepare(self.model.embed_tokens.weight.val())
            }
        }
        self
    }

    /// The panels [`Self::for_decoding`] laid out (none on other backends),
    /// in the order [`Self::for_decoding_with`] reads them.
    pub fn decode_panels(&self) -> DecodePanels {
        let mut out: Vec<Option<Arc<Panels>>> = self
            .model
            .layers
            .iter()
            .flat_map(|layer| layer.linears().map(|l| l.decode_panels.clone()))
            .collect();
        out.push(match &self.lm_head {
            Some(head) => head.decode_panels.clone(),
            None => self.decode_head_panels.clone(),
        });
        DecodePanels(out)
    }

    /// Final hidden states after the last norm.
    ///
    /// Shapes: → [B, T, C].
    pub fn forward_hidden(
        &self,
        input: ForwardInput<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.model.forward(input, cache)
    }

    /// Logits of the LM head, in f32 whatever the weights' dtype,
    /// soft-capped where the family caps them.
    ///
    /// Shapes: hidden [B, T, C] → [B, T, V].
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = to_f32(self.head_product(hidden));
        match self.model.final_logit_softcapping {
            None => logits,
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
        }
    }

    /// hidden · W_headᵀ in the weights' dtype.
    fn head_product(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => decoded_product(
                &hidden,
                self.decode_head_panels.as_deref(),
                self.decode_head.as_ref(),
                None,
            )
            .unwrap_or_else(|| {
                dense(
                    hidden,
                    self.model.embed_tokens.weight.val().transpose(),
                    None,
                )
            }),
        }
    }

    /// Shapes: → logits [B, T, V].
    pub fn forward(&self, input: ForwardInput<B>, cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let hidden = self.forward_hidden(input, cache);
        self.lm_logits(hidden)
    }
}
