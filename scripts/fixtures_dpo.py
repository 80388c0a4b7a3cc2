"""Parity fixture for alignkit-dpo: what TRL's DPO formulas give, computed with torch.

Builds a tiny random Llama reference model and a policy (the reference with
perturbed weights), saves both in HF layout under dpo/tests/fixtures/dpo-tiny/
{reference,policy}/, and for a few prompt/chosen/rejected token pairs records,
in f32 as TRL computes them:
  - the completion log-prob sums of policy and reference (chosen and rejected in
    one right-padded concatenated forward, `selective_log_softmax` on shifted
    logits, masked to completion tokens — TRL `DPOTrainer._compute_loss`),
  - for each loss type: the per-pair losses, the batch loss and the logged
    metrics `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
    `rewards/accuracies`, `logps/chosen`, `logps/rejected`, `logits/chosen`,
    `logits/rejected` (and `nll_loss` with the RPO term).

The loss formulas are transcribed from TRL (trl/trainer/dpo_trainer.py,
`dpo_loss` before the Feb 2026 refactor and `_compute_loss` after it; both give
these numbers). TRL itself is not needed.

Run from the repo root:  python scripts/fixtures_dpo.py
CI never runs this; the outputs are committed.
"""
import json
import os

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

OUT = os.path.join(os.path.dirname(__file__), "..", "dpo", "tests", "fixtures", "dpo-tiny")
VOCAB = 128
PAD, EOS = 0, 2
BETA = 0.1

# (loss_type, label_smoothing, rpo_alpha)
CASES = [
    ("sigmoid", 0.0, None),
    ("sigmoid", 0.1, None),  # cDPO
    ("sigmoid", 0.0, 0.5),  # RPO
    ("ipo", 0.0, None),
    ("hinge", 0.0, None),
    ("robust", 0.1, None),
    ("sigmoid_norm", 0.0, None),
    ("apo_zero", 0.0, None),
    ("apo_down", 0.0, None),
]


def losses_for(loss_type, eps, chosen_logps, rejected_logps, ref_chosen, ref_rejected, n_chosen, n_rejected):
    chosen_logratios = chosen_logps - ref_chosen
    rejected_logratios = rejected_logps - ref_rejected
    logits = (chosen_logps - rejected_logps) - (ref_chosen - ref_rejected)
    b = BETA
    if loss_type == "sigmoid":
        return -F.logsigmoid(b * logits) * (1 - eps) - F.logsigmoid(-b * logits) * eps
    if loss_type == "robust":
        return (-F.logsigmoid(b * logits) * (1 - eps) + F.logsigmoid(-b * logits) * eps) / (1 - 2 * eps)
    if loss_type == "hinge":
        return torch.relu(1 - b * logits)
    if loss_type == "ipo":
        delta = chosen_logratios / n_chosen.clamp(min=1.0) - rejected_logratios / n_rejected.clamp(min=1.0)
        return (delta - 1 / (2 * b)) ** 2
    if loss_type == "sigmoid_norm":
        delta = chosen_logratios / n_chosen.clamp(min=1.0) - rejected_logratios / n_rejected.clamp(min=1.0)
        return -F.logsigmoid(b * delta)
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(b * chosen_logratios)) + torch.sigmoid(b * rejected_logratios)
    if loss_type == "apo_down":
        return torch.sigmoid(b * chosen_logratios) + (1 - torch.sigmoid(b * (chosen_logratios - rejected_logratios)))
    raise ValueError(loss_type)


def concatenated(pairs):
    """Rows 0..n prompt+chosen, n..2n prompt+rejected, right-padded."""
    rows = [p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs]
    comp = [[0] * len(p) + [1] * len(c) for p, c, _ in pairs] + [[0] * len(p) + [1] * len(r) for p, _, r in pairs]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion = torch.tensor([c + [0] * (width - len(c)) for c in comp])
    return ids, attn, completion


def forward(model, ids, attn, completion):
    with torch.no_grad():
        logits = model(ids, attention_mask=attn).logits
    shift_logits = logits[:, :-1]
    labels = ids[:, 1:]
    mask = completion[:, 1:]
    per_token = torch.gather(shift_logits.log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    per_token = per_token * mask
    return per_token.sum(1), shift_logits, labels, mask


def main():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    config._attn_implementation = "eager"
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 else 0.0))
    policy = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    policy.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    for name, model in (("reference", reference), ("policy", policy)):
        path = os.path.join(OUT, name)
        model.save_pretrained(path, safe_serialization=True)
        gen = os.path.join(path, "generation_config.json")
        if os.path.exists(gen):
            os.remove(gen)

    r = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()
    pairs = [
        (r(4), r(3) + [EOS], r(5) + [EOS]),
        (r(2), r(6) + [EOS], r(2) + [EOS]),
        (r(5), r(4) + [EOS], r(4) + [EOS]),
        (r(3), r(1) + [EOS], r(7) + [EOS]),
    ]
    n = len(pairs)
    ids, attn, completion = concatenated(pairs)
    logps, shift_logits, labels, mask = forward(policy, ids, attn, completion)
    ref_logps, _, _, _ = forward(reference, ids, attn, completion)
    chosen_logps, rejected_logps = logps[:n], logps[n:]
    ref_chosen, ref_rejected = ref_logps[:n], ref_logps[n:]
    n_tokens = mask.sum(1).float()
    n_chosen, n_rejected = n_tokens[:n], n_tokens[n:]

    # TRL: mean over completion tokens (and vocabulary) of the shifted logits.
    chosen_logits_mean = shift_logits[:n][mask[:n].bool()].mean().item()
    rejected_logits_mean = shift_logits[n:][mask[n:].bool()].mean().item()
    # RPO / "sft": cross-entropy of the chosen completion tokens, token mean over the batch.
    nll = F.cross_entropy(shift_logits[:n][mask[:n].bool()], labels[:n][mask[:n].bool()]).item()

    out = {
        "beta": BETA,
        "pad_token_id": PAD,
        "pairs": [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": rj} for p, c, rj in pairs],
        "logps": {"chosen": chosen_logps.tolist(), "rejected": rejected_logps.tolist()},
        "ref_logps": {"chosen": ref_chosen.tolist(), "rejected": ref_rejected.tolist()},
        "tokens": {"chosen": n_chosen.tolist(), "rejected": n_rejected.tolist()},
        "cases": [],
    }
    for loss_type, eps, rpo_alpha in CASES:
        losses = losses_for(loss_type, eps, chosen_logps, rejected_logps, ref_chosen, ref_rejected,
                            n_chosen, n_rejected)
        if rpo_alpha is not None:
            losses = losses + rpo_alpha * nll
        chosen_rewards = BETA * (chosen_logps - ref_chosen)
        rejected_rewards = BETA * (rejected_logps - ref_rejected)
        metrics = {
            "loss": losses.mean().item(),
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps/chosen": chosen_logps.mean().item(),
            "logps/rejected": rejected_logps.mean().item(),
            "logits/chosen": chosen_logits_mean,
            "logits/rejected": rejected_logits_mean,
        }
        if rpo_alpha is not None:
            metrics["nll_loss"] = nll
        out["cases"].append({"loss_type": loss_type, "label_smoothing": eps, "rpo_alpha": rpo_alpha,
                             "losses": (losses - (rpo_alpha * nll if rpo_alpha is not None else 0.0)).tolist(),
                             "metrics": metrics})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
