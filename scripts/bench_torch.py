"""PyTorch/transformers side of `alignkit bench --torch scripts/bench_torch.py`.

Same model directory, shapes and measurements as alignkit's bench:
  forward_s            mean next-token NLL of a [batch, seq] random batch, no grad
  train_step_s         forward + backward + AdamW step (lr 1e-5, weight decay 0)
  decode_tokens_per_s  greedy decode at batch 1 after a 16-token prompt, KV cache
Medians over --steps timed repetitions after one warm-up. Prints one JSON line.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq))

    def nll():
        logits = model(ids).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1)
        return -logp.gather(-1, ids[:, 1:, None]).mean()

    model.eval()
    times = []
    with torch.no_grad():
        for i in range(args.steps + 1):
            t = time.perf_counter()
            nll().item()
            if i:
                times.append(time.perf_counter() - t)
    forward_s = statistics.median(times)

    model.train()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    times = []
    for i in range(args.steps + 1):
        t = time.perf_counter()
        loss = nll()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    train_step_s = statistics.median(times)

    model.eval()
    prompt = ids[:1, :16]
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=args.decode_tokens, do_sample=False,
                             min_new_tokens=args.decode_tokens, eos_token_id=None,
                             pad_token_id=0, use_cache=True)
        dt = time.perf_counter() - t
    decode = (out.shape[1] - prompt.shape[1]) / dt
    print(json.dumps({"forward_s": forward_s, "train_step_s": train_step_s,
                      "decode_tokens_per_s": decode, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
