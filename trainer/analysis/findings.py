"""What a data audit finds in image embeddings: duplicates and suspect labels, in pure numpy.

No I/O and no TensorFlow: `trainer.audit` reads the data, embeds it (the frozen phase's
embedding function) and writes the files; these functions only look at arrays, so each is
tested and measured on its own. Similarity is the cosine of L2-normalized pooled embeddings.

- Exact duplicates share a fingerprint of their decoded pixels (byte-identical files decode
  to the same pixels, so one key covers both).
- Near duplicates (a re-encoded, resized or mirrored copy) pass two independent checks: the
  embeddings are neighbours with a cosine of at least `CANDIDATE_THRESHOLD`, and small grey
  thumbnails of the whole images (trainer.analysis.thumbnails) correlate at least `PIXEL_THRESHOLD`,
  as they are or one mirrored. The embedding alone cannot tell a copy from a look-alike: on
  the repository's real photos a copy re-encoded as JPEG scores as low as 0.81, one halved in
  size 0.66, while distinct look-alike products reach 0.95; the thumbnails of those copies
  correlate >= 0.995 and those of distinct photos <= 0.990 (docs/data.md, "Auditing a dataset";
  bench/audit_copies.py). The same rule finds the training copies of an evaluation split for
  the run's report (`nearest_copies`), whatever network made the embeddings.
- A suspect label is one for which another label has more evidence: the mean of two
  out-of-sample class distributions, the vote of the image's nearest neighbours
  (leave-one-out, its own duplicates left out too) and a cross-validated linear probe
  (softmax regression, its folds keeping duplicates together). Score: 1 - that evidence for
  the given label.
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from trainer.evaluation import metrics

# Rows of the similarity matrix computed at once: about 128 MB of float32 with 100,000 images.
_BLOCK_ELEMENTS = 2 ** 25
# A near copy: an embedding neighbour at or above this cosine (a gate below every copy measured)...
CANDIDATE_THRESHOLD = 0.6
# ...whose thumbnail correlates at least this much (copies >= 0.995, distinct photos <= 0.990).
PIXEL_THRESHOLD = 0.993
_PAIR_BLOCK = 2 ** 14  # thumbnail pairs compared at once: 64 MB a side at 32 x 32 float32


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    x = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(unit: np.ndarray, *, k: int, reference: Optional[np.ndarray] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """The k most similar rows of `reference` (default: the other rows of `unit`) for each row of
    `unit`, by cosine, most similar first.

    Exact, in blocks of rows, so memory stays near `_BLOCK_ELEMENTS` floats whatever N is;
    time is N^2 D (about a minute for 100,000 x 1280 on a few cores).

    Args:
      unit: [N, D] L2-normalized embeddings.
      k: neighbours per row (clipped to the rows there are to find).
      reference: [M, D] L2-normalized embeddings to search (an evaluation split's training
        copies); None searches `unit` itself, leaving each row out of its own neighbours.

    Returns:
      (indices int64 [N, k] into `reference` (or `unit`), similarities float32 [N, k]).
    """
    n, own = len(unit), reference is None
    reference = unit if own else reference
    k = max(0, min(k, len(reference) - own))
    indices, sims = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k == 0:
        return indices, sims
    block = max(1, _BLOCK_ELEMENTS // max(len(reference), 1))
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        s = unit[rows] @ reference.T
        if own:
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


def thumbnail_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of thumbnails a[i] and b[i] ([N, S, S]), the larger of b as it is and
    b mirrored: training flips images by default (--augment=flip), so a mirrored copy is a
    picture the model learned."""
    a, b = _centred(a), _centred(b)
    return np.maximum(np.einsum("nij,nij->n", a, b), np.einsum("nij,nij->n", a, b[:, :, ::-1]))


def _centred(thumbnails: np.ndarray) -> np.ndarray:
    """float32 [N, S, S], each thumbnail less its mean and scaled to unit norm (a flat one stays 0)."""
    x = np.asarray(thumbnails, np.float32)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    return x / np.maximum(np.sqrt(np.square(x).sum(axis=(1, 2), keepdims=True)), 1e-6)


def copy_mask(indices: np.ndarray, sims: np.ndarray, *, threshold: float,
              thumbnails: Optional[np.ndarray] = None, reference_thumbnails: Optional[np.ndarray] = None,
              pixel_threshold: float = PIXEL_THRESHOLD) -> np.ndarray:
    """Which neighbours (from `nearest_neighbours`) are near copies: bool [N, k].

    The one rule of the audit's duplicates and the report's training copies: a cosine of at
    least `threshold`, confirmed (with `thumbnails`, [N, S, S] of the rows; the neighbours' in
    `reference_thumbnails`, default the same) by a thumbnail correlation of at least
    `pixel_threshold`. Without thumbnails (or with a pixel threshold of -1), the cosine alone decides.
    """
    mask = sims >= threshold
    if thumbnails is None or pixel_threshold <= -1.0:
        return mask
    reference = thumbnails if reference_thumbnails is None else reference_thumbnails
    rows, cols = np.nonzero(mask)
    for start in range(0, len(rows), _PAIR_BLOCK):
        r, c = rows[start:start + _PAIR_BLOCK], cols[start:start + _PAIR_BLOCK]
        weak = thumbnail_similarity(thumbnails[r], reference[indices[r, c]]) < pixel_threshold
        mask[r[weak], c[weak]] = False
    return mask


def near_duplicate_pairs(indices: np.ndarray, sims: np.ndarray, *, threshold: float,
                         groups: Optional[np.ndarray] = None, thumbnails: Optional[np.ndarray] = None,
                         pixel_threshold: float = PIXEL_THRESHOLD) -> List[Tuple[int, int, float]]:
    """Pairs (i, j, similarity), i < j, of neighbours that `copy_mask` calls copies, each once,
    most similar first; with `groups` (of the exact copies: `duplicate_groups`), none inside a group.

    From `nearest_neighbours`: an image with more than k near copies shows its k closest.
    """
    found: Dict[Tuple[int, int], float] = {}
    mask = copy_mask(indices, sims, threshold=threshold, thumbnails=thumbnails, pixel_threshold=pixel_threshold)
    for i, c in zip(*np.nonzero(mask)):
        j = indices[i, c]
        if groups is None or groups[i] != groups[j]:
            found[int(min(i, j)), int(max(i, j))] = float(sims[i, c])
    return sorted(((a, b, s) for (a, b), s in found.items()), key=lambda t: (-t[2], t[0], t[1]))


def nearest_copies(unit: np.ndarray, reference: np.ndarray, *, thumbnails: np.ndarray,
                   reference_thumbnails: np.ndarray, k: int = 10, threshold: float = CANDIDATE_THRESHOLD,
                   pixel_threshold: float = PIXEL_THRESHOLD) -> Tuple[np.ndarray, np.ndarray]:
    """For each row of `unit`, its most similar near copy among the k nearest rows of `reference`
    (`copy_mask`: the audit's rule), so a run's report counts the evaluation images the audit
    would pair with a training image.

    Returns:
      (index into `reference` int64 [N], -1 where none is a copy; cosine float32 [N], NaN there).
    """
    indices, sims = nearest_neighbours(unit, k=k, reference=reference)
    mask = copy_mask(indices, sims, threshold=threshold, thumbnails=thumbnails,
                     reference_thumbnails=reference_thumbnails, pixel_threshold=pixel_threshold)
    if not mask.shape[1]:  # nothing to search
        return np.full(len(unit), -1, np.int64), np.full(len(unit), np.nan, np.float32)
    found, first, rows = mask.any(axis=1), np.argmax(mask, axis=1), np.arange(len(unit))
    return (np.where(found, indices[rows, first], -1).astype(np.int64),
            np.where(found, sims[rows, first], np.nan).astype(np.float32))


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
        grad = metrics.softmax(x @ yw + yb) - onehot
        w_prev, b_prev = w, b
        w = yw - (x.T @ grad / n + l2 * yw) / lipschitz
        b = yb - grad.mean(axis=0) / lipschitz
    return w, b


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
        probs[held] = metrics.softmax(((unit[held] - mean) / scale) @ w + b)
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
