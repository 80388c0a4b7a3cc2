"""A model directory with transformers' random init for a published config, for runs whose
weights the registries do not carry (BENCHMARKS.md "A Qwen3-0.6B-shaped run").

    python scripts/random_model.py CONFIG.json TOKENIZER_DIR OUT_DIR [--template FILE.jinja]

Writes OUT_DIR/config.json + model.safetensors (bf16) with TOKENIZER_DIR's tokenizer.json and
tokenizer_config.json (its chat template replaced by --template's, if given), and points the
config's eos/pad ids at the tokenizer's end-of-turn token. CI never runs this.
"""
import argparse
import json
import os
import shutil

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("out")
    ap.add_argument("--template")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = AutoConfig.from_pretrained(args.config)
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = eos, eos, None
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    shutil.copy(os.path.join(args.tokenizer_dir, "tokenizer.json"), args.out)
    with open(os.path.join(args.tokenizer_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    if args.template:
        tc.pop("chat_template", None)
        shutil.copy(args.template, os.path.join(args.out, "chat_template.jinja"))
    elif os.path.exists(os.path.join(args.tokenizer_dir, "chat_template.jinja")):
        shutil.copy(os.path.join(args.tokenizer_dir, "chat_template.jinja"), args.out)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)


if __name__ == "__main__":
    main()
