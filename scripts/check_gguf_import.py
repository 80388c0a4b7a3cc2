#!/usr/bin/env python3
"""Check an alignkit GGUF import against transformers' own GGUF loader.

    python scripts/check_gguf_import.py OUT_DIR [GGUF_FILE] [--rust-encoder BIN]

OUT_DIR is the Hugging Face directory written by `alignkit_model::gguf::import_gguf` from GGUF_FILE
(default: $ALIGNKIT_SMOLLM2_GGUF). Compares, and exits non-zero on any mismatch:

1. every tensor of OUT_DIR/model.safetensors vs the state_dict transformers builds from the GGUF
   (dequantized, q/k un-permuted) -- max abs difference, expected 0;
2. logits of OUT_DIR loaded by transformers vs the GGUF-loaded model on a short input;
3. token ids of OUT_DIR/tokenizer.json (the `tokenizers` library, and AutoTokenizer on OUT_DIR)
   vs transformers' GGUF tokenizer, on mixed text; with --rust-encoder, also the ids of the Rust
   `tokenizers` crate: BIN is run as `BIN OUT_DIR/tokenizer.json` with a JSON list of texts on
   stdin and must print a JSON list of id lists (with special tokens added), e.g. built from

       let tok = tokenizers::Tokenizer::from_file(std::env::args().nth(1).unwrap())?;
       let texts: Vec<String> = serde_json::from_reader(std::io::stdin())?;
       let ids: Vec<Vec<u32>> = texts.iter()
           .map(|t| tok.encode(t.as_str(), true).map(|e| e.get_ids().to_vec()))
           .collect::<Result<_, _>>()?;
       println!("{}", serde_json::to_string(&ids)?);

   For SmolLM2 ("smollm" pre-tokenizer) every encoding is also checked against llama.cpp's own
   split regexes; on non-ASCII numerals transformers' GGUF tokenizer differs (see DIVERGENT_TEXTS).

Needs torch, transformers (with GGUF support: the `gguf` package), safetensors and tokenizers.
Not run by CI.
"""

import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "12345 apples, 3.14 pears and 1,000,000 ideas",
    "Hello world! 123",
    "  multiple   spaces\tand\ttabs\n\nnew lines\r\n",
    "Café déjà vu — naïve façade, 中文字符, 日本語, emoji 🤗🚀👍🏽",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "def f(x):\n    return x**2  # 42\n",
    "I'm sure they'll say it's 'fine', won't they?",
    "",
]

# transformers builds every byte-level GGUF tokenizer with GPT-2's regex, ignoring
# `tokenizer.ggml.pre = "smollm"`, whose llama.cpp split isolates every \p{N} char first. On ASCII
# digits the two agree (SmolLM2 has no multi-digit tokens); on other numerals (½, ², Arabic-Indic
# digits) they do not. Here the reference is llama.cpp's regex list itself, run by `tokenizers`.
DIVERGENT_TEXTS = ["١٢٣ ½ ² and x³", "Price: ½ cup, 2² = 4"]
LLAMA_CPP_SMOLLM_SPLIT = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("gguf", nargs="?", default=os.environ.get("ALIGNKIT_SMOLLM2_GGUF"))
    ap.add_argument("--rust-encoder", help="program encoding texts with the Rust tokenizers crate")
    args = ap.parse_args()
    if not args.gguf:
        sys.exit("give the GGUF file or set ALIGNKIT_SMOLLM2_GGUF")
    gguf_dir, gguf_name = os.path.split(os.path.abspath(args.gguf))
    ok = True

    # 1. weights
    ref = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    ref.eval()
    ref_sd = ref.state_dict()
    ours = load_file(os.path.join(args.out_dir, "model.safetensors"))
    worst = 0.0
    for name, t in sorted(ours.items()):
        if name not in ref_sd:
            print(f"FAIL weights: {name} is not in the transformers model")
            ok = False
            continue
        r = ref_sd[name].float()
        if tuple(r.shape) != tuple(t.shape):
            print(f"FAIL weights: {name} shape {tuple(t.shape)} vs {tuple(r.shape)}")
            ok = False
            continue
        d = (r - t).abs().max().item() if t.numel() else 0.0
        worst = max(worst, d)
        if d > 1e-6:
            print(f"FAIL weights: {name} max abs diff {d:.3g}")
            ok = False
    missing = sorted(k for k in ref_sd if k not in ours and not (k == "lm_head.weight" and ref.config.tie_word_embeddings))
    if missing:
        print(f"FAIL weights: missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        ok = False
    print(f"weights: {len(ours)} tensors, {sum(t.numel() for t in ours.values())} values, max abs diff {worst:.3g}")

    # 2. logits through transformers loading our directory
    mine = AutoModelForCausalLM.from_pretrained(args.out_dir, dtype=torch.float32)
    mine.eval()
    tok_ref = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    ids = torch.tensor([tok_ref.encode("The capital of France is Paris. 2 + 2 = 4 and")])
    with torch.no_grad():
        a = ref(ids).logits
        b = mine(ids).logits
    d = (a - b).abs().max().item()
    print(f"logits: input {ids.shape[1]} tokens, max abs diff {d:.3g}, argmax equal {bool((a.argmax(-1) == b.argmax(-1)).all())}")
    if d > 1e-4:
        print("FAIL logits")
        ok = False
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_theta", "vocab_size",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        x, y = getattr(ref.config, key, None), getattr(mine.config, key, None)
        if key == "rope_theta" and x is None:
            x = (ref.config.rope_parameters or {}).get("rope_theta")
            y = (mine.config.rope_parameters or {}).get("rope_theta")
        if x != y and not (isinstance(x, float) and isinstance(y, float) and abs(x - y) <= 1e-6 * abs(x)):
            print(f"note config: {key} = {y} (ours) vs {x} (transformers' GGUF)")

    # 3. tokenizer
    fast = Tokenizer.from_file(os.path.join(args.out_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(args.out_dir)
    rust = {}
    if args.rust_encoder:
        run = subprocess.run([args.rust_encoder, os.path.join(args.out_dir, "tokenizer.json")],
                             input=json.dumps(TEXTS + DIVERGENT_TEXTS), capture_output=True, text=True, check=True)
        rust = dict(zip(TEXTS + DIVERGENT_TEXTS, json.loads(run.stdout)))
    n_same = 0
    for text in TEXTS:
        want = tok_ref.encode(text, add_special_tokens=True)
        got = {
            "tokenizers(tokenizer.json)": fast.encode(text).ids,
            "AutoTokenizer(out_dir)": auto.encode(text, add_special_tokens=True),
        }
        if args.rust_encoder:
            got["rust tokenizers crate"] = rust.get(text)
        for who, ids_ in got.items():
            if ids_ != want:
                print(f"FAIL tokenizer {who} on {text!r}:\n  ours {ids_}\n  ref  {want}")
                ok = False
            else:
                n_same += 1
        if auto.decode(want) != tok_ref.decode(want):
            print(f"FAIL decode {text!r}: {auto.decode(want)!r} vs {tok_ref.decode(want)!r}")
            ok = False
    print(f"tokenizer: {n_same} of {len(TEXTS) * (3 if args.rust_encoder else 2)} encodings identical")

    if fast.pre_tokenizer is not None and "Digits" in repr(fast.pre_tokenizer):
        cpp = Tokenizer.from_file(os.path.join(args.out_dir, "tokenizer.json"))
        cpp.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in LLAMA_CPP_SMOLLM_SPLIT]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        for text in TEXTS + DIVERGENT_TEXTS:
            want = cpp.encode(text).ids
            got = {"tokenizers(tokenizer.json)": fast.encode(text).ids}
            if args.rust_encoder:
                got["rust tokenizers crate"] = rust.get(text)
            for who, ids_ in got.items():
                if ids_ != want:
                    print(f"FAIL tokenizer {who} vs llama.cpp smollm split on {text!r}:\n  ours {ids_}\n  ref  {want}")
                    ok = False
        for text in DIVERGENT_TEXTS:
            print(f"note: on {text!r} ours (= llama.cpp split) {fast.encode(text).ids}, "
                  f"transformers' GGUF tokenizer {tok_ref.encode(text)}")
        print(f"tokenizer: llama.cpp smollm split checked on {len(TEXTS) + len(DIVERGENT_TEXTS)} texts")
    msgs = [{"role": "user", "content": "Hi 123"}]
    t1 = tok_ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    t2 = auto.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if t1 != t2:
        print(f"FAIL chat template:\n{t1!r}\n{t2!r}")
        ok = False
    print("chat template: identical" if t1 == t2 else "chat template: DIFFERENT")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(tok_ref, attr) != getattr(auto, attr):
            print(f"note tokenizer: {attr} = {getattr(auto, attr)!r} (ours) vs {getattr(tok_ref, attr)!r}")

    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
