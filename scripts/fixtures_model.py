"""Parity fixtures for alignkit-model, generated with transformers.

Builds tiny random Llama / Qwen2 / Mistral / Qwen3 / SmolLM3 / OLMo 2 / Gemma 3 / Phi-3 models, saves them
in HF layout under model/tests/fixtures/<name>/ and records, with transformers in f32:
  - logits of a batch of two unpadded sequences,
  - logits of the same sequences right- and left-padded,
  - 12 greedy tokens after a prompt (use_cache=True),
  - for the families in LORA_GRAD: a PEFT LoRA (r 4, every projection, random A and B) saved
    under <name>/lora/, the first sequence's per-token log-probs through it, their mean's
    negative (the loss) and the gradient of the loss with respect to every lora_A / lora_B.
Also a bf16-sharded copy (exercises sharded + bf16 loading) and an f16 copy.

Run from the repo root:  python scripts/fixtures_model.py [NAME ...]
(names: only those fixtures; each keeps its seed, so the others stay as they are).
CI never runs this; the outputs are committed.
"""
import json
import os
import sys

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import (AutoModelForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration,
                          Gemma3TextConfig, SiglipVisionConfig, LlamaConfig, MistralConfig,
                          Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config,
                          SmolLM3Config)

OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures")
VOCAB = 128

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CONFIGS = {
    "llama": LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False),
    # SmolLM2-like: tied embeddings, MHA (no GQA), larger theta.
    "llama-tied": LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, rope_theta=100000.0,
                              tie_word_embeddings=True),
    "llama3-scaled": LlamaConfig(**COMMON, rope_theta=500000.0, head_dim=16,
                                 rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64}),
    "qwen2": Qwen2Config(**{**COMMON, "num_key_value_heads": 1}, rope_theta=1000000.0,
                         tie_word_embeddings=False, use_sliding_window=False),
    "mistral": MistralConfig(**COMMON, rope_theta=10000.0, sliding_window=None,
                             tie_word_embeddings=False),
    # Per-head q/k RMSNorm, head_dim (16) independent of hidden_size / heads (8).
    "qwen3": Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         use_sliding_window=False),
    # Layer 1 without RoPE (NoPE).
    "smollm3": SmolLM3Config(**COMMON, no_rope_layers=[1, 0], tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}),
    # Post-norm blocks, q/k RMSNorm over the whole projections.
    "olmo2": Olmo2Config(**COMMON, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    # Sandwich (1 + w) norms, √C-scaled embeddings, GeGLU, per-head q/k norms, a
    # query_pre_attn_scalar that is not head_dim, sliding layers (window 4, so the 9-token
    # sequences and the 17-token greedy run cross it) with their own RoPE base around a global
    # one with linear scaling, and final logit soft-capping (Gemma 2's; Gemma 3 ships it null).
    "gemma3": Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16,
                               query_pre_attn_scalar=12, sliding_window=4,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention"],
                               rope_parameters={
                                   "sliding_attention": {"rope_type": "default",
                                                         "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                      "rope_theta": 1000000.0}},
                               final_logit_softcapping=30.0, tie_word_embeddings=True),
    # Layer 1 (from max_window_layers on) attends through a window of 4 keys.
    "qwen3-sliding": Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "default",
                                                  "rope_theta": 1000000.0},
                                 use_sliding_window=True, sliding_window=4, max_window_layers=1),
    # Fused qkv_proj / gate_up_proj, LongRoPE (original context 8: the 9-token sequences and
    # the greedy run switch to the long factors; attention_factor from max 32 / 8) and a
    # sliding window of 6 on every layer.
    "phi3": Phi3Config(**{**COMMON, "max_position_embeddings": 32}, tie_word_embeddings=False,
                       sliding_window=6, original_max_position_embeddings=8,
                       rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                        "short_factor": [1.0, 1.1, 1.3, 1.7],
                                        "long_factor": [1.5, 2.0, 3.0, 5.0],
                                        "original_max_position_embeddings": 8}),
    # Gemma 3 from 4B up: the text decoder in `text_config` beside a (tiny) vision tower,
    # weights under language_model.model.*; alignkit loads the text model only, and these
    # logits are the text-only forward's.
    "gemma3-vision": Gemma3Config(
        text_config=Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=4,
                                     sliding_window_pattern=2),
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=127, boi_token_index=125, eoi_token_index=126),
}

# (New fixtures go last: each one's seed is its index here.)

# Families whose fixture also records a LoRA gradient.
LORA_GRAD = ["llama", "qwen2", "mistral", "qwen3", "smollm3", "olmo2", "gemma3", "phi3"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def record(model, name):
    g = torch.Generator().manual_seed(1234)
    seqs = [torch.randint(3, VOCAB, (9,), generator=g).tolist(),
            torch.randint(3, VOCAB, (6,), generator=g).tolist()]
    with open(os.path.join(OUT, name, "expected.json"), "w") as f:
        json.dump(expected(model, seqs), f)


def expected(model, seqs):
    """transformers' logits of `seqs` alone and left-/right-padded, and 12 greedy tokens after
    the first one's first 5: the expected.json `alignkit parity` and model/tests/parity.rs read."""
    out = {"sequences": seqs}
    with torch.no_grad():
        out["logits"] = [model(torch.tensor([s])).logits[0].tolist() for s in seqs]
        width = max(len(s) for s in seqs)
        for side in ("left", "right"):
            ids, mask = [], []
            for s in seqs:
                pad = [0] * (width - len(s))
                ids.append(pad + s if side == "left" else s + pad)
                m = [0] * len(pad)
                ones = [1] * len(s)
                mask.append(m + ones if side == "left" else ones + m)
            ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
            pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
            logits = model(ids_t, attention_mask=mask_t, position_ids=pos).logits
            out[f"{side}_padded"] = {"input_ids": ids, "attention_mask": mask,
                                     "logits": logits.tolist()}
        prompt = seqs[0][:5]
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0, use_cache=True)
        out["greedy"] = {"prompt": prompt, "tokens": gen[0, len(prompt):].tolist()}
    return out


def record_lora_grad(model, name, seed):
    """PEFT LoRA with random A and B over `model`; the loss and its adapter gradients."""
    torch.manual_seed(seed)
    targets = LORA_TARGETS
    if name == "phi3":  # PEFT targets Phi-3's fused projections.
        targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    config = PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                            init_lora_weights=False)
    peft = get_peft_model(model, config)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, VOCAB, (9,), generator=g).tolist()
    logits = peft(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    loss = -logp.mean()
    loss.backward()
    grads = {n.replace(".default", ""): p.grad.tolist()
             for n, p in peft.named_parameters() if "lora_" in n}
    path = os.path.join(OUT, name, "lora")
    peft.save_pretrained(path)
    with open(os.path.join(path, "expected_grad.json"), "w") as f:
        json.dump({"input_ids": ids, "logprobs": logp.tolist(), "loss": loss.item(),
                   "grads": grads}, f)
    peft.unload()


def reload_f32(path):
    # A fresh f32 load: `.to(dtype)` would also round the RoPE inv_freq buffer.
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def main():
    torch.manual_seed(0)
    only = set(sys.argv[1:])
    for i, (name, config) in enumerate(CONFIGS.items()):
        if only and name not in only:
            continue
        config._attn_implementation = "eager"
        if name == "gemma3-vision":
            model = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = model.eval()
        randomize(model, seed=100 + i)
        path = os.path.join(OUT, name)
        model.save_pretrained(path, safe_serialization=True)
        record(model, name)
        if name in LORA_GRAD:
            record_lora_grad(model, name, seed=200 + i)
        if name == "qwen2":
            # bf16, sharded: loads as bf16 → f32; logits of the rounded weights.
            bf = model.to(torch.bfloat16)
            sharded = os.path.join(OUT, "qwen2-bf16-sharded")
            bf.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
            record(reload_f32(sharded), "qwen2-bf16-sharded")
        if name == "llama":
            half = model.to(torch.float16)
            path16 = os.path.join(OUT, "llama-f16")
            half.save_pretrained(path16, safe_serialization=True)
            record(reload_f32(path16), "llama-f16")
    for root, _, files in os.walk(OUT):
        for f in files:
            if f in ("generation_config.json", "README.md"):
                os.remove(os.path.join(root, f))


if __name__ == "__main__":
    main()
