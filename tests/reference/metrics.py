"""Reference metrics for tests/metrics.rs: scikit-learn and SciPy on the same predictions, and the
official SQuAD v1.1 evaluation (the functions of `evaluate-v1.1.py`, verbatim).
Usage: metrics.py IN.json OUT.json"""
import json
import re
import string
import sys
from collections import Counter

from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


# --- evaluate-v1.1.py (SQuAD v1.1 official evaluation script) ---
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score_squad(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article['paragraphs']:
            for qa in paragraph['qas']:
                total += 1
                if qa['id'] not in predictions:
                    continue
                ground_truths = list(map(lambda x: x['text'], qa['answers']))
                prediction = predictions[qa['id']]
                exact_match += metric_max_over_ground_truths(
                    exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(
                    f1_score_squad, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {'exact_match': exact_match, 'f1': f1}
# --- end of the official functions ---


data = json.load(open(sys.argv[1]))
out = {}
for case in data["classification"]:
    p, g = case["pred"], case["gold"]
    out[case["name"]] = {
        "accuracy": accuracy_score(g, p),
        "f1": f1_score(g, p, zero_division=0) if case["binary"] else None,
        "matthews": matthews_corrcoef(g, p),
    }
for case in data["regression"]:
    out[case["name"]] = {"pearson": float(pearsonr(case["pred"], case["gold"])[0]), "spearman": float(spearmanr(case["pred"], case["gold"])[0])}
squad = json.load(open(data["squad"]["dataset"]))["data"]
out["squad"] = evaluate(squad, data["squad"]["predictions"])
out["normalized"] = [normalize_answer(s) for s in data["strings"]]
json.dump(out, open(sys.argv[2], "w"))
