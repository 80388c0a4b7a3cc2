"""Check `alignkit logprobs` against transformers on the same HF directory.

    python scripts/check_smollm2_logprobs.py MODEL_DIR ALIGNKIT_BIN

For a few (prompt, completion) pairs, tokenizes with transformers (the ids must
match alignkit's), computes per-token log-probs of the completion in f32 and
prints the max per-token |difference|. Exits non-zero above 1e-3.
"""
import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CASES = [
    ("What is the capital of France?", "The capital of France is Paris.", True),
    ("Write the numbers 1 to 12:", " 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12", False),
    ("Translate to French: good morning", "Bonjour ! Ça va très bien, merci. 😀", True),
]


def main():
    model_dir, binary = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    worst = 0.0
    for prompt, completion, chat in CASES:
        args = [binary, "logprobs", "--model", model_dir, "--prompt", prompt,
                "--completion", completion, "--json"] + (["--chat"] if chat else [])
        ours = json.loads(subprocess.check_output(args).decode().strip().splitlines()[-1])
        if chat:
            p_ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
            if isinstance(p_ids, dict) or hasattr(p_ids, "input_ids"):
                p_ids = p_ids["input_ids"]
        else:
            p_ids = tok(prompt)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"]
        assert [t["id"] for t in ours["tokens"]] == c_ids, "completion ids differ"
        assert ours["prompt_tokens"] == len(p_ids), "prompt length differs"
        ids = torch.tensor([list(p_ids) + c_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        theirs = [logp[len(p_ids) - 1 + i, c].item() for i, c in enumerate(c_ids)]
        diff = max(abs(a["logprob"] - b) for a, b in zip(ours["tokens"], theirs))
        worst = max(worst, diff)
        print(f"{len(c_ids):3d} tokens  total ours {ours['total_logprob']:.5f} "
              f"transformers {sum(theirs):.5f}  max |Δ| per token {diff:.2e}")
    print(f"max per-token |Δlogprob| = {worst:.2e}")
    sys.exit(0 if worst <= 1e-3 else 1)


if __name__ == "__main__":
    main()
