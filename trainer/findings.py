"""What a data audit finds in image embeddings: duplicates and suspect labels, in pure numpy.

No I/O and no TensorFlow: `trainer.audit` reads the data, embeds it (the frozen phase's
embedding function) and writes the files; these functions only look at arrays, so each is
tested and measured on its own. Similarity is the cosine of L2-normalized pooled embeddings.

- Exact duplicates share a fingerprint of their decoded pixels (byte-identical files decode
  to the same pixels, so one key covers both).
- Near duplicates (a re-encoded or resized copy) have a cosine similarity at or above a
  threshold. trainer.audit's default, 0.95, was measured on the repository's real photos
  (docs/data.md, "Auditing a dataset").
- A suspect label is one for which another label has more evidence: the mean of two
  out-of-sample class distributions, the vote of the image's nearest neighbours
  (leave-one-out, its own duplicates left out too) and a cross-validated linear probe
  (softmax regression, its folds keeping duplicates together). Score: 1 - that evidence for
  the given label.
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

# Rows of the similarity matrix computed at once: about 128 MB of float32 with 100,000 images.
_BLOCK_ELEMENTS = 2 ** 25


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    x = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(unit: np.ndarray, *, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The k most similar other rows of each row, by cosine, most similar first.

    Exact, in blocks of rows, so memory stays near `_BLOCK_ELEMENTS` floats whatever N is;
    time is N^2 D (about a minute for 100,000 x 1280 on a few cores).

    Args:
      unit: [N, D] L2-normalized embeddings.
      k: neighbours per row (clipped to N - 1).

    Returns:
      (indices int64 [N, k], similarities float32 [N, k]).
    """
    n = len(unit)
    k = max(0, min(k, n - 1))
    indices, sims = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k == 0:
        return indices, sims
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        s = unit[rows] @ unit.T
        s[np.arange(len(rows)), rows] = -np.inf  # leave-one-out: never one's own neighbour
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(top, order, axis=1)
        sims[rows] = np.take_along_axis(top_sims, order, axis=1)
    return indices, sims


def exact_duplicate_pairs(keys: Sequence[Hashable]) -> List[Tuple[int, int]]:
    """Pairs (first, other) of rows sharing a key, e.g. a fingerprint of the decoded pixels.

    A group of m copies gives m - 1 pairs, each copy beside the group's first row (the train
    image, when the caller lists train first), not m(m-1)/2: a thousand blank images stay a
    thousand lines.
    """
    first: Dict[Hashable, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def near_duplicate_pairs(indices: np.ndarray, sims: np.ndarray, *, threshold: float,
                         groups: Optional[np.ndarray] = None) -> List[Tuple[int, int, float]]:
    """Pairs (i, j, similarity), i < j, of neighbours at or above `threshold`, each once, most
    similar first; with `groups` (of the exact copies: `duplicate_groups`), none inside a group.

    From `nearest_neighbours`: an image with more than k near copies shows its k closest.
    """
    found: Dict[Tuple[int, int], float] = {}
    rows, cols = np.nonzero(sims >= threshold)
    for i, c in zip(rows, cols):
        j = indices[i, c]
        if groups is None or groups[i] != groups[j]:
            found[int(min(i, j)), int(max(i, j))] = float(sims[i, c])
    return sorted(((a, b, s) for (a, b), s in found.items()), key=lambda t: (-t[2], t[0], t[1]))


def duplicate_groups(n: int, pairs: Sequence[Sequence]) -> np.ndarray:
    """Group id [N] per row: rows joined by any pair (first two items) share one (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        a, b = root(int(pair[0])), root(int(pair[1]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)], np.int64)


def neighbour_vote(indices: np.ndarray, labels: np.ndarray, *, num_classes: int, k: int,
                   groups: Optional[np.ndarray] = None) -> np.ndarray:
    """Leave-one-out k-nearest-neighbour class distribution [N, C].

    Row i: the share of each class among the first k neighbours of i that are not in i's
    duplicate group (a copy would vouch for its own label); uniform when none is left.
    """
    n = len(labels)
    votes = np.zeros((n, num_classes), np.float64)
    for i in range(n):
        others = indices[i]
        if groups is not None:
            others = others[groups[others] != groups[i]]
        others = others[:k]
        if len(others):
            np.add.at(votes[i], labels[others], 1.0)
            votes[i] /= len(others)
        else:
            votes[i] = 1.0 / num_classes
    return votes


def softmax_regression(x: np.ndarray, labels: np.ndarray, *, num_classes: int, l2: float = 1e-3,
                       steps: int = 300) -> Tuple[np.ndarray, np.ndarray]:
    """Weights [D, C] and bias [C] of an L2-regularized multinomial logistic regression.

    Full-batch Nesterov gradient descent with step 1/L, where L bounds the loss's curvature
    (half the largest eigenvalue of X^T X / n, by power iteration, plus l2): the loss is convex,
    so this converges without tuning a learning rate.
    """
    n, d = x.shape
    onehot = np.eye(num_classes, dtype=np.float64)[labels]
    v = np.full(d, 1.0 / np.sqrt(d))
    for _ in range(30):
        v = x.T @ (x @ v)
        v /= max(np.linalg.norm(v), 1e-12)
    lipschitz = 0.5 * (float(np.linalg.norm(x.T @ (x @ v))) / n + 1.0) + l2  # +1: the bias column
    w, b = np.zeros((d, num_classes)), np.zeros(num_classes)
    w_prev, b_prev = w, b
    for t in range(1, steps + 1):
        momentum = (t - 1) / (t + 2)
        yw, yb = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
        grad = softmax(x @ yw + yb) - onehot
        w_prev, b_prev = w, b
        w = yw - (x.T @ grad / n + l2 * yw) / lipschitz
        b = yb - grad.mean(axis=0) / lipschitz
    return w, b


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def probe_probabilities(unit: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = 5,
                        groups: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities [N, C] of a linear probe (`softmax_regression`).

    Each row is predicted by a probe that never saw it, nor (with `groups`) any duplicate of
    it: the folds split duplicate groups, not rows. Features are centered on the training
    folds and scaled to unit mean norm, which keeps the step size well conditioned.
    """
    n = len(labels)
    groups = np.arange(n) if groups is None else groups
    unique = np.unique(groups)
    fold_of_group = dict(zip(unique, np.random.default_rng(seed).permutation(len(unique)) % max(folds, 2)))
    fold = np.array([fold_of_group[g] for g in groups])
    probs = np.full((n, num_classes), 1.0 / num_classes)
    for f in range(max(folds, 2)):
        train, held = fold != f, fold == f
        if not held.any() or len(np.unique(labels[train])) < 2:
            continue
        mean = unit[train].mean(axis=0)
        scale = max(float(np.linalg.norm(unit[train] - mean, axis=1).mean()), 1e-12)
        w, b = softmax_regression((unit[train] - mean) / scale, labels[train], num_classes=num_classes)
        probs[held] = softmax(((unit[held] - mean) / scale) @ w + b)
    return probs


def suspect_labels(labels: np.ndarray, *, vote: np.ndarray, probe: np.ndarray
                   ) -> List[Tuple[int, int, float]]:
    """(row, suggested label, score) of each row whose evidence prefers another label, most
    suspicious first.

    Evidence: the mean of the neighbour vote and the probe's probabilities; the score, in
    [0, 1], is 1 minus the evidence for the given label.
    """
    evidence = (vote + probe) / 2.0
    suggested = np.argmax(evidence, axis=1)
    score = 1.0 - evidence[np.arange(len(labels)), labels]
    rows = np.nonzero(suggested != labels)[0]
    rows = rows[np.argsort(-score[rows], kind="stable")]
    return [(int(i), int(suggested[i]), float(score[i])) for i in rows]
