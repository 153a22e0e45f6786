"""The frozen phase's head as a cross-validated probe: the classifier a practitioner would fit.

With the backbone frozen, the head (dropout, then one dense softmax layer) on the cached pooled
embeddings is multinomial logistic regression: a convex problem. Trained for a number of epochs
with Adam at a fixed batch, it was measured far from converged on small data (Fashion-MNIST, 20
photos a class: 0.29 held-out accuracy after early stopping, where scikit-learn's
LogisticRegressionCV on the same embeddings reached 0.78), since an epoch of 160 examples is 3
steps. So where the embeddings are in memory, this module solves it instead:

1. standardize the embeddings (their mean and spread on the training split), so one L2 strength
   fits every backbone's scale;
2. choose the L2 strength by k-fold cross-validation on the training split (folds by image,
   stratified; every view of an image in the same fold), scoring held-out log loss, which
   rewards a calibrated head, not only a right one; the same grid and rule as scikit-learn's
   LogisticRegressionCV (C in logspace(-4, 4), the objective C * sum(log loss) + |W|^2 / 2);
3. refit on every training example and view with that strength (L-BFGS, scipy), and fold the
   standardization into the dense layer, so the model and its export need nothing new.

The validation split is not used to choose anything here: it stays what fine-tuning and the
temperature are chosen on. Pure numpy and scipy, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import optimize

from trainer.evaluation import metrics

# scikit-learn's LogisticRegressionCV default: Cs=10, logspace(-4, 4).
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 10))
FOLDS = 5
MAX_ITERATIONS = 150
# Cross-validation on at most this many images (drawn stratified); the refit uses all.
MAX_CV_EXAMPLES = 4000


@dataclasses.dataclass(frozen=True)
class HeadFit:
    """A fitted head, ready for the dense layer: kernel [D, C], bias [C], and how it was chosen."""
    kernel: np.ndarray
    bias: np.ndarray
    c: float
    cv_log_loss: float
    cv_accuracy: float
    folds: int


def fit_head(embeddings: np.ndarray, labels: np.ndarray, *, num_classes: int,
             weights: Optional[np.ndarray] = None, seed: int = 0, grid: Sequence[float] = C_GRID) -> HeadFit:
    """The cross-validated logistic-regression head of cached embeddings.

    Args:
      embeddings: float [N, V, D], V views of each of N images (a view is an augmented copy).
      labels: int [N], class indices.
      num_classes: C (classes absent from the data keep a bias far below the others).
      weights: optional float [N] per-example weights (class weights).
      seed: the folds' draw.
      grid: the C values tried.

    Returns:
      The head in the embeddings' own scale (standardization folded in).
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels, np.int64)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    mean = embeddings.reshape(-1, embeddings.shape[-1]).mean(axis=0)
    scale = embeddings.reshape(-1, embeddings.shape[-1]).std(axis=0) + 1e-6
    x = (embeddings - mean) / scale
    folds = _folds(labels, seed=seed)
    c, loss, accuracy = _choose_c(x, labels, weights, folds=folds, num_classes=num_classes, grid=grid)
    kernel, bias = _solve(_flat(x), np.repeat(labels, x.shape[1]), np.repeat(weights, x.shape[1]),
                          c=c / x.shape[1], num_classes=num_classes)
    kernel = kernel / scale[:, None]
    bias = bias - mean @ kernel
    return HeadFit(kernel.astype(np.float32), bias.astype(np.float32), c=c, cv_log_loss=loss, cv_accuracy=accuracy,
                   folds=int(folds.max()) + 1 if len(folds) else 0)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _folds(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """A fold number per image, stratified by class (each class dealt round-robin after a
    shuffle); -1 for images left out of cross-validation (beyond MAX_CV_EXAMPLES)."""
    rng = np.random.default_rng(seed)
    folds = np.full(len(labels), -1)
    keep = min(1.0, MAX_CV_EXAMPLES / max(len(labels), 1))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        members = members[:max(FOLDS, int(round(len(members) * keep)))]
        folds[members] = np.arange(len(members)) % FOLDS
    return folds


def _choose_c(x, labels, weights, *, folds, num_classes, grid) -> Tuple[float, float, float]:
    """The C with the lowest cross-validated log loss, with that loss and the accuracy it goes
    with. C grows along the grid, each fit warm-started from the previous one; the path stops
    once the loss has risen twice in a row (it is unimodal in practice, and large Cs, which
    fit slowest, are then never needed)."""
    used = folds >= 0
    if not used.any():
        return 1.0, float("nan"), float("nan")
    views = x.shape[1]
    problems = {fold: _Problem(_flat(x[used & (folds != fold)]), np.repeat(labels[used & (folds != fold)], views),
                               np.repeat(weights[used & (folds != fold)], views), num_classes=num_classes)
                for fold in range(int(folds.max()) + 1)}
    losses, accuracies = [], []
    for c in grid:
        loss, correct = 0.0, 0
        for fold, problem in problems.items():
            kernel, bias = problem.solve(c / views)
            held = folds == fold
            log_p = metrics.log_softmax(x[held][:, 0] @ kernel + bias)
            loss -= float(np.sum(weights[held] * log_p[np.arange(held.sum()), labels[held]]))
            correct += int(np.sum(log_p.argmax(axis=1) == labels[held]))
        losses.append(loss / weights[used].sum())
        accuracies.append(correct / used.sum())
        if len(losses) >= 3 and losses[-1] > losses[-2] > losses[-3]:
            break
    best = int(np.argmin(losses))
    return float(grid[best]), float(losses[best]), float(accuracies[best])


class _Problem:
    """One training set's logistic regression, solved for any C (`solve`), warm-started.

    With fewer rows than dimensions the solution lies in the span of the rows (the representer
    theorem: the penalty is L2), so it is solved exactly in the coordinates of that span,
    x = Z V^T with V orthonormal: W = V B and |W| = |B|. The basis is computed once per set.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, num_classes: int):
        self.basis = None
        if x.shape[0] < x.shape[1]:
            _, singular, vt = np.linalg.svd(x, full_matrices=False)
            self.basis = vt[singular > singular[0] * 1e-10].T  # [D, r]
            x = x @ self.basis
        self.x, self.y, self.w, self.num_classes = x.astype(np.float32), y, w, num_classes
        self._last = None

    def solve(self, c: float) -> Tuple[np.ndarray, np.ndarray]:
        """argmin over (W, b) of c * sum_i w_i * log loss_i + |W|^2 / 2 (the bias unpenalized),
        by L-BFGS from the previous solution."""
        kernel, bias = _lbfgs(self.x, self.y, self.w, c=c, num_classes=self.num_classes, start=self._last)
        self._last = (kernel, bias)
        return (self.basis @ kernel if self.basis is not None else kernel), bias


def _solve(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, c: float, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    return _Problem(x, y, w, num_classes=num_classes).solve(c)


def _lbfgs(x, y, w, *, c, num_classes, start):
    dim = x.shape[1]
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    cw = (c * w).astype(np.float32)[:, None]

    def objective(theta):
        kernel = theta[:dim * num_classes].reshape(dim, num_classes).astype(np.float32)
        log_p = metrics.log_softmax(x @ kernel + theta[dim * num_classes:].astype(np.float32))
        residual = cw * (np.exp(log_p) - onehot)
        loss = -float(np.sum(cw * onehot * log_p)) + 0.5 * float(np.sum(kernel.astype(np.float64) ** 2))
        grad = np.concatenate([(x.T @ residual + kernel).ravel(), residual.sum(axis=0)]).astype(np.float64)
        return loss, grad

    theta0 = (np.zeros(dim * num_classes + num_classes) if start is None
              else np.concatenate([np.asarray(start[0]).ravel(), start[1]]).astype(np.float64))
    result = optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B",
                               options={"maxiter": MAX_ITERATIONS, "ftol": 1e-6, "gtol": 1e-4})
    theta = result.x
    return theta[:dim * num_classes].reshape(dim, num_classes), theta[dim * num_classes:]
