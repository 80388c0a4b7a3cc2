"""Parity fixture for alignkit-model's reward head, generated with transformers.

Builds a tiny random `LlamaForSequenceClassification` (num_labels = 1,
pad_token_id set, SmolLM2-like tied config), saves it in HF layout under
model/tests/fixtures/reward-llama/ and records, in f32:
  - each sequence's score, run alone (no padding),
  - the scores of the same batch right- and left-padded with pad_token_id
    (transformers reads the score at the last token that is not pad_token_id;
    the sequences never contain it, so that is the last real token),
  - the per-token scores `score(hidden)` [B, T] of the right-padded batch
    (what a PPO value head reads).

Run from the repo root:  python scripts/fixtures_reward.py
CI never runs this; the outputs are committed.
"""
import json
import os

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "model", "tests", "fixtures", "reward-llama")
VOCAB = 128
PAD = 0


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def main():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=PAD, num_labels=1)
    config._attn_implementation = "eager"
    model = LlamaForSequenceClassification(config).to(torch.float32).eval()
    randomize(model, seed=7)
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    g = torch.Generator().manual_seed(4321)
    # Each sequence ends with EOS (2), as an encoded chat turn does; no PAD inside.
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() + [2] for n in (6, 3, 8)]
    out = {"sequences": seqs, "pad_token_id": PAD}
    with torch.no_grad():
        out["scores"] = [model(torch.tensor([s])).logits[0, 0].item() for s in seqs]
        width = max(len(s) for s in seqs)
        for side in ("left", "right"):
            ids, mask = [], []
            for s in seqs:
                pad = [PAD] * (width - len(s))
                ids.append(pad + s if side == "left" else s + pad)
                mask.append([0] * len(pad) + [1] * len(s) if side == "left" else [1] * len(s) + [0] * len(pad))
            ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
            pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
            scores = model(ids_t, attention_mask=mask_t, position_ids=pos).logits[:, 0]
            entry = {"input_ids": ids, "attention_mask": mask, "scores": scores.tolist()}
            if side == "right":
                hidden = model.model(ids_t, attention_mask=mask_t, position_ids=pos).last_hidden_state
                entry["token_scores"] = model.score(hidden)[..., 0].tolist()
            out[f"{side}_padded"] = entry
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(out, f)
    gen = os.path.join(OUT, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)


if __name__ == "__main__":
    main()
