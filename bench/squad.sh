#!/usr/bin/env bash
# SQuAD v1.1 with the product's own path: `secateur experiment` (the code the worker runs) on
# the dev file, whole articles split into training and held-out halves (task.eval_fraction).
# First a dense fine-tuning run that exports the task model; then each pruning configuration
# starts from that exported model (no fine-tuning stage), so every row is scored against the
# same dense model, on the same held-out questions.
#
#   TRAIN_SAMPLES=2000 EVAL_SAMPLES=1000 MAX_LEN=256 EPOCHS=2 RECOVERY_EPOCHS=1 bench/squad.sh
#
# CONFIGS (space-separated) defaults to the table the recovery issue asks for: 50% and 80%
# magnitude and movement, each with and without distillation, 2:4, and half the heads and FFN
# neurons of every layer.
#
# RESULTS (a directory) keeps each run's result.json; SECATEUR_BIN runs an already built
# binary instead of building one.
set -euo pipefail
source "$(dirname "$0")/env.sh"
TRAIN_SAMPLES="${TRAIN_SAMPLES:-2000}"
EVAL_SAMPLES="${EVAL_SAMPLES:-1000}"
MAX_LEN="${MAX_LEN:-256}"
EPOCHS="${EPOCHS:-2}"
RECOVERY_EPOCHS="${RECOVERY_EPOCHS:-1}"
LR="${LR:-1e-4}"
RECOVERY_LR="${RECOVERY_LR:-5e-5}"
SEED="${SEED:-42}"
CONFIGS="${CONFIGS-magnitude:0.5 magnitude:0.5:distill magnitude:0.8 magnitude:0.8:distill movement:0.5 movement:0.5:distill movement:0.8 movement:0.8:distill magnitude:2:4 structured:0.5:0.5}"
RESULTS="${RESULTS:-$OUT}"
mkdir -p "$RESULTS"
if [ -z "${SECATEUR_BIN:-}" ]; then
    cargo build -q --release --locked
    SECATEUR_BIN="$CARGO_TARGET_DIR/release/secateur"
fi
DATA=../shared/data/squad/dev-v1.1.json
task="{\"name\": \"squad\", \"eval_fraction\": 0.5}"
evaluation="{\"latency\": false, \"max_eval_samples\": $EVAL_SAMPLES}"
train() { echo "{\"epochs\": $1, \"learning_rate\": $2, \"batch_size\": 32, \"max_seq_len\": $MAX_LEN, \"max_train_samples\": $TRAIN_SAMPLES, \"seed\": $SEED${3:-}}"; }

run() { # name spec model
    local dir="$RESULTS/$1"
    rm -rf "$dir"
    echo "$2" >"$RESULTS/$1.spec.json"
    local t0=$SECONDS
    "$SECATEUR_BIN" experiment --model "$3" --spec "$RESULTS/$1.spec.json" --train "$DATA" --out "$dir" >/dev/null 2>"$RESULTS/$1.log"
    python3 - "$1" "$dir/result.json" $((SECONDS - t0)) <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
m = r["metrics"]
f = lambda x: "—" if not x else f"EM {x['exact_match']:.2f} F1 {x['f1']:.2f}"
lat = r.get("latency_ms") or {}
speed = f"\tspeedup={lat['speedup']:.2f}" if lat.get("speedup") else ""
print(f"{sys.argv[1]}\tbefore={f(m.get('before'))}\tpruned={f(m.get('pruned'))}\tafter={f(m.get('after'))}\tsparsity={r.get('sparsity')}{speed}\tseconds={sys.argv[3]}", flush=True)
PY
}

if [ ! -f "$RESULTS/dense/model.safetensors" ]; then
    run dense "{\"task\": $task, \"finetune\": $(train "$EPOCHS" "$LR"), \"evaluation\": $evaluation}" "$MINILM"
fi
DENSE="$RESULTS/dense"
for c in $CONFIGS; do
    IFS=: read -r -a p <<<"$c"
    distill=""
    case " ${p[*]} " in *" distill "*) distill=', "distill": {"temperature": 2.0, "alpha": 0.5}' ;; esac
    case "${p[0]}" in
    structured) pruning="{\"method\": \"magnitude\", \"granularity\": \"heads\", \"scope\": \"local\", \"sparsity\": ${p[1]}, \"neuron_sparsity\": ${p[2]}}"
        evaluation_c="{\"latency\": true, \"max_eval_samples\": $EVAL_SAMPLES}" ;;
    movement) pruning="{\"method\": \"movement\", \"sparsity\": ${p[1]}, \"schedule\": {\"kind\": \"cubic\", \"every\": 5}}"
        evaluation_c="$evaluation" ;;
    *) if [ "${p[2]:-}" != "" ] && [ "${p[2]}" != distill ]; then
            pruning="{\"method\": \"${p[0]}\", \"granularity\": \"n:m\", \"pattern\": \"${p[1]}:${p[2]}\"}"
        else
            pruning="{\"method\": \"${p[0]}\", \"sparsity\": ${p[1]}}"
        fi
        evaluation_c="$evaluation" ;;
    esac
    run "${c//:/_}" "{\"task\": $task, \"pruning\": $pruning, \"recovery\": $(train "$RECOVERY_EPOCHS" "$RECOVERY_LR" "$distill"), \"evaluation\": $evaluation_c}" "$DENSE"
done
