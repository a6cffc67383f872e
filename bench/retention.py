"""Markdown table of one bench/recipe.rs run (its stdout, or bench/recipe.sh's RESULTS/ours
file of a single seed): every
configuration's metrics one-shot and after recovery, and retention = recovered / dense for each
metric of the task.

    python3 bench/retention.py results/cola.txt
"""
import json
import sys


def metrics(text):
    return None if text in (None, "None") else json.loads(text.removeprefix("Some(").removesuffix(")"))


def fmt(m):
    return "—" if not m else " / ".join(f"{v:.4f}" for v in m.values())


rows = []
dense = None
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "ours":  # a line bench/recipe.sh kept: side and seed first
        f = f[2:]
    kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
    if f[0] == "dense":
        dense = metrics(kv["metrics"])
        continue
    rows.append((f[0], metrics(kv.get("one_shot")), metrics(kv["recovered"]), kv))
names = " / ".join(dense)
print(f"| configuration | one-shot ({names}) | recovered ({names}) | retention | notes |")
print("|---|---|---|---|---|")
print(f"| dense | | {fmt(dense)} | 1 | |")
for name, one, rec, kv in rows:
    ret = " / ".join(f"{rec[k] / dense[k]:.3f}" if dense[k] else "—" for k in dense)
    note = f"{kv['speedup']}× faster forward" if "speedup" in kv else ""
    print(f"| {name} | {fmt(one)} | {fmt(rec)} | {ret} | {note} |")
