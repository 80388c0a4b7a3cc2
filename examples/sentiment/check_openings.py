#!/usr/bin/env python3
"""Sanity checks for the controlled-sentiment prompt files.

Usage: python3 examples/sentiment/check_openings.py [DIR]

DIR defaults to the directory holding this script and must contain
train.jsonl (260 lines) and test.jsonl (60 lines). Each line is
{"prompt": "Continue this movie review: <opening>", "opening": "<opening>"}.
Exits 1 on any problem. If vaderSentiment happens to be importable, also
prints the VADER compound score distribution of the openings.
"""
import json
import os
import sys

PREFIX = "Continue this movie review: "
EXPECTED = {"train.jsonl": 260, "test.jsonl": 60}
MIN_WORDS, MAX_WORDS = 4, 16


def norm(text):
    return " ".join(text.lower().split())


def first4(text):
    return " ".join(norm(text).split()[:4])


def load(path, problems):
    rows = []
    with open(path, "rb") as f:
        raw = f.read()
    if raw and not raw.endswith(b"\n"):
        problems.append(f"{path}: no newline at end of file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not valid UTF-8 ({e})")
        return rows
    for n, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        where = f"{os.path.basename(path)}:{n}"
        if not line.strip():
            problems.append(f"{where}: empty line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(obj, dict) or set(obj) != {"prompt", "opening"}:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            problems.append(f"{where}: fields must be exactly prompt/opening, got {keys}")
            continue
        op, pr = obj["opening"], obj["prompt"]
        if not isinstance(op, str) or not isinstance(pr, str):
            problems.append(f"{where}: prompt/opening must be strings")
            continue
        if pr != PREFIX + op:
            problems.append(f"{where}: prompt != {PREFIX!r} + opening")
        if op != op.strip():
            problems.append(f"{where}: opening has leading/trailing whitespace")
        nw = len(op.split())
        if not MIN_WORDS <= nw <= MAX_WORDS:
            problems.append(f"{where}: opening has {nw} words (want {MIN_WORDS}-{MAX_WORDS})")
        if op.rstrip().endswith((".", "!", "?")):
            problems.append(f"{where}: opening ends with sentence punctuation: {op!r}")
        if any(ord(c) < 32 for c in op):
            problems.append(f"{where}: control character in opening")
        rows.append((where, op))
    return rows


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    problems = []
    data = {}
    for name, want in EXPECTED.items():
        path = os.path.join(d, name)
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
            data[name] = []
            continue
        data[name] = load(path, problems)
        # count physical lines so that invalid lines also count
        with open(path, "rb") as f:
            got = f.read().count(b"\n")
        if got != want or len(data[name]) != want:
            problems.append(f"{name}: {got} lines / {len(data[name])} valid rows, want {want}")

    # duplicates within and across files
    seen = {}
    for name in EXPECTED:
        for where, op in data[name]:
            k = norm(op)
            if k in seen:
                problems.append(f"{where}: duplicate opening (also {seen[k]}): {op!r}")
            else:
                seen[k] = where

    # test openings must not share their first 4 words with any train opening
    train4 = {}
    for where, op in data["train.jsonl"]:
        train4.setdefault(first4(op), where)
    for where, op in data["test.jsonl"]:
        k = first4(op)
        if k in train4:
            problems.append(f"{where}: first 4 words {k!r} also start {train4[k]}")

    all_ops = [op for name in EXPECTED for _, op in data[name]]
    wc = [len(op.split()) for op in all_ops]
    print(f"train: {len(data['train.jsonl'])} rows, test: {len(data['test.jsonl'])} rows, "
          f"unique openings: {len(seen)}")
    if wc:
        print(f"words per opening: min {min(wc)}, max {max(wc)}, mean {sum(wc) / len(wc):.1f}")

    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except Exception:
        SentimentIntensityAnalyzer = None
    if SentimentIntensityAnalyzer is not None and all_ops:
        sia = SentimentIntensityAnalyzer()
        for name in EXPECTED:
            scores = [sia.polarity_scores(op)["compound"] for _, op in data[name]]
            if not scores:
                continue
            bins = [(-1.01, -0.5), (-0.5, -0.05), (-0.05, 0.05), (0.05, 0.5), (0.5, 1.01)]
            hist = ", ".join(f"[{lo:+.2f},{hi:+.2f}): {sum(lo <= s < hi for s in scores)}"
                             for lo, hi in bins)
            print(f"VADER compound ({name}): mean {sum(scores) / len(scores):+.3f}, "
                  f"min {min(scores):+.3f}, max {max(scores):+.3f}; {hist}")

    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for p in problems:
            print("  " + p)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
