"""Parity fixtures from TRL's own trainers (not transcribed formulas).

DPO (dpo/tests/fixtures/dpo-trl/): TRL 1.16's `DPOTrainer` runs one full
fine-tuning step of the tiny random policy of dpo/tests/fixtures/dpo-tiny/
against its reference (a different model), on 4 preference pairs, for the
losses sigmoid, ipo and hinge, on conversational and on plain-string data.
Recorded: TRL's tokenization of every pair (prompt/chosen/rejected ids: for
conversations the completion is everything the chat template renders after
the prompt, ChatML's trailing newline included) and every metric the step
logs.

Reward models (reward/tests/fixtures/reward-trl/): the tiny random
`LlamaForSequenceClassification` of model/tests/fixtures/reward-llama/, saved
as alignkit exports one (config `pad_token_id` = the tokenizer's pad token =
`<|im_end|>`, tokenizer next to it). Recorded: the score transformers gives
each record of records-{pairs,completions}.jsonl (conversations through `apply_chat_template`,
strings with EOS appended, as TRL's `RewardTrainer` tokenizes them), alone and
in right-padded batches; and the metrics of one `RewardTrainer` step on chat
and string pairs, with `grad_norm` both as TRL computes it and with the
embedding's `padding_idx` cleared (transformers' embedding gives the pad
token's row no gradient; `<|im_end|>` is that token here).

Both use a tiny ChatML tokenizer written here: `<|endoftext|>` 0,
`<|im_start|>` 1, `<|im_end|>` 2 (SmolLM2's ids), then one byte-level token
per printable ASCII character and the newline (no merges), with SmolLM2's
chat template, eos = pad = `<|im_end|>`.

Run from the repo root (needs torch, transformers, trl==1.16.*):
    python scripts/fixtures_trl.py
CI never runs this; the outputs are committed.
"""
import json
import os
import shutil
import tempfile

import torch
import transformers
import trl
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, LlamaForSequenceClassification,
                          PreTrainedTokenizerFast)
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

ROOT = os.path.join(os.path.dirname(__file__), "..")
DPO_TINY = os.path.join(ROOT, "dpo", "tests", "fixtures", "dpo-tiny")
DPO_OUT = os.path.join(ROOT, "dpo", "tests", "fixtures", "dpo-trl")
REWARD_IN = os.path.join(ROOT, "model", "tests", "fixtures", "reward-llama")
REWARD_OUT = os.path.join(ROOT, "reward", "tests", "fixtures", "reward-trl")
TEMPLATE = os.path.join(ROOT, "datasets", "tests", "fixtures", "smollm2", "chat_template.jinja")

BETA = 0.1
LR = 1e-3

CHAT_PAIRS = [
    ("What colour is the sea?", "Blue, mostly.", "The sea is green and also very loud today."),
    ("Name a prime.", "Seven.", "Nine is prime."),
    ("Say hi.", "Hi! How can I help you?", "Bye."),
    ("2+2?", "4", "It is 5, or maybe 22."),
]
TEXT_PAIRS = [
    ("Q: capital of France?\nA:", " Paris.", " Rome, I think."),
    ("Q: 3*3?\nA:", " 9", " 33 or so"),
    ("The cat sat on the", " mat.", " moon, loudly."),
    ("Translate 'gato':", " cat", " dog, probably"),
]


def tokenizer():
    """Byte-level BPE without merges: every character is one token."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + ["\u0120", "\u010a"]  # "Ġ" = space, "Ċ" = "\n"
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    with open(TEMPLATE) as f:
        fast.chat_template = f.read()
    return fast


def save_tokenizer(tok, path):
    os.makedirs(path, exist_ok=True)
    tok.save_pretrained(path)
    for extra in ("special_tokens_map.json",):
        p = os.path.join(path, extra)
        if os.path.exists(p):
            os.remove(p)


def pairs_records(kind):
    if kind == "chat":
        return [{"prompt": [{"role": "user", "content": p}],
                 "chosen": [{"role": "assistant", "content": c}],
                 "rejected": [{"role": "assistant", "content": r}]} for p, c, r in CHAT_PAIRS]
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in TEXT_PAIRS]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def common_args(cls, out_dir, **kw):
    return cls(output_dir=out_dir, per_device_train_batch_size=4, max_steps=1, learning_rate=LR,
               lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
               logging_steps=1, report_to="none", save_strategy="no", bf16=False, fp16=False,
               gradient_checkpointing=False, use_cpu=True, seed=0, dataloader_drop_last=False, **kw)


def step_log(trainer):
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(logs) == 1, trainer.state.log_history
    return {k: v for k, v in logs[0].items() if k != "step"}


def dpo(tok):
    os.makedirs(DPO_OUT, exist_ok=True)
    save_tokenizer(tok, os.path.join(DPO_OUT, "tokenizer"))
    out = {"trl_version": trl.__version__, "transformers_version": transformers.__version__,
           "torch_version": torch.__version__, "beta": BETA, "learning_rate": LR, "cases": []}
    for kind in ("chat", "text"):
        records = pairs_records(kind)
        write_jsonl(os.path.join(DPO_OUT, f"prefs-{kind}.jsonl"), records)
        for loss_type in ("sigmoid", "ipo", "hinge"):
            policy = AutoModelForCausalLM.from_pretrained(os.path.join(DPO_TINY, "policy"), dtype=torch.float32)
            reference = AutoModelForCausalLM.from_pretrained(os.path.join(DPO_TINY, "reference"),
                                                             dtype=torch.float32)
            with tempfile.TemporaryDirectory() as tmp:
                args = common_args(DPOConfig, tmp, beta=BETA, loss_type=[loss_type])
                trainer = DPOTrainer(model=policy, ref_model=reference, args=args,
                                     train_dataset=Dataset.from_list(records), processing_class=tok)
                tokenized = [{k: ex[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                             for ex in trainer.train_dataset]
                trainer.train()
            out["cases"].append({"data": kind, "loss_type": loss_type, "pairs": tokenized,
                                 "metrics": step_log(trainer)})
            print("dpo", kind, loss_type, out["cases"][-1]["metrics"])
    with open(os.path.join(DPO_OUT, "expected.json"), "w") as f:
        json.dump(out, f, indent=1)


def reward_model(model_dir):
    model = LlamaForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    return model.eval()


def scored_text(tok, record):
    """The ids TRL's RewardTrainer (and a transformers user) scores for one
    sequence: the chat template's whole rendering, or the string with EOS."""
    if isinstance(record, list):
        return tok.apply_chat_template(record, tokenize=True, return_dict=True)["input_ids"]
    return tok(text=record + tok.eos_token)["input_ids"]


def reward(tok):
    model_dir = os.path.join(REWARD_OUT, "model")
    os.makedirs(model_dir, exist_ok=True)
    model = LlamaForSequenceClassification.from_pretrained(REWARD_IN, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id  # as alignkit's export writes it
    model.save_pretrained(model_dir, safe_serialization=True)
    save_tokenizer(tok, model_dir)
    gen = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)

    # Scoring: records of every kind `alignkit reward score` reads (one kind per file).
    user = lambda s: {"role": "user", "content": s}
    bot = lambda s: {"role": "assistant", "content": s}
    files = {
        "pairs": [
            {"prompt": [user("What colour is the sea?")], "chosen": [bot("Blue.")],
             "rejected": [bot("Green, and loud.")]},
            {"prompt": "Q: 3*3?\nA:", "chosen": " 9", "rejected": " 33 or so"},
        ],
        "completions": [
            {"messages": [user("Name a prime."), bot("Seven."), user("Another?"), bot("Eleven.")]},
            {"prompt": [user("Say hi.")], "completion": [bot("Hi!")]},
            {"prompt": "The cat sat on the", "completion": " mat."},
        ],
    }
    sequences = []  # (file, record index, ids)
    for name, records in files.items():
        write_jsonl(os.path.join(REWARD_OUT, f"records-{name}.jsonl"), records)
        for i, r in enumerate(records):
            if "messages" in r:
                sequences.append((name, i, scored_text(tok, r["messages"])))
            elif "completion" in r:
                sequences.append((name, i, scored_text(tok, r["prompt"] + r["completion"])))
            else:
                sequences.append((name, i, scored_text(tok, r["prompt"] + r["chosen"])))
                sequences.append((name, i, scored_text(tok, r["prompt"] + r["rejected"])))
    model = reward_model(model_dir)
    pad = tok.pad_token_id
    with torch.no_grad():
        alone = [model(torch.tensor([ids])).logits[0, 0].item() for _, _, ids in sequences]
        width = max(len(ids) for _, _, ids in sequences)
        batch = torch.tensor([ids + [pad] * (width - len(ids)) for _, _, ids in sequences])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, _, ids in sequences])
        padded = model(batch, attention_mask=mask).logits[:, 0].tolist()
    out = {"trl_version": trl.__version__, "transformers_version": transformers.__version__,
           "pad_token_id": pad,
           "sequences": [{"file": name, "record": i, "input_ids": ids, "score": s, "score_padded": p}
                         for (name, i, ids), s, p in zip(sequences, alone, padded)],
           "train": []}

    # One RewardTrainer step on chat and string pairs.
    for kind in ("chat", "text"):
        pairs = pairs_records(kind)
        write_jsonl(os.path.join(REWARD_OUT, f"prefs-{kind}.jsonl"), pairs)
        entry = {"data": kind}
        for quirk in (True, False):
            model = reward_model(model_dir)
            if not quirk:
                # The true gradient: the pad token's embedding row gets one too.
                model.model.embed_tokens.padding_idx = None
            with tempfile.TemporaryDirectory() as tmp:
                args = common_args(RewardConfig, tmp)
                trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                        processing_class=tok)
                trainer.train()
            m = step_log(trainer)
            if quirk:
                entry["metrics"] = m
            else:
                entry["grad_norm_true"] = m["grad_norm"]
        out["train"].append(entry)
        print("reward", kind, entry)
    with open(os.path.join(REWARD_OUT, "expected.json"), "w") as f:
        json.dump(out, f, indent=1)


def main():
    torch.manual_seed(0)
    tok = tokenizer()
    dpo(tok)
    reward(tok)


if __name__ == "__main__":
    main()
