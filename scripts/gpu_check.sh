#!/usr/bin/env bash
# The one-call GPU check (issue 16): on one NVIDIA GPU, from a binary built
# elsewhere with `--features cuda`, measure
#   (a) logits parity CUDA vs transformers vs CPU on the tiny fixture models
#       (f32, tolerance 1e-3; bf16, tolerance 0.15: the CPU backend's own bf16
#       path is 0.06-0.08 from the f32 logits, whose largest is about 4;
#       `alignkit parity --dtype`),
#   (b) SFT full / LoRA and DPO full / LoRA step time, tokens/s, peak memory and
#       MFU for SmolLM2-135M's config and Llama-3.2-1B's config (random weights:
#       speed does not depend on them, and the device tool carries 64 MiB),
#   (c) batched rollout generation tokens/s,
#   (d) data parallel on the GPU (issue 34): LoRA SFT of the tiny GGUF fixture
#       in one process, on 2 ranks (processes) and on 2 local peers
#       (`launch --devices`), every rank on $DEVICE: that CUDA tensors
#       all-reduce through burn-collective and the per-step losses agree
#       (1e-5), not speed (one GPU: the ranks share it),
# with PyTorch (+ PEFT) on the same GPU in the same call when python3 has torch,
# transformers and peft, and writes everything to one JSON: $OUT/gpu_check.json.
#
# Prepare here (the GPU machine cannot fetch crates), then run in one call:
#   cargo build --release -p alignkit --features cuda --target-dir /work/target-cuda
#   mkdir -p gpu && cp /work/target-cuda/release/alignkit gpu/ && strip gpu/alignkit
#   device run: ALIGNKIT=gpu/alignkit scripts/gpu_check.sh            (carry: gpu)
#
# Environment: ALIGNKIT (binary, default target/release/alignkit), DEVICE
# (default cuda:0), OUT (default $OUT or gpu_check_out), STEPS (timed steps per
# section, default 3), PEAK_TFLOPS (the MFU denominator, default 67: an H100 or
# H200 SXM's dense FP32 peak; bench trains in f32), LIMIT (seconds per command, 240),
# SIZES (configs in examples/bench/, default "smollm2-135m llama-3.2-1b"),
# BATCH and SEQ (the trainer steps' shape, default 4 × 256), ROLLOUT_ROWS and
# ROLLOUT_TOKENS (default 64 rows, TRL GRPO's 8 prompts × 8 generations, of 64
# sampled tokens each), GRANULARITIES (the activation-checkpointing runs, default
# "full selective": bench-SIZE-checkpointed and bench-SIZE-checkpointed-selective).
# Runs on a CPU too to check the script itself, e.g. DEVICE=wgpu:cpu (Mesa's
# lavapipe) BATCH=2 SEQ=32 ROLLOUT_ROWS=8 ROLLOUT_TOKENS=8 STEPS=1 with a
# small config in SIZES.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${ALIGNKIT:-target/release/alignkit}
DEVICE=${DEVICE:-cuda:0}
OUT=${OUT:-gpu_check_out}
STEPS=${STEPS:-3}
PEAK_TFLOPS=${PEAK_TFLOPS:-67}
LIMIT=${LIMIT:-240}
SIZES=${SIZES:-smollm2-135m llama-3.2-1b}
BATCH=${BATCH:-4}
SEQ=${SEQ:-256}
ROLLOUT_ROWS=${ROLLOUT_ROWS:-64}
ROLLOUT_TOKENS=${ROLLOUT_TOKENS:-64}
GRANULARITIES=${GRANULARITIES:-full selective}
mkdir -p "$OUT"
log="$OUT/gpu_check.log"
: > "$log"

say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$log"; }

TORCH=()
if python3 -c "import torch, transformers, peft" 2>/dev/null; then
    TORCH=(--torch scripts/bench_torch.py)
    say "pytorch: $(python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())')"
else
    say "pytorch: not available, alignkit only"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"

# Run one measurement into $OUT/NAME.json; a failure or a timeout is recorded, not fatal.
measure() {
    local name=$1; shift
    say "$name: $*"
    if timeout "$LIMIT" "$@" > "$OUT/$name.json" 2>> "$log"; then
        say "$name: done"
    else
        say "$name: FAILED (exit $?)"
        echo '{"error": "failed or timed out; see gpu_check.log"}' > "$OUT/$name.json"
    fi
}

# (a) parity on every committed fixture with full-vocab expected logits.
measure parity "$BIN" parity model/tests/fixtures/{llama,llama-tied,llama3-scaled,mistral,qwen2} \
    --device "$DEVICE" --tolerance 1e-3 --json
measure parity-bf16 "$BIN" parity model/tests/fixtures/{llama,llama-tied,llama3-scaled,mistral,qwen2} \
    --device "$DEVICE" --dtype bf16 --tolerance 0.15 --json

# (b), (c) trainer steps and rollouts, both model sizes.
for size in $SIZES; do
    config=examples/bench/$size-config.json
    measure "bench-$size" "$BIN" bench --model-config "$config" --device "$DEVICE" \
        --only sft_full,sft_lora,dpo_full,dpo_lora,rollout --batch "$BATCH" --seq "$SEQ" \
        --rollout-rows "$ROLLOUT_ROWS" --rollout-tokens "$ROLLOUT_TOKENS" \
        --steps "$STEPS" --json "${TORCH[@]}"
    for granularity in $GRANULARITIES; do
        suffix=checkpointed; [ "$granularity" = full ] || suffix=checkpointed-$granularity
        measure "bench-$size-$suffix" "$BIN" bench --model-config "$config" --device "$DEVICE" \
            --only sft_full,sft_lora --batch "$BATCH" --seq "$SEQ" --gradient-checkpointing \
            --recompute-granularity "$granularity" --steps "$STEPS" --json "${TORCH[@]}"
    done
done

# (d) data parallel: each run's per-step losses into $OUT/dp.json.
dp=$(mktemp -d)
"$BIN" import-gguf model/tests/fixtures/gguf/tiny-llama.gguf.bin "$dp/model" >> "$log" 2>&1
sft=(sft --config examples/sft.toml --model "$dp/model" --max-steps 8 --set train.eval_steps=0)
dp_run() {
    local name=$1; shift
    say "dp-$name: $*"
    if timeout "$LIMIT" "$@" >> "$log" 2>&1; then say "dp-$name: done"; else say "dp-$name: FAILED (exit $?)"; fi
}
dp_run one "$BIN" "${sft[@]}" --device "$DEVICE" --output-dir "$dp/one"
dp_run ranks "$BIN" launch --nproc-per-node 2 --master-port 29650 -- "${sft[@]}" --batch-size 4 \
    --device "$DEVICE" --output-dir "$dp/ranks"
dp_run peers "$BIN" launch --devices "$DEVICE,$DEVICE" -- "${sft[@]}" --batch-size 4 --output-dir "$dp/peers"
python3 - "$dp" "$OUT/dp.json" <<'PY' | tee -a "$log"
import json, os, sys
dp, out = sys.argv[1], sys.argv[2]
def losses(run):
    path = os.path.join(dp, run, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = [json.loads(l) for l in open(path)]
    return [r["loss"] for r in rows if "tokens_per_second" in r]
result = {run: losses(run) for run in ("one", "ranks", "peers")}
one = result["one"]
for run in ("ranks", "peers"):
    got = result[run]
    ok = bool(one and got and len(one) == len(got)
              and all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(one, got)))
    result[run + "_equals_one"] = ok
json.dump(result, open(out, "w"))
print(json.dumps(result))
PY
rm -rf "$dp"

# peak_rss_mb is host memory on both sides; device_memory_mb is the GPU
# allocator's peak reservation (cubecl's pool; torch.cuda.max_memory_reserved).
# One JSON with MFU added: 6·N matmul FLOPs per token for a full SFT step,
# 4·N under LoRA (no weight gradients of the frozen base), 2·N more for DPO's
# reference forward; N = parameters in matmuls (the embedding lookup is none;
# the LM head counts once). Attention's T² terms are left out.
python3 - "$OUT" "$DEVICE" "$PEAK_TFLOPS" <<'PY' | tee -a "$log"
import json, os, sys
out, device, peak = sys.argv[1], sys.argv[2], float(sys.argv[3])

def params(config):
    c = json.load(open(config))
    h, f, l, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    layer = h * q + 2 * h * kv + q * h + 3 * h * f
    return l * layer + h * v

result = {"device": device, "peak_tflops": peak}
for name in sorted(os.listdir(out)):
    if not name.endswith(".json") or name == "gpu_check.json":
        continue
    key = name[:-5]
    try:
        data = json.load(open(os.path.join(out, name)))
    except ValueError:
        data = {"error": "not JSON"}
    if key.startswith("bench-"):
        size = key[len("bench-"):].split("-checkpointed")[0]
        n = params(f"examples/bench/{size}-config.json")
        data["matmul_params"] = n
        for side in ("alignkit", "pytorch"):
            for section, r in (data.get(side) or {}).items():
                if isinstance(r, dict) and "tokens_per_s" in r and section != "rollout":
                    per_token = {"sft_full": 6, "sft_lora": 4, "dpo_full": 8, "dpo_lora": 6}
                    flops = per_token.get(section, 6) * n * r["tokens_per_s"]
                    r["mfu"] = flops / (peak * 1e12)
    result[key] = data
json.dump(result, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(result)[:4000])
PY
say "wrote $OUT/gpu_check.json"
