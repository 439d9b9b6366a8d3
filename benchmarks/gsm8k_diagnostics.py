"""Diagnostics for benchmarks/gsm8k_study.py: the logs per question, cheap query features, and what
the outcomes say about the prompts, sampling noise and question features (no model is fitted here)."""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import re
from typing import Sequence

import numpy as np

from oirl_fast.collect.published import bundled_source, import_published
from oirl_fast.splits import pool

TRAIN_PROMPTS = ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]


# ----------------------------------------------------------------------------- query features
# Cheap features of the question text alone (computable at scoring time, so appending them to the
# query embedding would keep the kernel's query/prompt split). Measured here, they did not earn a
# place in the package: see "Why GSM8K does not gain" in docs/results/crossfit.md.

FEATURE_NAMES = (
    "log_chars",         # log(1 + characters)
    "n_words",
    "n_sentences",       # ., ! and ? ends (decimals excluded)
    "words_per_sentence",
    "n_numbers",         # numerals: 12, 1,200, 3.5, 1/2 counts once
    "n_distinct_numbers",
    "max_log10_number",  # log10(1 + largest numeral)
    "n_decimals",        # numerals with a decimal point or a fraction slash
    "n_number_words",    # one..twelve, half, twice, double, triple, dozen, quarter, third
    "n_percent",
    "n_money",
    "n_operation_cues",  # words that usually cost a step: each, per, every, times, more, less, left, ...
)

_NUMERAL = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_SENTENCE_END = re.compile(r"[.!?](?!\d)")
_WORD = re.compile(r"[A-Za-z']+")
_NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve half twice double triple dozen dozens quarter "
    "third thirds".split())
_CUES = frozenset(
    "each per every times more less fewer left remaining remain remains total altogether average difference "
    "spent spend profit discount increase decrease split share shared rest".split())


def _value(numeral: str) -> float:
    text = numeral.replace(",", "")
    if "/" in text:
        num, den = text.split("/", 1)
        try:
            return float(num) / float(den) if float(den) else float(num)
        except ValueError:
            return 0.0
    try:
        return float(text)
    except ValueError:  # "1,2,3" style runs
        return 0.0


def query_features(texts: Sequence[str]) -> np.ndarray:
    """float32 (len(texts), len(FEATURE_NAMES)): the features of :data:`FEATURE_NAMES`, in that order.

    Pure and deterministic: the same text always gives the same row, whatever else is in the batch."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not a string")
        words = [w.lower() for w in _WORD.findall(text)]
        numerals = _NUMERAL.findall(text)
        values = [_value(n) for n in numerals]
        n_sent = max(1, len(_SENTENCE_END.findall(text.strip())) or 1)
        out[i] = (
            math.log1p(len(text)),
            len(words),
            n_sent,
            len(words) / n_sent,
            len(numerals),
            len({n.replace(",", "") for n in numerals}),
            math.log10(1.0 + max((abs(v) for v in values), default=0.0)),
            sum(("." in n) or ("/" in n) for n in numerals),
            sum(w in _NUMBER_WORDS for w in words),
            text.count("%") + words.count("percent"),
            text.count("$"),
            sum(w in _CUES for w in words),
        )
    return out


# ----------------------------------------------------------------------------- data


def gold_steps(ds: str, n_rows: int) -> np.ndarray:
    """int (n_rows,): steps of the gold solution per logged question row, in log order (diagnostic only).

    GSM8K: calculator annotations ``<<...>>`` in the reference solution; SVAMP/MAWPS: operators of the
    ``Equation`` column. Never a model input: it is not known at scoring time."""
    src = bundled_source()
    steps: list[int] = []
    if ds == "gsm8k":
        for name, limit in (("train", None), ("test", 1000)):
            with gzip.open(src / "gsm8k" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if limit is not None and i == limit:
                        break
                    steps.append(json.loads(line)["answer"].count("<<"))
    else:
        for k in range(5):
            with gzip.open(src / ds / f"fold{k}_train.csv.gz", "rt", encoding="utf-8", newline="") as fh:
                for row in csv.DictReader(io.StringIO(fh.read())):
                    steps.append(sum(tok in "+-*/" for tok in row["Equation"].split()))
    if len(steps) != n_rows:
        raise SystemExit(f"gold steps: {len(steps)} rows, the log has {n_rows}")
    return np.asarray(steps)


def load(ds: str) -> dict:
    """Per question group: texts, pooled rates/counts (U, 6), one answer per pair (first and second
    logged copy; NaN where absent) and the gold step count."""
    table = import_published(ds)
    grouped = pool(table, "group", TRAIN_PROMPTS)
    rows = pool(table, "query_id", TRAIN_PROMPTS)  # one unit per logged row: a single answer per pair
    qids = table.column("query_id").to_pylist()
    row_of = {}
    for i, q in enumerate(qids):
        row_of.setdefault(q, i)
    steps_by_row = gold_steps(ds, len(set(qids)))
    order = {q: k for k, q in enumerate(dict.fromkeys(qids))}
    g_index = {g: u for u, g in enumerate(grouped.groups)}
    U = grouped.n_units
    first = np.full((U, 6), np.nan)
    second = np.full((U, 6), np.nan)
    seen = np.zeros(U, int)
    steps = np.zeros(U, int)
    for r, g in enumerate(rows.groups):
        u = g_index[g]
        if seen[u] == 0:
            first[u] = rows.rate[r]
            steps[u] = steps_by_row[order[rows.ids[r]]]
        elif seen[u] == 1:
            second[u] = rows.rate[r]
        seen[u] += 1
    return {"name": ds, "texts": grouped.texts, "rate": grouped.rate, "count": grouped.count,
            "first": first, "second": second, "steps": steps}


def subsample(d: dict, n: int, seed: int) -> dict:
    keep = np.sort(np.random.default_rng(seed).choice(len(d["texts"]), n, replace=False))
    out = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    out["texts"] = [d["texts"][i] for i in keep]
    return out


# ----------------------------------------------------------------------------- diagnostics


def prompt_diagnostics(y: np.ndarray) -> dict:
    """y: float (U, 6) one answer per pair. Accuracy, correlations and 'best prompt fails, another wins'."""
    acc = y.mean(0)
    best = int(np.argmax(acc))
    resid = y - y.mean(1, keepdims=True)
    others = np.delete(y, best, axis=1)
    top3 = np.argsort(-acc)[:3]
    c = np.corrcoef(y[:, top3].T)
    cr = np.corrcoef(resid[:, top3].T)
    return {
        "accuracy": dict(zip(TRAIN_PROMPTS, acc.round(4).tolist())),
        "top3": [TRAIN_PROMPTS[i] for i in top3],
        "top3_corr": float(c[np.triu_indices(3, 1)].mean()),
        "top3_resid_corr": float(cr[np.triu_indices(3, 1)].mean()),
        "best_fails_other_wins": float(np.mean((y[:, best] == 0) & (others.max(1) == 1))),
        "top3_spread_pts": float(100 * (acc[top3[0]] - acc[top3[2]])),
        "oracle": float(y.max(1).mean()),
    }


def _patterns(m: int) -> tuple[np.ndarray, np.ndarray]:
    pats = np.array(list(itertools.product([0, 1], repeat=m)), dtype=float)  # (2**m, m), column 0 the high bit
    return pats, pats.sum(1).astype(int)


def _rasch_fit(counts: np.ndarray, pats: np.ndarray, k_of: np.ndarray) -> np.ndarray:
    """Conditional-ML prompt strengths b (m,), b[0] = 0, from pattern counts (2**m,)."""
    from scipy.optimize import minimize

    m = pats.shape[1]

    def nll(free):
        b = np.concatenate([[0.0], free])
        s = pats @ b
        out, grad = 0.0, np.zeros(m)
        for k in range(1, m):
            sel = k_of == k
            n_k = counts[sel].sum()
            if n_k == 0:
                continue
            lse = np.logaddexp.reduce(s[sel])
            p = np.exp(s[sel] - lse)
            out -= counts[sel] @ s[sel] - n_k * lse
            grad -= counts[sel] @ pats[sel] - n_k * (p @ pats[sel])
        return out, grad[1:]

    res = minimize(nll, np.zeros(m - 1), jac=True, method="L-BFGS-B")
    return np.concatenate([[0.0], res.x])


def _rasch_g(counts: np.ndarray, b: np.ndarray, pats: np.ndarray, k_of: np.ndarray) -> float:
    s = pats @ b
    g = 0.0
    for k in range(1, pats.shape[1]):
        sel = k_of == k
        n_k = counts[sel].sum()
        if n_k == 0:
            continue
        e = n_k * np.exp(s[sel] - np.logaddexp.reduce(s[sel]))
        o = counts[sel]
        g += 2 * np.sum(np.where(o > 0, o * np.log(np.where(o > 0, o, 1) / e), 0.0))
    return float(g)


def rasch_test(y: np.ndarray, n_boot: int, seed: int) -> dict:
    """Interaction beyond sampling luck in one-answer-per-pair outcomes y (U, m) of 0/1, m <= 8.

    G: likelihood ratio of the observed pattern frequencies given k against the no-interaction
    (conditional logit) model; its null distribution by parametric bootstrap with the fitted strengths.
    excess_per_q = (G - null mean) / questions with 0 < k < m. Also the 'best prompt fails, another
    succeeds' rate observed against its null expectation."""
    m = y.shape[1]
    pats, k_of = _patterns(m)
    code = (y.astype(int) * (1 << np.arange(m - 1, -1, -1))).sum(1)
    counts = np.bincount(code, minlength=2 ** m).astype(float)
    b = _rasch_fit(counts, pats, k_of)
    g_obs = _rasch_g(counts, b, pats, k_of)
    s = pats @ b
    best = int(np.argmax(y.mean(0)))
    fail_win = (pats[:, best] == 0) & (k_of >= 1)
    rng = np.random.default_rng(seed)
    null_g, null_fw = [], []
    n_by_k = [counts[k_of == k].sum() for k in range(m + 1)]
    for _ in range(n_boot):
        sim = np.where((k_of == 0) | (k_of == m), counts, 0.0)
        for k in range(1, m):
            sel = np.flatnonzero(k_of == k)
            sim[sel] = rng.multinomial(int(n_by_k[k]), np.exp(s[sel] - np.logaddexp.reduce(s[sel])))
        null_g.append(_rasch_g(sim, _rasch_fit(sim, pats, k_of), pats, k_of))
        null_fw.append(sim[fail_win].sum() / len(y))
    informative = sum(n_by_k[1:m])
    null_g = np.asarray(null_g)
    return {
        "informative_questions": int(informative),
        "G": g_obs,
        "G_null_mean": float(null_g.mean()),
        "p_value": float((1 + np.sum(null_g >= g_obs)) / (1 + n_boot)),
        "excess_per_q": float((g_obs - null_g.mean()) / informative),
        "best_fails_other_wins": float(counts[fail_win].sum() / len(y)),
        "best_fails_other_wins_null": float(np.mean(null_fw)),
    }


def repeat_noise(first: np.ndarray, second: np.ndarray) -> dict:
    """From two independent answers per pair: how often they disagree, and the split-half reliability
    of each top prompt's advantage over the question mean (0 = pure luck, 1 = no noise)."""
    both = ~np.isnan(second).any(1)
    a, b = first[both], second[both]
    ra = a - a.mean(1, keepdims=True)
    rb = b - b.mean(1, keepdims=True)
    rel = [float(np.corrcoef(ra[:, p], rb[:, p])[0, 1]) for p in range(6)]
    return {"questions": int(both.sum()), "pair_disagreement": float(np.mean(a != b)),
            "contrast_reliability": dict(zip(TRAIN_PROMPTS, np.round(rel, 3).tolist()))}


def answer_style(n_prompts: int = 6) -> dict:
    """GSM8K only: how the training prompts' raw answers on the 1000 test questions look.

    Median words, share showing worked arithmetic ('='), share cut off mid-sentence (no final . ! ? ))."""
    from oirl_fast.collect.published import load_gsm8k_answers, load_prompts

    out = {}
    for p in load_prompts()[:n_prompts]:
        ans = load_gsm8k_answers(p)
        out[p.id] = {"median_words": float(np.median([len(a.split()) for a in ans])),
                     "worked": float(np.mean(["=" in a for a in ans])),
                     "cut_off": float(np.mean([a.rstrip()[-1:] not in ".!?)" for a in ans]))}
    return out


def between_within(first: np.ndarray, second: np.ndarray, cols) -> dict:
    """Disagreement of one answer each from two different prompts (between), and of two answers
    from the same prompt (within, where repeats exist): the part of 'between' that exceeds 'within'
    is a persistent difference between the prompts on that question, the rest is resampling luck."""
    out = {"between": {f"{TRAIN_PROMPTS[i]}/{TRAIN_PROMPTS[j]}": float(np.mean(first[:, i] != first[:, j]))
                       for i, j in itertools.combinations(cols, 2)}}
    both = ~np.isnan(second).any(1)
    if both.any():
        out["within"] = {TRAIN_PROMPTS[i]: float(np.mean(first[both, i] != second[both, i])) for i in cols}
    return out


def feature_diagnostics(y: np.ndarray, steps: np.ndarray, qf: np.ndarray) -> list[dict]:
    """Per gold-step bin (and per count-of-numbers bin): questions, accuracy of each prompt, winner."""
    out = []
    n_num = qf[:, FEATURE_NAMES.index("n_numbers")]
    for name, v, edges in (("gold_steps", steps, [0, 2, 3, 4, 5, 6, 99]), ("n_numbers", n_num, [0, 2, 3, 4, 5, 6, 99])):
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (v >= lo) & (v < hi)
            if m.sum() < 30:
                continue
            acc = y[m].mean(0)
            out.append({"feature": name, "bin": f"[{lo},{hi})", "n": int(m.sum()),
                        "acc": dict(zip(TRAIN_PROMPTS, acc.round(3).tolist())),
                        "winner": TRAIN_PROMPTS[int(np.argmax(acc))]})
    return out
