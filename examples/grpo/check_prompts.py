#!/usr/bin/env python3
"""Validate the GRPO prompt files train.jsonl and heldout.jsonl.

Usage: python3 examples/grpo/check_prompts.py [DIR]

DIR defaults to the directory holding this script. Stdlib only.
Exits 0 when every check passes, 1 otherwise.
"""
import collections
import json
import os
import re
import sys

EXPECTED = {"train.jsonl": 220, "heldout.jsonl": 60}
KEY_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
QUOTED_RE = re.compile(r'"([^"]*)"')
MIN_WORDS, MAX_WORDS = 8, 60


def check_file(path, expected_lines, errors):
    """Return the list of (lineno, record) parsed from path, appending problems to errors."""
    name = os.path.basename(path)
    records = []
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        errors.append(f"{name}: cannot read: {e}")
        return records
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append(f"{name}: not valid UTF-8: {e}")
        return records
    if not text.endswith("\n"):
        errors.append(f"{name}: file does not end with a newline")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected_lines:
        errors.append(f"{name}: expected {expected_lines} lines, found {len(lines)}")

    for lineno, line in enumerate(lines, 1):
        where = f"{name}:{lineno}"
        if not line.strip():
            errors.append(f"{where}: blank line")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: invalid JSON: {e}")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{where}: line is not a JSON object")
            continue
        if set(rec) != {"prompt", "keys"}:
            errors.append(f"{where}: fields must be exactly prompt and keys, got {sorted(rec)}")
            continue
        prompt, keys = rec["prompt"], rec["keys"]
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(f"{where}: prompt must be a non-empty string")
            continue
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            errors.append(f"{where}: keys must be a list of strings")
            continue
        if not 2 <= len(keys) <= 4:
            errors.append(f"{where}: expected 2-4 keys, got {len(keys)}")
        if len(set(keys)) != len(keys):
            errors.append(f"{where}: duplicate keys {keys}")
        for k in keys:
            if not KEY_RE.match(k):
                errors.append(f"{where}: key {k!r} is not lowercase snake_case ASCII")
            if f'"{k}"' not in prompt:
                errors.append(f'{where}: key "{k}" does not appear in double quotes in the prompt')
        quoted = QUOTED_RE.findall(prompt)
        if quoted != keys:
            errors.append(f"{where}: double-quoted words in prompt {quoted} differ from keys {keys} (order or extras)")
        if "\n" in prompt:
            errors.append(f"{where}: prompt contains a newline")
        n_words = len(prompt.split())
        if not MIN_WORDS <= n_words <= MAX_WORDS:
            errors.append(f"{where}: prompt has {n_words} words, expected {MIN_WORDS}-{MAX_WORDS}")
        records.append((lineno, rec))
    return records


def norm(prompt):
    return " ".join(prompt.lower().split())


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    errors = []
    parsed = {}
    for fname, n in EXPECTED.items():
        parsed[fname] = check_file(os.path.join(base, fname), n, errors)

    # Duplicate prompts, within and across files (case/whitespace-insensitive).
    seen = {}
    for fname, recs in parsed.items():
        for lineno, rec in recs:
            key = norm(rec["prompt"])
            if key in seen:
                errors.append(f"{fname}:{lineno}: duplicate prompt (first seen at {seen[key]})")
            else:
                seen[key] = f"{fname}:{lineno}"

    # Summary.
    for fname, recs in parsed.items():
        counts = collections.Counter(len(rec["keys"]) for _, rec in recs)
        total = len(recs)
        per = ", ".join(f"{k} keys: {counts.get(k, 0)}" for k in (2, 3, 4))
        words = [len(rec["prompt"].split()) for _, rec in recs]
        wr = f"words {min(words)}-{max(words)}" if words else "no records"
        print(f"{fname}: {total} valid records ({per}); {wr}")

    if errors:
        print(f"FAILED: {len(errors)} problem(s)")
        for e in errors:
            print("  " + e)
        return 1
    print("OK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
