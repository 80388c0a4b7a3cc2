#!/usr/bin/env bash
# The reward-versus-KL frontier of PPO, GRPO, RLOO, DPO and PPO on a learned
# reward model, on the controlled-sentiment task (issue 15; Rafailov et al.
# 2023 §6.1, made small and offline). The policy, SmolLM2-135M-Instruct with
# LoRA, continues movie-review openings; the true reward is the VADER compound
# score of the continuation. Run from the repository root:
#
#   examples/sentiment/frontier.sh                      # everything below
#   SEEDS=1 METHODS="ppo grpo" examples/sentiment/frontier.sh
#
# - ppo, grpo, rloo: examples/sentiment/frontier/*.toml on the true reward, the
#   KL knob (ppo.kl_coef, grpo.beta, rloo.beta) swept over RL_KNOBS; each run's
#   [eval] writes eval.jsonl: held-out reward and Monte-Carlo sequence KL to the
#   starting policy at steps 0, 10 and 20 (2 samples of each test opening).
# - dpo: 4 continuations of 128 training openings sampled from the starting
#   policy, every two with different VADER scores a pair (up to 6 per opening);
#   DPO (examples/dpo.toml) for each β of DPO_BETAS, DPO_STEPS steps; its
#   checkpoints (every DPO_STEPS/2 steps) are measured by `alignkit eval drift
#   --score sentiment` (drift-step-N.json) on the same held-out openings.
# - ppo-rm: a reward model trained on those pairs (examples/reward.toml), then
#   PPO on it with a separate critic started from the reward model, judged on
#   the true reward ([[eval.rewards]]): the RLHF pipeline proper.
#
# Finished runs are skipped, so an interrupted sweep continues where it was.
# At the end `alignkit eval frontier` reads every run's measurements and writes
# $OUT/frontier.svg and $OUT/frontier.md (best reward at KL ≤ 2, 5, 10).
set -euo pipefail

AK=${ALIGNKIT:-alignkit}
OUT=${OUT:-runs/frontier}
SEEDS=${SEEDS:-"1 2"}
METHODS=${METHODS:-"ppo grpo rloo dpo ppo-rm"}
RL_KNOBS=${RL_KNOBS:-"0.01 0.05 0.2"}
DPO_BETAS=${DPO_BETAS:-"0.05 0.1 0.5"}
DPO_STEPS=${DPO_STEPS:-60}
F=examples/sentiment/frontier
TEST=examples/sentiment/test.jsonl

BASE=${BASE:-$("$AK" pull)}   # the starting policy (default: SmolLM2-135M-Instruct)
mkdir -p "$OUT"
started=$(date +%s)

# One RL run: METHOD KNOB SEED CONFIG.
rl() {
    local method=$1 knob=$2 seed=$3 config=$4
    local dir="$OUT/$method-k$knob-s$seed" command=${1%-rm} key
    [ -d "$dir/final" ] && return 0
    case $method in
        ppo | ppo-rm) key=ppo.kl_coef ;;
        *) key=$method.beta ;;
    esac
    local resume=()
    [ -d "$dir/checkpoints" ] && resume=(--resume)
    "$AK" "$command" --config "$config" --model "$BASE" --output-dir "$dir" \
        --set "$key=$knob" --set "train.seed=$seed" "${resume[@]}"
}

# Sequence KL and VADER of a model's held-out samples, as eval.jsonl measures them.
drift() {
    "$AK" eval drift --policy "$1" --reference "$BASE" --prompts "$TEST" --chat \
        --num-samples 2 --max-new-tokens 32 --score sentiment --json > "$2.tmp"
    mv "$2.tmp" "$2"
}

pairs() {
    [ -f "$OUT/pairs.jsonl" ] && return 0
    head -n 128 examples/sentiment/train.jsonl > "$OUT/pair-prompts.jsonl"
    "$AK" generate --model "$BASE" --prompts "$OUT/pair-prompts.jsonl" --chat \
        --num-samples 4 --max-new-tokens 32 --temperature 1 --seed 0 \
        --out "$OUT/candidates.jsonl"
    "$AK" data pairs "$OUT/candidates.jsonl" --judge sentiment --out "$OUT/pairs.jsonl"
}

dpo() {
    local beta=$1 seed=$2
    local dir="$OUT/dpo-k$beta-s$seed" half=$((DPO_STEPS / 2))
    if [ ! -d "$dir/final" ]; then
        local resume=()
        [ -d "$dir/checkpoints" ] && resume=(--resume)
        "$AK" dpo --config examples/dpo.toml --model "$BASE" --output-dir "$dir" --beta "$beta" \
            --set "train.seed=$seed" --set "data.train_file=$OUT/pairs.jsonl" \
            --set data.text_as_chat=true --set data.validation_split=0 \
            --set train.eval_steps=0 --set "train.max_steps=$DPO_STEPS" \
            --set "train.save_steps=$half" --set train.keep_last=0 "${resume[@]}"
    fi
    [ -f "$dir/drift-step-0.json" ] || cp "$OUT/base-drift.json" "$dir/drift-step-0.json"
    if [ ! -f "$dir/drift-step-$half.json" ]; then
        "$AK" export "$dir/checkpoints/step-$half" --merged "$dir/merged-$half" --overwrite
        drift "$dir/merged-$half" "$dir/drift-step-$half.json"
        rm -rf "$dir/merged-$half"
    fi
    [ -f "$dir/drift-step-$DPO_STEPS.json" ] || drift "$dir/final" "$dir/drift-step-$DPO_STEPS.json"
}

ppo_rm() {
    local knob=$1 seed=$2
    if [ ! -d "$OUT/rm/final" ]; then
        "$AK" reward train --config examples/reward.toml --model "$BASE" --output-dir "$OUT/rm" \
            --set "data.train_file=$OUT/pairs.jsonl" --set data.text_as_chat=true \
            --set data.validation_split=0 --set train.eval_steps=0 --set train.max_steps=100
    fi
    # PPO's config with the reward model as the reward and the start of a
    # separate critic, judged on the true reward.
    {
        sed -e '/^\[\[rewards\]\]/,/^$/d' -e 's|^output_dir = .*|output_dir = "runs/frontier/ppo-rm"|' \
            -e 's|^shared_backbone = true.*|shared_backbone = false|' "$F/ppo.toml"
        printf '\n[[rewards]]\nkind = "model"\npath = "%s"\n\n[[eval.rewards]]\nkind = "sentiment"\n' "$OUT/rm/final"
    } > "$OUT/ppo-rm.toml"
    rl ppo-rm "$knob" "$seed" "$OUT/ppo-rm.toml"
}

for seed in $SEEDS; do
    for method in $METHODS; do
        case $method in
            ppo | grpo | rloo)
                for knob in $RL_KNOBS; do rl "$method" "$knob" "$seed" "$F/$method.toml"; done ;;
            dpo)
                pairs
                [ -f "$OUT/base-drift.json" ] || drift "$BASE" "$OUT/base-drift.json"
                for beta in $DPO_BETAS; do dpo "$beta" "$seed"; done ;;
            ppo-rm)
                pairs
                for knob in $RL_KNOBS; do ppo_rm "$knob" "$seed"; done ;;
            *) echo "unknown method $method (ppo grpo rloo dpo ppo-rm)" >&2; exit 2 ;;
        esac
    done
done

runs=()
for d in "$OUT"/*-k*-s*; do [ -d "$d" ] && runs+=("$d"); done
"$AK" eval frontier "${runs[@]}" --out "$OUT"
echo "frontier: $(( ($(date +%s) - started) / 60 )) min on this machine (runs skipped as finished not counted)"
