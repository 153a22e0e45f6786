"""When does a temperature fitted on n validation photos make held-out calibration worse?

    python bench/calibration.py [--draws=300] [--per_class=100] [--test_per_class=400] [--seed=0]

Real predictions: EfficientNet-Lite0 from its ImageNet checkpoint at 64 px embeds Fashion-MNIST
photos (Debian's dataset-fashion-mnist; the serving preprocessing, decode_for_eval of PNG bytes):
`per_class` photos a class from the training file, `test_per_class` a class from the official
test file (t10k). Its softmax head is fitted on the training photos' embeddings with plain Adam for
200 epochs and no regularization, as a fine-tuned head is trained: that makes it overconfident,
and its probabilities on the test photos are the pool. Logits are cached in
$TMPDIR/effnet_calibration_bench.npz, so a rerun skips TensorFlow's forward passes (about a
minute on 2 cores) and is numpy alone (about 5 minutes with 300 draws).

Overconfidence levels, read off the pool: T* is the temperature that minimizes the log loss of
the whole pool, so logits / T* is a calibrated model ("x1.00"); "x1.25" ... "x3.00" multiply
those logits by a known factor (a model that many times too confident), "x0.80" is an
underconfident one (label smoothing, mixup), and "trained" is the Adam head itself.

For each level and each validation size n, `draws` random subsets of n pool photos (not
stratified, as a random validation split is not) stand for the validation split. On each, T is
fitted twice: always (calibration.fit_temperature, what training did before the rule) and by
the rule (calibration.fit); the other photos of the pool measure the top-1 ECE (15 bins,
trainer.evaluation.metrics) with each T and without one. Prints per cell and per way: the share of draws
given a T other than 1 (the rule's), the median T, the share of draws where T made held-out ECE
worse, the mean change of that ECE, its 95th percentile and its worst case over the draws.
docs/evaluate.md reads the rule off this table; `--min_examples=0 --sizes=10,20,40,80` shows what
the rule's minimum count guards against.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]

# After the path, as bench/ scripts run from anywhere.
from fashion_mnist_subset import SOURCE, read_idx  # noqa: E402
from trainer.evaluation import calibration, metrics

SIZES = (10, 20, 40, 80, 100, 160, 320)
FACTORS = (0.8, 1.0, 1.25, 1.5, 2.0, 3.0)
IMAGE_SIZE = 64


def _first_per_class(split: str, per_class: int):
    """The first `per_class` photos of each class of a Fashion-MNIST file, in file order."""
    images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return images[rows], labels[rows].astype(np.int64)


def embed(images: np.ndarray) -> np.ndarray:
    """Lite0 ImageNet embeddings of 28x28 grey photos, through the serving preprocessing (PNG bytes
    -> decode_for_eval at 64 px): what the head of a run on these photos would see."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from effnet_common import decode  # pylint: disable=import-outside-toplevel
    from trainer.configs import config
    from trainer.models import classifier
    model = classifier.build_classifier(config.Model(backbone="efficientnet-lite0", weights="imagenet"),
                                       num_classes=10, image_size=IMAGE_SIZE)
    features = classifier.feature_model(model)
    pixels = np.stack([decode.decode_for_eval(tf.io.encode_png(img[..., None]), IMAGE_SIZE).numpy()
                       for img in images])
    return features.predict(pixels, batch_size=64, verbose=0).astype(np.float64)


def train_head(features: np.ndarray, labels: np.ndarray, *, epochs: int = 200, seed: int = 0):
    """(kernel, bias) of a softmax head trained by plain Adam (lr 1e-3, batch 32, no weight decay,
    no label smoothing) until it fits its training photos: the overconfidence of fine-tuning."""
    rng = np.random.default_rng(seed)
    mean, scale = features.mean(axis=0), features.std() + 1e-6
    x = (features - mean) / scale
    w, b = np.zeros((x.shape[1], 10)), np.zeros(10)
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    step = 0
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(x)), max(len(x) // 32, 1)):
            p = _softmax(x[batch] @ w + b)
            p[np.arange(len(batch)), labels[batch]] -= 1
            step += 1
            for i, grad in ((0, x[batch].T @ p / len(batch)), (2, p.mean(axis=0))):
                moments[i] = 0.9 * moments[i] + 0.1 * grad
                moments[i + 1] = 0.999 * moments[i + 1] + 0.001 * grad ** 2
                mean_, var_ = moments[i] / (1 - 0.9 ** step), moments[i + 1] / (1 - 0.999 ** step)
                update = 1e-3 * mean_ / (np.sqrt(var_) + 1e-8)
                if i == 0:
                    w -= update
                else:
                    b -= update
    return w / scale, b - (mean / scale) @ w


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def pool(cache: str, *, per_class: int, test_per_class: int, seed: int):
    """(test logits, test labels, training accuracy): the cached head's outputs on the test photos."""
    if os.path.exists(cache):
        with np.load(cache) as saved:
            if saved["shape"].tolist() == [per_class, test_per_class, seed]:
                return saved["logits"], saved["labels"], float(saved["train_accuracy"])
    train_images, train_labels = _first_per_class("train", per_class)
    test_images, test_labels = _first_per_class("t10k", test_per_class)
    train_features, test_features = embed(train_images), embed(test_images)
    w, b = train_head(train_features, train_labels, seed=seed)
    train_accuracy = float(np.mean((train_features @ w + b).argmax(axis=1) == train_labels))
    logits = test_features @ w + b
    np.savez(cache, logits=logits, labels=test_labels, train_accuracy=train_accuracy,
             shape=np.array([per_class, test_per_class, seed]))
    return logits, test_labels, train_accuracy


def _ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return metrics.expected_calibration_error(confidence=probabilities.max(axis=1),
                                              correct=probabilities.argmax(axis=1) == labels)


def simulate(probabilities: np.ndarray, labels: np.ndarray, *, n: int, draws: int, rng,
             min_examples: int = calibration.MIN_EXAMPLES) -> dict:
    """Fits T on `draws` random subsets of n, always (fit_temperature, the code before the rule)
    and by the rule (calibration.fit), and scores ECE on the rest with each T against none."""
    rows = []
    for _ in range(draws):
        held = np.ones(len(labels), bool)
        chosen = rng.choice(len(labels), n, replace=False)
        held[chosen] = False
        always = calibration.fit_temperature(probabilities[chosen], labels[chosen])
        ruled = calibration.fit(probabilities[chosen], labels[chosen], min_examples=min_examples)["temperature"]
        rest, rest_labels = probabilities[held], labels[held]
        none = _ece(rest, rest_labels)
        rows.append((always, _ece(calibration.scaled(rest, always), rest_labels) - none, ruled,
                     _ece(calibration.scaled(rest, ruled), rest_labels) - none if ruled != 1.0 else 0.0))
    rows = np.array(rows)
    return {"always": _summary(rows[:, 0], rows[:, 1]), "rule": _summary(rows[:, 2], rows[:, 3])}


def _summary(temperatures: np.ndarray, changes: np.ndarray) -> dict:
    return {"fitted": float(np.mean(temperatures != 1.0)), "t_median": float(np.median(temperatures)),
            "worse": float(np.mean(changes > 0)), "mean": float(changes.mean()),
            "p95": float(np.percentile(changes, 95)), "worst": float(changes.max())}


def levels(logits: np.ndarray, labels: np.ndarray) -> dict:
    """name -> pool probabilities: the head as trained, and its calibrated logits times each factor."""
    trained = _softmax(logits)
    best = calibration.fit_temperature(trained, labels)
    out = {f"trained, T*={best:.2f}": trained}
    for factor in FACTORS:
        out[f"x{factor:.2f}"] = _softmax(logits / best * factor)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--test_per_class", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="validation sizes n, comma-separated")
    parser.add_argument("--min_examples", type=int, default=calibration.MIN_EXAMPLES,
                        help="the rule's minimum count (0: the likelihood-ratio test and interval alone)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "effnet_calibration_bench.npz"))
    args = parser.parse_args()
    logits, labels, train_accuracy = pool(args.cache, per_class=args.per_class,
                                          test_per_class=args.test_per_class, seed=args.seed)
    print(f"head: training accuracy {train_accuracy:.3f}; pool: {len(labels)} test photos, "
          f"accuracy {np.mean(logits.argmax(axis=1) == labels):.3f}; {args.draws} draws a cell")
    print(f"{'':31s} | fitted always (before the rule)         | the rule (calibration.fit)")
    print(f"{'level':19s} {'ECE':>5s} {'n':>4s} | {'T med':>5s} {'worse':>5s} {'mean':>6s} {'p95':>6s} {'worst':>6s} | "
          f"{'fitted':>6s} {'T med':>5s} {'worse':>5s} {'mean':>6s} {'p95':>6s} {'worst':>6s}")
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    for name, probabilities in levels(logits, labels).items():
        for n in (int(size) for size in args.sizes.split(",")):
            r = simulate(probabilities, labels, n=n, draws=args.draws, rng=rng, min_examples=args.min_examples)
            a, b = r["always"], r["rule"]
            worst = max(worst, b["worst"])
            print(f"{name:19s} {_ece(probabilities, labels):5.3f} {n:4d} | {a['t_median']:5.2f} {a['worse']:5.0%} "
                  f"{a['mean']:+6.3f} {a['p95']:+6.3f} {a['worst']:+6.3f} | {b['fitted']:6.0%} {b['t_median']:5.2f} "
                  f"{b['worse']:5.0%} {b['mean']:+6.3f} {b['p95']:+6.3f} {b['worst']:+6.3f}", flush=True)
    print(f"the rule's worst change of held-out ECE over every draw: {worst:+.3f}")


if __name__ == "__main__":
    main()
