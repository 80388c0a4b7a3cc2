"""PEFT / transformers interop fixtures for alignkit's LoRA exports.

Reads what alignkit wrote under sft/tests/fixtures/lora/ (over the Qwen2
fixture) and lora-qwen3/, lora-smollm3/, lora-olmo2/, lora-gemma3/, lora-phi3/ (regenerate them with
`cargo test -p alignkit-sft --test sft_lora_interop -- --ignored`):
  adapter/  a PEFT adapter exported by alignkit over model/tests/fixtures/qwen2
  merged/   the same adapter merged by alignkit into an HF directory
  alignkit_logits.json  alignkit's logits for the base, the adapter and the merge

and records, with PyTorch in f32, in reference_logits.json:
  base                   transformers on the base model
  peft                   PeftModel.from_pretrained(base, adapter/)
  peft_merge_and_unload  the same, merged by PEFT
  transformers_merged    AutoModelForCausalLM.from_pretrained(merged/)

It prints the largest absolute difference of each against alignkit's logits;
the Rust test `peft_and_transformers_reproduce_alignkit_logits` checks them
(within 1e-4). Run from the repo root:  python scripts/fixtures_lora.py
CI never runs this; the outputs are committed.
"""
import json
import os

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..")
FAMILIES = [("lora", "qwen2"), ("lora-qwen3", "qwen3"), ("lora-smollm3", "smollm3"),
            ("lora-olmo2", "olmo2"), ("lora-gemma3", "gemma3"),
            ("lora-phi3", "phi3")]


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def main():
    for fixture, base in FAMILIES:
        print(fixture)
        record(os.path.join(ROOT, "sft", "tests", "fixtures", fixture),
               os.path.join(ROOT, "model", "tests", "fixtures", base))


def record(fix, base_dir):
    FIX, BASE = fix, base_dir
    ours = json.load(open(os.path.join(FIX, "alignkit_logits.json")))
    ids = ours["input_ids"]
    load = dict(dtype=torch.float32, attn_implementation="eager")

    base = AutoModelForCausalLM.from_pretrained(BASE, **load).eval()
    out = {"input_ids": ids, "base": logits(base, ids)}
    peft_model = PeftModel.from_pretrained(base, os.path.join(FIX, "adapter")).eval()
    out["peft"] = logits(peft_model, ids)
    out["peft_merge_and_unload"] = logits(peft_model.merge_and_unload(), ids)
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "merged"), **load).eval()
    out["transformers_merged"] = logits(merged, ids)

    for key, against in [("base", "base"), ("peft", "adapter"),
                         ("peft_merge_and_unload", "adapter"), ("transformers_merged", "merged")]:
        diff = (out[key] - torch.tensor(ours[against])).abs().max().item()
        print(f"max |{key} - alignkit {against}| = {diff:.3e}")
    effect = (out["peft"] - out["base"]).abs().max().item()
    print(f"adapter effect max |peft - base| = {effect:.3e}")

    saved = {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in out.items()}
    with open(os.path.join(FIX, "reference_logits.json"), "w") as f:
        json.dump(saved, f)


if __name__ == "__main__":
    main()
