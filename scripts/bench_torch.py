"""PyTorch/transformers side of `alignkit bench --torch scripts/bench_torch.py`.

Same model directory, shapes and measurements as alignkit's bench:
  forward_s            mean next-token NLL of a [batch, seq] random batch, no grad
  train_step_s         forward + backward + AdamW step (lr 1e-5, weight decay 0)
  decode_tokens_per_s  greedy decode at batch 1 after a 16-token prompt, KV cache
  sft_full, sft_lora   an SFT step as TRL's SFTTrainer runs it: causal-LM loss over
                       every token (`labels=input_ids`), backward, clip_grad_norm_(1.0),
                       torch.optim.AdamW (lr 2e-5, weight decay 0.01); LoRA through PEFT,
                       LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                       lora_dropout=0), only adapters in the optimizer
  dpo_full, dpo_lora   a DPO step with batch / 2 pairs (the first seq / 2 tokens of each
                       row are the prompt): chosen and rejected in one concatenated
                       forward, reference log-probs under no_grad every step (full: a
                       frozen copy; LoRA: the same model inside `disable_adapter()`),
                       TRL's sigmoid loss with beta 0.1, clip, AdamW (lr 1e-6)
  rollout              GRPO-style sampled generation: --rollout-rows rows, G = 8 per
                       prompt (row r samples prompt r // 8; prompt p has
                       L - (p % 4) * L // 8 random tokens, L = --rollout-prompt),
                       left-padded, one `generate` call with do_sample, temperature 1,
                       no top-k/top-p and no EOS, --rollout-tokens new tokens per row;
                       reports {"rollout_s", "tokens_per_s", "rows", "generated_tokens",
                       "device_memory_mb"}
                       (tokens/s = generated tokens / seconds, prefill included)
Each step section reports {"step_s", "tokens_per_s", "trainable_params", "peak_rss_mb",
"device_memory_mb"} (peak resident host memory of the section, model load included; Linux;
and on a GPU the caching allocator's max_memory_reserved, else null).
--model-config FILE: random weights for that config.json instead of --model (no pretrained
weights needed; a 1B-class config for memory and speed).
--gradient-checkpointing: `gradient_checkpointing_enable(use_reentrant=False)` on the SFT and
DPO models (transformers' activation checkpointing per decoder layer).
--recompute-granularity selective: that checkpoint also keeps every matmul's output
(torch.utils.checkpoint's `create_selective_checkpoint_contexts` on aten.mm/addmm), so
the backward pass recomputes no projection: alignkit's `train.recompute_granularity`.
Medians over --steps timed repetitions after one warm-up. Prints one JSON line.
"""
import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

SECTIONS = ["forward", "train_step", "decode", "sft_full", "sft_lora", "dpo_full", "dpo_lora",
            "rollout"]
ROLLOUT_GROUP = 8


MODEL_CONFIG = None
DEVICE = "cpu"


def load(path):
    if MODEL_CONFIG is not None:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(MODEL_CONFIG)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                attn_implementation="sdpa").to(DEVICE)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="sdpa").to(DEVICE)


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_rss():
    """Start a new peak-memory measurement: host RSS (Linux: writing 5 to clear_refs
    resets VmHWM) and, on a GPU, the CUDA caching allocator's peak."""
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def device_memory_mb():
    """The most the CUDA caching allocator reserved since the reset (what other
    users of the GPU cannot have; alignkit reports its pool's reserved pages)."""
    if DEVICE.startswith("cuda"):
        return torch.cuda.max_memory_reserved() / 2**20
    return None


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def lora(model):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, config)


def timed(steps, fn):
    """Median seconds of `fn()` over `steps` runs after one warm-up."""
    times = []
    for i in range(steps + 1):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_section(model, step, lr, steps, tokens):
    """Median seconds of loss → backward → clip → AdamW over the trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)

    def one():
        loss = step(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s = timed(steps, one)
    return {"step_s": step_s, "tokens_per_s": tokens / step_s,
            "trainable_params": sum(p.numel() for p in trainable),
            "peak_rss_mb": peak_rss_mb(), "device_memory_mb": device_memory_mb()}


def completion_logps(model, ids, loss_mask):
    """Σ log p over each row's completion tokens, as TRL's DPOTrainer: logits of
    every position, then `selective_log_softmax` (gather − per-row logsumexp)."""
    logits = model(input_ids=ids).logits[:, :-1]
    labels = ids[:, 1:]
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return ((picked - logsumexp) * loss_mask[:, 1:]).sum(-1)


def dpo_step(reference, ids, loss_mask, beta=0.1, label_smoothing=0.0):
    """TRL's sigmoid DPO loss with the reference log-probs from `reference(model)`."""
    n = ids.shape[0] // 2

    def step(model):
        with torch.no_grad():
            ref = reference(model)
        policy = completion_logps(model, ids, loss_mask)
        logits = (policy[:n] - policy[n:]) - (ref[:n] - ref[n:])
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
        return losses.mean()

    return step


def rollout_batch(rows, prompt, vocab):
    """The rollout batch as alignkit's bench builds it: row r samples prompt r // G,
    prompt p has `prompt - (p % 4) * prompt // 8` random tokens, left padding (id 0)."""
    n = -(-rows // ROLLOUT_GROUP)
    prompts = [torch.randint(0, vocab, (prompt - (p % 4) * prompt // 8,)) for p in range(n)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r in range(rows):
        p = prompts[r // ROLLOUT_GROUP]
        ids[r, width - len(p):] = p
        mask[r, width - len(p):] = 1
    return ids.to(DEVICE), mask.to(DEVICE)


def main():
    ap = argparse.ArgumentParser()
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model")
    source.add_argument("--model-config")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--recompute-granularity", choices=["full", "selective"], default="full")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rollout-rows", type=int, default=16)
    ap.add_argument("--rollout-prompt", type=int, default=64)
    ap.add_argument("--rollout-tokens", type=int, default=64)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="comma-separated sections: " + ", ".join(SECTIONS))
    args = ap.parse_args()
    global MODEL_CONFIG, DEVICE
    MODEL_CONFIG = args.model_config
    DEVICE = args.device
    only = set(args.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown --only section(s): {', '.join(sorted(unknown))}")

    torch.manual_seed(0)
    out = {name: None for name in ["forward_s", "train_step_s", "decode_tokens_per_s"]
           + SECTIONS[3:]}
    vocab = None
    model = None
    if only & {"forward", "train_step", "decode"}:
        model = load(args.model)
        vocab = model.config.vocab_size
    else:
        from transformers import AutoConfig
        vocab = AutoConfig.from_pretrained(args.model_config or args.model).vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq)).to(DEVICE)
    tokens = args.batch * args.seq

    def nll():
        logits = model(ids).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1)
        return -logp.gather(-1, ids[:, 1:, None]).mean()

    if "forward" in only:
        model.eval()
        with torch.no_grad():
            out["forward_s"] = timed(args.steps, lambda: nll().item())

    if "train_step" in only:
        model.train()
        model.config.use_cache = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

        def train_step():
            loss = nll()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out["train_step_s"] = timed(args.steps, train_step)
        del opt

    if "decode" in only:
        model.eval()
        model.config.use_cache = True
        prompt = ids[:1, :16]
        with torch.no_grad():
            t = time.perf_counter()
            gen = model.generate(prompt, max_new_tokens=args.decode_tokens, do_sample=False,
                                 min_new_tokens=args.decode_tokens, eos_token_id=None,
                                 pad_token_id=0, use_cache=True)
            sync()
            dt = time.perf_counter() - t
        out["decode_tokens_per_s"] = (gen.shape[1] - prompt.shape[1]) / dt
    model = None

    def sft_loss(m):
        return m(input_ids=ids, labels=ids).loss

    def checkpointing(m):
        if args.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if args.recompute_granularity == "selective":
                import functools
                from torch.utils.checkpoint import create_selective_checkpoint_contexts
                keep = [torch.ops.aten.mm.default, torch.ops.aten.addmm.default]
                kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts,
                                                         keep)
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            m.config.use_cache = False
        return m

    for name in ["sft_full", "sft_lora"]:
        if name in only:
            reset_peak_rss()
            m = load(args.model)
            if name == "sft_lora":
                m = lora(m)
            checkpointing(m)
            m.train()
            out[name] = step_section(m, sft_loss, 2e-5, args.steps, tokens)
            del m

    if only & {"dpo_full", "dpo_lora"}:
        if args.batch % 2 or args.seq < 4:
            ap.error("DPO needs an even --batch and --seq at least 4")
        n, p = args.batch // 2, args.seq // 2
        # Pair i: rows i (chosen) and n + i (rejected) share the prompt ids[i, :p].
        pair_ids = ids.clone()
        pair_ids[n:, :p] = ids[:n, :p]
        loss_mask = torch.zeros_like(pair_ids, dtype=torch.float32)
        loss_mask[:, p:] = 1.0
    if "dpo_full" in only:
        reset_peak_rss()
        m = load(args.model)
        frozen = copy.deepcopy(m).eval().requires_grad_(False)
        checkpointing(m)
        m.train()
        step = dpo_step(lambda _: completion_logps(frozen, pair_ids, loss_mask),
                        pair_ids, loss_mask)
        out["dpo_full"] = step_section(m, step, 1e-6, args.steps, tokens)
        del m, frozen
    if "dpo_lora" in only:
        reset_peak_rss()
        m = checkpointing(lora(load(args.model)))
        m.train()

        def adapters_off(model):
            with model.disable_adapter():
                return completion_logps(model, pair_ids, loss_mask)

        step = dpo_step(adapters_off, pair_ids, loss_mask)
        out["dpo_lora"] = step_section(m, step, 1e-6, args.steps, tokens)
        del m

    if "rollout" in only:
        reset_peak_rss()
        m = load(args.model).eval()
        ids_r, mask_r = rollout_batch(args.rollout_rows, args.rollout_prompt, vocab)
        n = args.rollout_tokens
        gen = None

        def rollout():
            nonlocal gen
            with torch.no_grad():
                gen = m.generate(input_ids=ids_r, attention_mask=mask_r, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n,
                                 min_new_tokens=n, eos_token_id=None, pad_token_id=0,
                                 use_cache=True)

        rollout_s = timed(args.steps, rollout)
        generated = gen.shape[0] * (gen.shape[1] - ids_r.shape[1])
        out["rollout"] = {"rollout_s": rollout_s, "tokens_per_s": generated / rollout_s,
                          "rows": args.rollout_rows, "generated_tokens": generated,
                          "device_memory_mb": device_memory_mb()}
        del m

    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
