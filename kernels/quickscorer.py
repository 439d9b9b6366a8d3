"""Factorized QuickScorer: best-of-N over (query, prompt) pairs without materializing pairs.

The idea (Lucchese et al., QuickScorer, SIGIR 2015), specialised to features that
are a plain concatenation [query embedding ‖ prompt embedding]:

* Leaves of each tree are numbered left to right (at most 64, so a leaf set is a
  ``uint64``).  Every internal node gets a mask with the leaves of its *left*
  subtree cleared: the leaves that stay reachable when its test is false (the
  walk goes right).  The exit leaf of a row is the lowest set bit of the AND of
  the masks of all its false nodes.
* AND is associative, so per tree the false-node masks split into a query part
  ``Mq`` (nodes testing query features; once per query) and a prompt part ``Mp``
  (once per candidate prompt).  A pair's leaf is ``lowest_set_bit(Mq & Mp)``.
* Trees testing only query features add the same value to every candidate: they
  are evaluated once per query (for the reported score) and never in the pair
  loop.  Trees testing only prompt features are a per-prompt constant.  A tree
  whose exit leaf, given the query, is the same for every candidate (checked with
  the AND and the OR of the candidates' masks) is likewise a per-query constant.
* The pair loop is fused with arg-max / top-k, so only winners leave the kernel.

Tests are normalised so that one rule serves both libraries: every node sends
``x`` left iff ``x < T`` with ``T`` a float32, computed from the model's own rule
(LightGBM ``x <= t`` on float64 thresholds, XGBoost ``x < t`` on float32 ones).
For float32 inputs both are exact rewrites, so the kernel reproduces the native
leaf choice bit for bit.  Inputs must be NaN-free (default directions are not
modelled) -- NaN embeddings are rejected.

The trees are read from one model description, treelite's, for either library.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OirlError
from ..train.model_format import LIGHTGBM_ZERO_THRESHOLD, read_treelite, zero_tiny

try:  # numba is a hard dependency, but keep import errors readable
    import numba
    from llvmlite import ir as _ir
    from numba import njit, prange, types
    from numba.extending import intrinsic
except ImportError as _exc:  # pragma: no cover
    raise ImportError(f"oirl_fast.kernels needs numba: {_exc}") from None

MAX_LEAVES = 64
ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
# Queries scored together in the mask step (one SIMD block, feature-major).
LANES = 16

# treelite enums (model spec v4)
_NODE_LEAF, _NODE_NUMERICAL, _NODE_CATEGORICAL = 0, 1, 2
_CMP = {0: None, 1: "==", 2: "<", 3: "<=", 4: ">", 5: ">="}
_FLOAT_TYPES = {2: "float32", 3: "float64"}


class UnsupportedModel(Exception):
    """The model cannot run on the factorized kernel (callers fall back to another path)."""


# --------------------------------------------------------------------------------------
# Model description


@dataclass
class ForestDescription:
    """A binary-classification tree ensemble, normalised for the kernel.

    Node ``n`` of tree ``t`` (``tree_ptr[t] <= n < tree_ptr[t+1]``, internal nodes
    only) sends ``x`` to its left child iff ``x[node_feature[n]] < node_threshold[n]``;
    ``node_mask[n]`` has the leaves of its left subtree cleared.  Leaves are numbered
    left to right; ``leaf_values[t, j]`` is leaf ``j`` of tree ``t`` (zero-padded).
    margin = base_score + sum of the trees' exit leaves; probability =
    sigmoid(sigmoid_alpha * margin) when ``postprocessor == "sigmoid"``.
    """

    n_features: int
    tree_ptr: np.ndarray  # int64 (T+1,)
    node_feature: np.ndarray  # int32 (N,)
    node_threshold: np.ndarray  # float32 (N,)
    node_mask: np.ndarray  # uint64 (N,)
    leaf_values: np.ndarray  # float64 (T, 64)
    n_leaves: np.ndarray  # int32 (T,)
    base_score: float
    postprocessor: str
    sigmoid_alpha: float = 1.0
    source: str = "treelite"
    threshold_type: str = "float64"
    comparison: str = "<="
    unsupported: str | None = None  # why the kernel cannot run this model (None: it can)
    # LightGBM reads any input with |x| <= kZeroThreshold (1e-35f) as 0.0; the scorer does the same.
    zero_threshold: float = 0.0

    @property
    def n_trees(self) -> int:
        return len(self.n_leaves)

    @property
    def max_leaves(self) -> int:
        return int(self.n_leaves.max()) if len(self.n_leaves) else 1

    # -- loaders -------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, backend: str) -> "ForestDescription":
        path = Path(path)
        model = read_treelite(path, backend)
        if backend == "lightgbm":
            desc = cls.from_treelite(model, source="lightgbm")
            desc.zero_threshold = LIGHTGBM_ZERO_THRESHOLD
            zero = _lightgbm_zero_missing(path.read_text(encoding="utf-8", errors="replace"))
            if zero and desc.unsupported is None:
                desc.unsupported = "LightGBM nodes treat zero as missing"
            return desc
        return cls.from_treelite(model, source="xgboost")

    @classmethod
    def from_booster(cls, booster) -> "ForestDescription":
        """From an in-memory ``lightgbm.Booster`` or ``xgboost.Booster``."""
        mod = type(booster).__module__.split(".")[0]
        with tempfile.TemporaryDirectory(prefix="oirl-forest-") as tmp:
            if mod == "lightgbm":
                path = Path(tmp) / "model.lgb.txt"
                booster.save_model(str(path))
                return cls.from_file(path, "lightgbm")
            if mod == "xgboost":
                path = Path(tmp) / "model.xgb.json"
                booster.save_model(str(path))
                return cls.from_file(path, "xgboost")
        raise TypeError(f"not a LightGBM or XGBoost booster: {type(booster)!r}")

    @classmethod
    def from_treelite(cls, model, source: str = "treelite") -> "ForestDescription":
        header = model.get_header_accessor()
        hget = header.get_field
        unsupported = None
        if int(hget("num_target")[0]) != 1 or int(np.asarray(hget("num_class")).max()) != 1:
            unsupported = "multi-output model"
        if int(hget("average_tree_output")[0]):
            unsupported = "averaged (random forest) model"
        thr_type = _FLOAT_TYPES.get(int(hget("threshold_type")[0]), "?")
        post, alpha = _postprocessor(model, header)
        if post not in ("sigmoid", "identity", "identity_multiclass"):
            unsupported = unsupported or f"postprocessor {post!r}"
        base = float(np.asarray(hget("base_scores"), dtype=np.float64)[0])
        n_trees = int(model.num_tree)

        tree_ptr = [0]
        feats, thrs, masks = [], [], []
        leaf_values = np.zeros((n_trees, MAX_LEAVES), dtype=np.float64)
        n_leaves = np.zeros(n_trees, dtype=np.int32)
        comparisons = set()
        for t in range(n_trees):
            acc = model.get_tree_accessor(t)
            node_type = np.asarray(acc.get_field("node_type"))
            if (node_type == _NODE_CATEGORICAL).any():
                unsupported = unsupported or "categorical splits"
            if len(np.asarray(acc.get_field("leaf_vector"))):
                unsupported = unsupported or "vector leaves"
            tr = _normalise_tree(
                node_type,
                np.asarray(acc.get_field("cleft")),
                np.asarray(acc.get_field("cright")),
                np.asarray(acc.get_field("split_index")),
                np.asarray(acc.get_field("threshold"), dtype=np.float64),
                np.asarray(acc.get_field("cmp")),
                np.asarray(acc.get_field("leaf_value"), dtype=np.float64),
            )
            f, th, m, leaves, ops = tr
            comparisons |= ops
            if len(leaves) > MAX_LEAVES:
                unsupported = unsupported or f"tree {t} has {len(leaves)} leaves (the kernel takes at most {MAX_LEAVES})"
                leaves = leaves[:MAX_LEAVES]
            n_leaves[t] = len(leaves)
            leaf_values[t, : len(leaves)] = leaves
            feats.append(f)
            thrs.append(th)
            masks.append(m)
            tree_ptr.append(tree_ptr[-1] + len(f))
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        return cls(
            n_features=int(model.num_feature),
            tree_ptr=np.asarray(tree_ptr, dtype=np.int64),
            node_feature=cat(feats, np.int32),
            node_threshold=cat(thrs, np.float32),
            node_mask=cat(masks, np.uint64),
            leaf_values=leaf_values,
            n_leaves=n_leaves,
            base_score=base,
            postprocessor="sigmoid" if post == "sigmoid" else "identity",
            sigmoid_alpha=alpha,
            source=source,
            threshold_type=thr_type,
            comparison=",".join(sorted(c for c in comparisons if c)) or "none",
            unsupported=unsupported,
        )

    # -- reference evaluation (slow, for tests and debugging) ----------------------
    def predict_margin_reference(self, X: np.ndarray) -> np.ndarray:
        """Row-by-row QuickScorer in numpy: float64 (n,) margins."""
        X = zero_tiny(np.asarray(X, dtype=np.float32), self.zero_threshold)
        out = np.full(len(X), self.base_score)
        for t in range(self.n_trees):
            a, b = self.tree_ptr[t], self.tree_ptr[t + 1]
            acc = np.full(len(X), ALL_ONES, dtype=np.uint64)
            for n in range(a, b):
                false = X[:, self.node_feature[n]] >= self.node_threshold[n]
                acc[false] &= self.node_mask[n]
            low = _lowest_bit_np(acc)
            out += self.leaf_values[t, low]
        return out


def _postprocessor(model, header) -> tuple[str, float]:
    try:
        post = header.get_field("postprocessor")
        if not isinstance(post, str):
            raise TypeError
        alpha = float(np.asarray(header.get_field("sigmoid_alpha"))[0])
        return post, alpha
    except Exception:  # some treelite builds cannot return string fields; read the JSON header
        import json

        d = json.loads(model.dump_as_json())
        return str(d.get("postprocessor", "identity")), float(d.get("sigmoid_alpha", 1.0))


def _lightgbm_zero_missing(text: str) -> bool:
    """True when some LightGBM node uses missing_type Zero (zero goes the default way)."""
    for line in text.splitlines():
        if line.startswith("decision_type="):
            for v in line[len("decision_type="):].split():
                if (int(v) >> 2) & 3 == 1:
                    return True
    return False


def _floor32(t: float) -> np.float32:
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def _ceil32(t: float) -> np.float32:
    f = np.float32(t)
    if float(f) < t:
        f = np.nextafter(f, np.float32(np.inf))
    return f


def _strict_threshold(op: str, t: float) -> np.float32:
    """T such that, for every float32 x (compared in float64), ``x op t`` iff ``x < T``; op in <, <=."""
    if op == "<=":
        return np.nextafter(_floor32(t), np.float32(np.inf))
    return _ceil32(t)


def _normalise_tree(node_type, cleft, cright, split, thr, cmp, leaf_value):
    """Walk one tree left to right: (features, strict float32 thresholds, masks, leaf values, ops)."""
    feats: list[int] = []
    thrs: list[np.float32] = []
    los: list[int] = []
    his: list[int] = []
    leaves: list[float] = []
    ops: set = set()
    # iterative in-order walk; for each internal node remember the leaf range of its left subtree
    def walk(root: int):
        stack = [(root, 0)]
        while stack:
            node, state = stack.pop()
            if node_type[node] == _NODE_LEAF:
                leaves.append(float(leaf_value[node]))
                continue
            if node_type[node] != _NODE_NUMERICAL:
                raise UnsupportedModel("categorical split")
            op = _CMP.get(int(cmp[node]))
            ops.add(op)
            left, right = int(cleft[node]), int(cright[node])
            if op in (">", ">="):  # x > t goes left  <=>  x <= t goes right: swap children
                left, right = right, left
                op = "<=" if op == ">" else "<"
            elif op not in ("<", "<="):
                raise UnsupportedModel(f"comparison {op!r}")
            if state == 0:
                idx = len(feats)
                feats.append(int(split[node]))
                thrs.append(_strict_threshold(op, float(thr[node])))
                los.append(len(leaves))
                his.append(-1)
                stack.append((node, 1 + idx))  # revisit after the left subtree
                stack.append((left, 0))
            else:
                idx = state - 1
                his[idx] = len(leaves)
                stack.append((right, 0))

    walk(0)
    masks = []
    for lo, hi in zip(los, his):
        width = hi - lo
        left_bits = ((1 << width) - 1) << lo
        masks.append(np.uint64(((1 << 64) - 1) & ~left_bits))
    return (
        np.asarray(feats, dtype=np.int32),
        np.asarray(thrs, dtype=np.float32),
        np.asarray(masks, dtype=np.uint64),
        np.asarray(leaves, dtype=np.float64),
        ops,
    )


def _lowest_bit_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    low = x & (~x + np.uint64(1))
    out = np.full(len(x), 64, dtype=np.int64)
    nz = low != 0
    out[nz] = np.log2(low[nz].astype(np.float64)).round().astype(np.int64)
    return out


# --------------------------------------------------------------------------------------
# numba kernels


@intrinsic
def _cttz(typingctx, x):
    """Count trailing zeros of a uint64 (64 for zero): the index of the lowest set bit."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], _ir.Constant(_ir.IntType(1), 0))

    return sig, codegen


def _splat(builder, value, vec_type):
    undef = _ir.Constant(vec_type, _ir.Undefined)
    zeros = _ir.Constant(_ir.VectorType(_ir.IntType(32), vec_type.count), [0] * vec_type.count)
    return builder.shuffle_vector(builder.insert_element(undef, value, _ir.Constant(_ir.IntType(32), 0)), undef, zeros)


@intrinsic
def _tree_mask_block(typingctx, xfm, feat, thr, mask, start, end, M, slot):
    """M[slot*LANES : (slot+1)*LANES] = AND over nodes start..end-1 of (x < thr ? ~0 : mask), per lane.

    Written in LLVM IR with explicit <LANES x float> / <LANES x i64> vectors so the
    accumulator stays in registers across the node loop (the loop vectorizer, given
    a short lane loop, keeps it in memory and is about 4x slower).  xfm is the
    feature-major block of LANES queries: xfm[f*LANES + l].
    """
    sig = types.void(xfm, feat, thr, mask, start, end, M, slot)

    def codegen(context, builder, signature, args):
        xfm_v, feat_v, thr_v, mask_v, start_v, end_v, M_v, slot_v = args
        xty, fty, tty, mty, _, _, Mty, _ = signature.args
        xd = context.make_array(xty)(context, builder, xfm_v).data
        fd = context.make_array(fty)(context, builder, feat_v).data
        td = context.make_array(tty)(context, builder, thr_v).data
        md = context.make_array(mty)(context, builder, mask_v).data
        Md = context.make_array(Mty)(context, builder, M_v).data
        i64 = _ir.IntType(64)
        vf = _ir.VectorType(_ir.FloatType(), LANES)
        vi = _ir.VectorType(i64, LANES)
        ones = _ir.Constant(vi, [_ir.Constant(i64, -1)] * LANES)
        lanes = _ir.Constant(i64, LANES)
        pre = builder.basic_block
        fn = builder.function
        cond_bb = fn.append_basic_block("qs.cond")
        body_bb = fn.append_basic_block("qs.body")
        end_bb = fn.append_basic_block("qs.end")
        builder.branch(cond_bb)
        builder.position_at_end(cond_bb)
        i = builder.phi(i64)
        acc = builder.phi(vi)
        i.add_incoming(start_v, pre)
        acc.add_incoming(ones, pre)
        builder.cbranch(builder.icmp_signed("<", i, end_v), body_bb, end_bb)
        builder.position_at_end(body_bb)
        f = builder.sext(builder.load(builder.gep(fd, [i])), i64)
        th = builder.load(builder.gep(td, [i]))
        m = builder.load(builder.gep(md, [i]))
        x = builder.load(builder.bitcast(builder.gep(xd, [builder.mul(f, lanes)]), vf.as_pointer()), align=4)
        go_left = builder.fcmp_ordered("<", x, _splat(builder, th, vf))
        acc_next = builder.and_(acc, builder.select(go_left, ones, _splat(builder, m, vi)))
        i.add_incoming(builder.add(i, _ir.Constant(i64, 1)), body_bb)
        acc.add_incoming(acc_next, body_bb)
        builder.branch(cond_bb)
        builder.position_at_end(end_bb)
        out = builder.bitcast(builder.gep(Md, [builder.mul(slot_v, lanes)]), vi.as_pointer())
        builder.store(acc, out, align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _query_masks(Xq, q0, nq, xfm, qptr, qfeat, qthr, qmask, M):
    """Masks of the query-feature nodes for queries q0..q0+nq-1 (nq <= LANES).

    xfm: float32 (dq * LANES,) scratch, feature-major; M: uint64 (Tq * LANES,) out,
    M[t*LANES + l] for tree t and lane l.
    """
    dq = Xq.shape[1]
    for l in range(nq):
        for f in range(dq):
            xfm[f * LANES + l] = Xq[q0 + l, f]
    for l in range(nq, LANES):
        for f in range(dq):
            xfm[f * LANES + l] = 0.0
    for t in range(qptr.shape[0] - 1):
        _tree_mask_block(xfm, qfeat, qthr, qmask, qptr[t], qptr[t + 1], M, t)


@njit(cache=True, inline="always")
def _pair_scores(M, l, n_mixed, leaves, Mp, mp_and, mp_or, pconst, s):
    """s[p] = prompt-dependent margin of pair (query lane l, p); returns the per-query constant."""
    P = s.shape[0]
    qc = 0.0
    for t in range(n_mixed, leaves.shape[0]):  # query-only trees
        qc += leaves[t, _cttz(M[t * LANES + l])]
    for p in range(P):
        s[p] = pconst[p]
    for t in range(n_mixed):
        mq = M[t * LANES + l]
        lo = _cttz(mq & mp_or[t])
        if lo == _cttz(mq & mp_and[t]):  # same exit leaf for every candidate
            qc += leaves[t, lo]
            continue
        lt = leaves[t]
        mpt = Mp[t]
        for p in range(P):
            s[p] += lt[_cttz(mq & mpt[p])]
    return qc


@njit(cache=True, parallel=True)
def _best_kernel(Xq, qptr, qfeat, qthr, qmask, n_mixed, leaves, Mp, mp_and, mp_or, pconst, base, k,
                 out_idx, out_margin, nchunks):
    Q, dq = Xq.shape
    Tq = qptr.shape[0] - 1
    P = pconst.shape[0]
    nblocks = (Q + LANES - 1) // LANES
    nchunks = min(nblocks, nchunks)
    for c in prange(nchunks):
        b0 = c * nblocks // nchunks
        b1 = (c + 1) * nblocks // nchunks
        xfm = np.empty(dq * LANES, dtype=np.float32)
        M = np.empty(Tq * LANES, dtype=np.uint64)
        s = np.empty(P, dtype=np.float64)
        ti = np.empty(k, dtype=np.int64)
        ts = np.empty(k, dtype=np.float64)
        for b in range(b0, b1):
            q0 = b * LANES
            nq = min(LANES, Q - q0)
            _query_masks(Xq, q0, nq, xfm, qptr, qfeat, qthr, qmask, M)
            for l in range(nq):
                qc = _pair_scores(M, l, n_mixed, leaves, Mp, mp_and, mp_or, pconst, s)
                if k == 1:
                    bi = 0
                    bv = s[0]
                    for p in range(1, P):
                        if s[p] > bv:
                            bv = s[p]
                            bi = p
                    out_idx[q0 + l, 0] = bi
                    out_margin[q0 + l, 0] = bv + qc + base
                else:
                    for j in range(k):
                        ti[j] = -1
                        ts[j] = -np.inf
                    for p in range(P):
                        v = s[p]
                        if ti[k - 1] >= 0 and not v > ts[k - 1]:
                            continue
                        j = k - 1
                        while j > 0 and (ti[j - 1] < 0 or v > ts[j - 1]):
                            ts[j] = ts[j - 1]
                            ti[j] = ti[j - 1]
                            j -= 1
                        ts[j] = v
                        ti[j] = p
                    for j in range(k):
                        out_idx[q0 + l, j] = ti[j]
                        out_margin[q0 + l, j] = ts[j] + qc + base


@njit(cache=True, parallel=True)
def _score_kernel(Xq, qptr, qfeat, qthr, qmask, n_mixed, leaves, Mp, mp_and, mp_or, pconst, base, out, nchunks):
    Q, dq = Xq.shape
    Tq = qptr.shape[0] - 1
    P = pconst.shape[0]
    nblocks = (Q + LANES - 1) // LANES
    nchunks = min(nblocks, nchunks)
    for c in prange(nchunks):
        b0 = c * nblocks // nchunks
        b1 = (c + 1) * nblocks // nchunks
        xfm = np.empty(dq * LANES, dtype=np.float32)
        M = np.empty(Tq * LANES, dtype=np.uint64)
        s = np.empty(P, dtype=np.float64)
        for b in range(b0, b1):
            q0 = b * LANES
            nq = min(LANES, Q - q0)
            _query_masks(Xq, q0, nq, xfm, qptr, qfeat, qthr, qmask, M)
            for l in range(nq):
                qc = _pair_scores(M, l, n_mixed, leaves, Mp, mp_and, mp_or, pconst, s)
                for p in range(P):
                    out[q0 + l, p] = s[p] + qc + base


@njit(cache=True)
def _prompt_masks(Xp, pptr, pfeat, pthr, pmask, out):
    """out[t, p] = AND of the masks of tree t's false prompt-feature nodes for prompt p."""
    for t in range(out.shape[0]):
        for p in range(Xp.shape[0]):
            acc = np.uint64(0xFFFFFFFFFFFFFFFF)
            for n in range(pptr[t], pptr[t + 1]):
                if not Xp[p, pfeat[n]] < pthr[n]:
                    acc &= pmask[n]
            out[t, p] = acc


# --------------------------------------------------------------------------------------
# Public API


@dataclass
class PromptSet:
    """Candidates prepared for one scorer: per-tree prompt masks and per-prompt constants."""

    embeddings: np.ndarray  # float32 (P, dp)
    masks: np.ndarray  # uint64 (n_mixed, P)
    mask_and: np.ndarray  # uint64 (n_mixed,)
    mask_or: np.ndarray  # uint64 (n_mixed,)
    const: np.ndarray  # float64 (P,): prompt-only trees

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass
class KernelInfo:
    n_trees: int
    n_mixed: int
    n_query_only: int
    n_prompt_only: int
    n_constant: int
    query_nodes: int
    prompt_nodes: int
    max_leaves: int
    source: str
    comparison: str
    threshold_type: str


class FactorizedScorer:
    """Score every (query, prompt) pair of a concatenated-feature tree model without building pairs.

    ``score(Q, P)`` -> float64 (n_q, n_p); ``best_of_n(Q, P, top_k)`` -> (idx int64 (n_q, k),
    score float64 (n_q, k)), best first, ties to the lower prompt index.  Scores are
    probabilities (the native ``predict``), or margins with ``raw=True``.
    """

    def __init__(self, forest: ForestDescription, query_dim: int, prompt_dim: int | None = None):
        if forest.unsupported:
            raise UnsupportedModel(forest.unsupported)
        if forest.max_leaves > MAX_LEAVES:
            raise UnsupportedModel(f"trees with {forest.max_leaves} leaves (at most {MAX_LEAVES})")
        prompt_dim = forest.n_features - query_dim if prompt_dim is None else prompt_dim
        if query_dim <= 0 or prompt_dim <= 0 or query_dim + prompt_dim < forest.n_features:
            raise UnsupportedModel(
                f"feature layout {query_dim}+{prompt_dim} does not cover the model's {forest.n_features} features"
            )
        self.forest = forest
        self.query_dim, self.prompt_dim = int(query_dim), int(prompt_dim)
        f, ptr = forest.node_feature, forest.tree_ptr
        is_q = f < query_dim
        kinds = []
        for t in range(forest.n_trees):
            sl = slice(ptr[t], ptr[t + 1])
            has_q, has_p = bool(is_q[sl].any()), bool((~is_q[sl]).any())
            kinds.append("mixed" if has_q and has_p else "query" if has_q else "prompt" if has_p else "const")
        kinds = np.asarray(kinds)
        mixed = np.flatnonzero(kinds == "mixed")
        qonly = np.flatnonzero(kinds == "query")
        ponly = np.flatnonzero(kinds == "prompt")
        const = np.flatnonzero(kinds == "const")
        self._n_mixed = len(mixed)
        qtrees = np.concatenate([mixed, qonly]).astype(np.int64)
        self._q = _gather_nodes(forest, qtrees, is_q, 0)
        self._p = _gather_nodes(forest, mixed, ~is_q, query_dim)
        self._ponly = _gather_nodes(forest, ponly, ~is_q, query_dim)
        self._leaves_q = np.ascontiguousarray(forest.leaf_values[qtrees])
        self._leaves_p = np.ascontiguousarray(forest.leaf_values[ponly])
        self._base = float(forest.base_score) + float(forest.leaf_values[const, 0].sum())
        self.info = KernelInfo(
            n_trees=forest.n_trees, n_mixed=len(mixed), n_query_only=len(qonly), n_prompt_only=len(ponly),
            n_constant=len(const), query_nodes=int(is_q.sum()), prompt_nodes=int((~is_q).sum()),
            max_leaves=forest.max_leaves, source=forest.source, comparison=forest.comparison,
            threshold_type=forest.threshold_type,
        )

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def from_file(cls, model_file: str | Path, backend: str, query_dim: int,
                  prompt_dim: int | None = None) -> "FactorizedScorer":
        """From a native model file (``backend``: lightgbm or xgboost) over [query ‖ prompt] features."""
        return cls(ForestDescription.from_file(model_file, backend), query_dim, prompt_dim)

    @classmethod
    def from_booster(cls, booster, query_dim: int, prompt_dim: int | None = None) -> "FactorizedScorer":
        return cls(ForestDescription.from_booster(booster), query_dim, prompt_dim)

    # -- helpers ---------------------------------------------------------------------
    def _check(self, X: np.ndarray, dim: int, what: str) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != dim:
            raise OirlError(f"{what} embeddings must have shape (n, {dim}), got {X.shape}")
        if np.isnan(X).any():
            rows = np.flatnonzero(np.isnan(X).any(axis=1))
            raise OirlError(f"{what} embeddings contain NaN (row {int(rows[0])}; {len(rows)} rows in all)")
        return np.ascontiguousarray(zero_tiny(X, self.forest.zero_threshold))

    def prepare(self, prompt_emb) -> PromptSet:
        """Prompt-side work, done once per candidate set."""
        if isinstance(prompt_emb, PromptSet):
            return prompt_emb
        Xp = self._check(prompt_emb, self.prompt_dim, "prompt")
        if len(Xp) == 0:
            raise OirlError("no candidate prompts")
        P = len(Xp)
        masks = np.empty((self._n_mixed, P), dtype=np.uint64)
        ptr, feat, thr, msk = self._p
        _prompt_masks(Xp, ptr, feat, thr, msk, masks)
        const = np.zeros(P, dtype=np.float64)
        if len(self._leaves_p):
            ptr, feat, thr, msk = self._ponly
            pm = np.empty((len(self._leaves_p), P), dtype=np.uint64)
            _prompt_masks(Xp, ptr, feat, thr, msk, pm)
            for t in range(len(pm)):
                const += self._leaves_p[t, _lowest_bit_np(pm[t])]
        if P:
            mand = np.bitwise_and.reduce(masks, axis=1) if self._n_mixed else np.zeros(0, np.uint64)
            mor = np.bitwise_or.reduce(masks, axis=1) if self._n_mixed else np.zeros(0, np.uint64)
        return PromptSet(Xp, masks, np.ascontiguousarray(mand), np.ascontiguousarray(mor), const)

    def _finish(self, margin: np.ndarray, raw: bool) -> np.ndarray:
        if raw or self.forest.postprocessor != "sigmoid":
            return margin
        return 1.0 / (1.0 + np.exp(-self.forest.sigmoid_alpha * margin))

    # -- scoring ---------------------------------------------------------------------
    def score(self, query_emb: np.ndarray, prompt_emb, raw: bool = False) -> np.ndarray:
        """float64 (n_q, n_p): every candidate's score for every query."""
        ps = self.prepare(prompt_emb)
        Xq = self._check(query_emb, self.query_dim, "query")
        out = np.empty((len(Xq), len(ps)), dtype=np.float64)
        if len(Xq):
            ptr, feat, thr, msk = self._q
            _score_kernel(Xq, ptr, feat, thr, msk, self._n_mixed, self._leaves_q, ps.masks, ps.mask_and,
                          ps.mask_or, ps.const, self._base, out, _n_chunks())
        return self._finish(out, raw)

    def best_of_n(self, query_emb: np.ndarray, prompt_emb, top_k: int = 1, raw: bool = False):
        """(idx int64 (n_q, k), score float64 (n_q, k)): the k best candidates per query, best first."""
        ps = self.prepare(prompt_emb)
        Xq = self._check(query_emb, self.query_dim, "query")
        k = max(1, min(int(top_k), len(ps)))
        idx = np.empty((len(Xq), k), dtype=np.int64)
        margin = np.empty((len(Xq), k), dtype=np.float64)
        if len(Xq):
            ptr, feat, thr, msk = self._q
            _best_kernel(Xq, ptr, feat, thr, msk, self._n_mixed, self._leaves_q, ps.masks, ps.mask_and,
                         ps.mask_or, ps.const, self._base, k, idx, margin, _n_chunks())
        return idx, self._finish(margin, raw)


def _n_chunks() -> int:
    return max(1, numba.get_num_threads() * 8)


def _gather_nodes(forest: ForestDescription, trees: np.ndarray, keep: np.ndarray, offset: int):
    """Nodes of ``trees`` (in that order) whose ``keep`` flag is set, grouped by tree."""
    ptr = [0]
    sel = []
    for t in trees:
        idx = np.arange(forest.tree_ptr[t], forest.tree_ptr[t + 1])
        idx = idx[keep[idx]]
        sel.append(idx)
        ptr.append(ptr[-1] + len(idx))
    idx = np.concatenate(sel) if sel else np.zeros(0, dtype=np.int64)
    return (
        np.asarray(ptr, dtype=np.int64),
        np.ascontiguousarray(forest.node_feature[idx] - offset, dtype=np.int32),
        np.ascontiguousarray(forest.node_threshold[idx], dtype=np.float32),
        np.ascontiguousarray(forest.node_mask[idx], dtype=np.uint64),
    )
