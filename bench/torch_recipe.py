"""The issue's PyTorch reference recipe (BENCHMARKS.md, "SST-2 at the PyTorch reference's
budget"), run here so that both sides can be compared over several seeds on the same data:
transformers AutoModelForSequenceClassification on MiniLM, the first ROWS rows of a GLUE task's
train file in file order, 1 epoch per stage, MAX_LEN tokens, dynamic padding, batch 32, AdamW
(lr 5e-5 dense, 3e-5 recovery; weight decay 0.01 except biases and LayerNorm), 6% linear warm-up
then linear decay (get_linear_schedule_with_warmup), clipping at 1.0, `transformers.set_seed`
before the head is initialised, a shuffled sampler (as Trainer's RandomSampler) and dropout from
torch's global generator. Pruning: torch.nn.utils.prune.global_unstructured (L1) over the
encoder's linear weights, or an N:M mask along the input dimension (custom_from_mask); recovery
keeps the masks (prune's reparametrisation); distillation from the dense model in eval mode,
KL at temperature T scaled by T², mixed with the hard loss by alpha. Evaluation on the full dev
file. One line per configuration, as bench/recipe.rs prints them.

Usage: torch_recipe.py MODEL_DIR TASK_DIR ROWS MAX_LEN SEED CONFIGS
(CONFIGS: comma-separated, each magnitude:SPARSITY[:distill], magnitude:N:M[:distill] or
movement:SPARSITY[:local][:distill] — movement pruning during the recovery epoch, as
bench/recipe.rs's gradual movement rows)"""
import copy
import csv
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup, set_seed

torch.set_num_threads(2)
model_dir, task_dir, rows, max_len, seed, configs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
csv.field_size_limit(1 << 24)


def read(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(r)
        s, l = header.index("sentence"), header.index("label")
        return [(row[s], int(row[l])) for row in r]


tok = AutoTokenizer.from_pretrained(model_dir)
train_rows = read(f"{task_dir}/train.tsv")[:rows]
dev_rows = read(f"{task_dir}/dev.tsv")


def encode(data):
    enc = tok([t for t, _ in data], truncation=True, max_length=max_len)
    return [(enc["input_ids"][i], enc["token_type_ids"][i], y) for i, (_, y) in enumerate(data)]


train_set, dev_set = encode(train_rows), encode(dev_rows)


def collate(items):
    n = max(len(i) for i, _, _ in items)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (n - len(i)) for i, _, _ in items])
    tt = torch.tensor([t + [0] * (n - len(t)) for _, t, _ in items])
    am = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _, _ in items])
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": am}, torch.tensor([y for _, _, y in items])


class TopK(torch.autograd.Function):
    """Movement pruning's mask (Sanh et al. 2020, as their reference code's TopKBinarizer): keep
    the highest scores, pass the gradient straight through to the scores."""

    @staticmethod
    def forward(ctx, scores, threshold):
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class Movement:
    """Scores learnt as parameters through the straight-through mask (initialised at 0, Adam at
    lr 1e-2, as the paper's code), a cubic ramp of the pruned fraction from 0 at step 0 to the
    target at 70% of the steps, raised every 5% of the steps (bench/recipe.rs's ramp); top-k
    over all targets (global) or per tensor (local)."""

    def __init__(self, targets, target, local, total):
        self.mods = [m for m, _ in targets]
        self.scores = [torch.zeros_like(m.weight, requires_grad=True) for m in self.mods]
        self.opt = torch.optim.Adam(self.scores, lr=1e-2)
        self.target, self.local = target, local
        self.end, self.every, self.sparsity = total * 7 // 10, max(total // 20, 1), 0.0
        self.refresh()
        for t, (m, s) in enumerate(zip(self.mods, self.scores)):
            m.forward = (lambda t, m, s: lambda x: F.linear(x, m.weight * TopK.apply(s, self.thresholds[t]), m.bias))(t, m, s)

    def refresh(self):
        """Each tensor's threshold for the current scores and sparsity: the k-th lowest score
        is the highest pruned one."""
        def kth(pool):
            k = int(self.sparsity * pool.numel())
            return pool.kthvalue(k).values.item() if k > 0 else float("-inf")
        with torch.no_grad():
            if self.local:
                self.thresholds = [kth(s.flatten()) for s in self.scores]
            else:
                self.thresholds = [kth(torch.cat([s.flatten() for s in self.scores]))] * len(self.scores)

    def stepped(self, step):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if step <= self.end and (step % self.every == 0 or step == self.end):
            self.sparsity = self.target * (1 - (1 - min(step / self.end, 1.0)) ** 3)
        self.refresh()

    def finish(self):
        with torch.no_grad():
            for t, (m, s) in enumerate(zip(self.mods, self.scores)):
                m.weight.mul_(TopK.apply(s, self.thresholds[t]))
                del m.forward


def fit(model, lr, teacher=None, movement=None):
    model.train()
    params = list(model.named_parameters())
    nd = lambda n: n.endswith("bias") or "LayerNorm" in n
    opt = torch.optim.AdamW([{"params": [p for n, p in params if not nd(n)], "weight_decay": 0.01}, {"params": [p for n, p in params if nd(n)], "weight_decay": 0.0}], lr=lr)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=collate)
    total = len(loader)
    sched = get_linear_schedule_with_warmup(opt, int(-(-0.06 * total // 1)), total)
    for inputs, labels in loader:
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(**inputs).logits
            soft = F.kl_div(F.log_softmax(logits / 2.0, -1), F.log_softmax(t_logits / 2.0, -1), reduction="batchmean", log_target=True) * 4.0
            loss = 0.5 * soft + 0.5 * loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if movement is not None:
            movement.stepped(sched.last_epoch)
    if movement is not None:
        movement.finish()


@torch.no_grad()
def accuracy(model):
    model.eval()
    right = 0
    for i in range(0, len(dev_set), 64):
        inputs, labels = collate(dev_set[i : i + 64])
        right += (model(**inputs).logits.argmax(-1) == labels).sum().item()
    return right / len(dev_set)


def linears(model):
    return [(m, "weight") for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder.layer." in f".{name}"]


def nm_mask(w, n, m):
    groups = w.abs().reshape(w.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(w.shape)


set_seed(seed)
dense = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
t = time.perf_counter()
fit(dense, 5e-5)
print(f"torch dense\tseed={seed}\taccuracy={accuracy(dense):.4f}\ttrain_s={time.perf_counter() - t:.0f}", flush=True)
for c in filter(None, configs.split(",")):
    parts = c.split(":")
    distill = parts[-1] == "distill"
    nums = [p for p in parts[1:] if p not in ("distill", "local")]
    assert parts[0] in ("magnitude", "movement"), "the reference prunes by magnitude or movement"
    set_seed(seed)
    model = copy.deepcopy(dense)
    targets = linears(model)
    teacher = dense.eval() if distill else None
    if parts[0] == "movement":
        # Pruned while recovering: no one-shot model to score.
        one_shot = "None"
        fit(model, 3e-5, teacher, Movement(targets, float(nums[0]), "local" in parts, -(-len(train_set) // 32)))
    else:
        if len(nums) == 2:
            n, m = int(nums[0]), int(nums[1])
            for mod, name in targets:
                prune.custom_from_mask(mod, name, nm_mask(mod.weight.detach(), n, m))
        else:
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(nums[0]))
        one_shot = f"{accuracy(model):.4f}"
        fit(model, 3e-5, teacher)
    # prune's reparametrisation keeps the masked weights at zero through recovery.
    zeros = sum((mod.weight == 0).sum().item() for mod, _ in targets) / sum(mod.weight.numel() for mod, _ in targets)
    print(f"torch {c}\tseed={seed}\tsparsity={zeros:.4f}\tone_shot={one_shot}\trecovered={accuracy(model):.4f}", flush=True)
