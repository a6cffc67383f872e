#!/usr/bin/env bash
# The GLUE reference recipe on both sides over several seeds: Secateur (bench/recipe.rs) and the
# PyTorch reference (bench/torch_recipe.py), same data, same budget, each seed a fresh process;
# then the mean and range of every row on each side.
#
#   SEEDS="42 1 2" SIDES="ours theirs" TASK=sst2 TRAIN_ROWS=8000 MAX_LEN=64 \
#     CONFIGS=magnitude:0.5,magnitude:0.8,magnitude:0.8:distill,magnitude:2:4 bench/recipe.sh
#
# RESULTS (a directory) keeps the raw lines so that sides and seeds run at different times can be
# summarised together (`SIDES= bench/recipe.sh` only summarises). THEIR_CONFIGS overrides the
# configurations of the PyTorch side (it prunes by magnitude, or by movement as the paper's
# code does). RECIPE_BIN runs an already
# built bench binary instead of `cargo bench` (so that the sources can change meanwhile).
set -euo pipefail
source "$(dirname "$0")/env.sh"
SEEDS="${SEEDS:-42 1 2}"
SIDES="${SIDES-ours theirs}"
TASK="${TASK:-sst2}"
TRAIN_ROWS="${TRAIN_ROWS:-8000}"
MAX_LEN="${MAX_LEN:-64}"
CONFIGS="${CONFIGS-magnitude:0.5,magnitude:0.8,magnitude:0.8:distill,magnitude:2:4}"
THEIR_CONFIGS="${THEIR_CONFIGS-$CONFIGS}"
RESULTS="${RESULTS:-$OUT}"
mkdir -p "$RESULTS"
case "$TASK" in sst2) DIR=SST-2 ;; cola) DIR=CoLA ;; *) echo "the PyTorch side reads single-sentence tasks (sst2, cola)" >&2; DIR="" ;; esac
for seed in $SEEDS; do
    for side in $SIDES; do
        case "$side" in
        ours)
            SECATEUR_MINILM_DIR="$MINILM" TASK="$TASK" TRAIN_ROWS="$TRAIN_ROWS" MAX_LEN="$MAX_LEN" CONFIGS="$CONFIGS" SEED="$seed" \
                ${RECIPE_BIN:-cargo bench -q --bench recipe} 2>/dev/null | sed -u "s/^/ours\tseed=$seed\t/" | tee -a "$RESULTS/ours"
            ;;
        theirs)
            "$PY" bench/torch_recipe.py "$MINILM" "../shared/data/glue/$DIR" "$TRAIN_ROWS" "$MAX_LEN" "$seed" "$THEIR_CONFIGS" 2>/dev/null |
                sed -u "s/^torch /theirs\t/" | tee -a "$RESULTS/theirs"
            ;;
        esac
    done
done
python3 - "$RESULTS" <<'PY'
import collections, os, re, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(dict))
for side in ("ours", "theirs"):
    path = os.path.join(sys.argv[1], side)
    if not os.path.exists(path):
        continue
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        seed = next(x.split("=")[1] for x in f if x.startswith("seed="))
        name = f[2] if side == "ours" else f[1]
        kv = dict(x.split("=", 1) for x in f if "=" in x)
        num = lambda s: float(re.search(r"[-0-9.]+(?:e-?\d+)?", s.split("accuracy")[-1]).group()) if s and s != "None" else None
        if name == "dense":
            rows["dense"][side][seed] = (None, num(kv.get("metrics", kv.get("accuracy"))) if side == "ours" else float(kv["accuracy"]))
        else:
            rows[name][side][seed] = (num(kv["one_shot"]), num(kv["recovered"]))
def stat(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    return f"{statistics.mean(vals):.4f} [{min(vals):.4f}–{max(vals):.4f}] n={len(vals)}"
print("| configuration | PyTorch one-shot | Secateur one-shot | PyTorch recovered | Secateur recovered |")
print("|---|---|---|---|---|")
for name, sides in rows.items():
    cells = []
    for k in (0, 1):
        for side in ("theirs", "ours"):
            cells.append(stat([v[k] for v in sides.get(side, {}).values()]))
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
