"""The frozen phase on cached embeddings: the backbone runs once per image view, not per epoch.

In the frozen phase the backbone is a fixed function (its weights do not train and its
BatchNormalization runs in inference mode), so its pooled embedding of an image view never
changes. This module computes the embeddings once (the "bottleneck" cache of TF Hub's
image-retraining script, arXiv-free folklore made tf.data-scale here) and the phase then trains
the head -- the classifier's own dropout and dense layers, shared, so the full model holds the
result -- on them. One epoch of the head costs about what a forward pass of a batch costs, so
the phase can train to convergence.

Views (data.build_view_dataset): 1 per image without augmentation, the image and its mirror with
`--augment=flip`, K random training views with randaugment; each epoch draws one view per image.
Validation images get one view (the evaluation crop), cached too, so early stopping is free.

Where the cache lives: in memory when it fits its share of the host's RAM (`devices.EMBEDDING_CACHE_SHARE`),
else as float16 TFRecord shards under MODEL_DIR/cache/<split>-<pipeline>/, written shard by
shard with a manifest written last (the commit point) and reused by a restarted or rerun job
whose manifest key matches. Each input pipeline (each worker under MultiWorkerMirroredStrategy)
caches its own shard of the data; the embeddings are computed in replica context, so no
variable read is a cross-worker collective.

Where it does not apply -- `--bn=trainable` (BN in training mode is no fixed function),
TPUStrategy, `--frozen_cache=off` -- the frozen phase streams images as before (`applies`
says why, and train.py logs it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable, Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras

from effnet_common import fileio, progress
from trainer.data import pipelines, targets
from trainer.evaluation import metrics
from trainer.models import classifier
from trainer.runtime import distribute
from trainer.runtime.rundir import RunDir
from trainer.training import headfit

MANIFEST = "manifest.json"
EXAMPLES_PER_SHARD = 4096
EMBED_BATCH = 64


@dataclasses.dataclass
class Cache:
    """The embeddings of one split for one input pipeline.

    Attributes:
      embeddings: float32 [N, V, D] in memory, or None when on disk.
      labels: int32 [N] (float32 multi-hot [N, C] with multi-label data) in memory, or None
        when on disk.
      files: the float16 TFRecord shards when on disk.
      count / views / dim: examples, views per example, embedding width.
      label_width: C for multi-hot labels, 0 for integer labels.
    """
    count: int
    views: int
    dim: int
    embeddings: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    files: Tuple[str, ...] = ()
    label_width: int = 0

    @property
    def where(self) -> str:
        return "memory" if self.embeddings is not None else "disk"


def applies(*, setting: str, bn: str, tpu: bool) -> Tuple[bool, str]:
    """Whether the frozen phase trains on cached embeddings, and why (or why not); the memory
    plan asks (`PhasePlan.on_embeddings`), training follows."""
    if setting == "off":
        return False, "--frozen_cache=off"
    if bn == "trainable":
        return False, "--bn=trainable: BatchNormalization trains in this phase, so the backbone is no fixed function"
    if tpu:
        return False, "TPUStrategy: the cache needs dynamic shapes and host-side arrays"
    return True, "the backbone is frozen and in inference mode"


def cache_bytes(*, examples: int, views: int, dim: int) -> int:
    """Memory an in-memory cache of `examples` takes (float32)."""
    return examples * views * dim * 4


def build_caches(model: keras.Model, *, data_cfg, model_cfg, views: int, strategy: tf.distribute.Strategy,
                 run_dir: RunDir, memory_budget: int, verbose: bool,
                 skip_counters=None) -> Dict[str, Dict[int, Cache]]:
    """The train (and eval, when given) caches of every local input pipeline; records that do not
    decode are counted in `skip_counters` (the run's; default: the process's).

    Returns:
      {"train": {pipeline_id: Cache}, "eval": {...}}: what `dataset_fn` serves.
    """
    splits = ["train"] + (["eval"] if data_cfg.eval_data else [])
    caches: Dict[str, Dict[int, Cache]] = {}
    embed = _embedder(model, strategy=strategy)
    for split in splits:
        split_views = views if split == "train" else 1
        examples = data_cfg.num_train_examples if split == "train" else data_cfg.num_eval_examples
        dim = classifier.embedding_width(model)
        in_memory = cache_bytes(examples=examples or 0, views=split_views, dim=dim) <= memory_budget
        caches[split] = {}

        def dataset_fn(ctx, split=split, split_views=split_views):
            return pipelines.build_view_dataset(data_cfg, split=split, views=split_views,
                                           batch_size=ctx.get_per_replica_batch_size(EMBED_BATCH * ctx.num_replicas_in_sync),
                                           input_context=ctx, skip_counters=skip_counters)

        for ctx in _local_contexts(strategy):
            key = _key(data_cfg, model_cfg, split=split, views=split_views, ctx=ctx)
            folder = run_dir.embeddings_dir(f"{split}-{ctx.input_pipeline_id:05d}-of-{ctx.num_input_pipelines:05d}")
            cache = None if in_memory else _reuse(folder, key)
            if cache is None:
                ds = strategy.distribute_datasets_from_function(dataset_fn)
                steps = -(-(examples or 0) // (EMBED_BATCH * strategy.num_replicas_in_sync)) or None
                cache = _compute(ds, embed=embed, strategy=strategy, views=split_views, dim=dim,
                                 label_width=data_cfg.num_classes if data_cfg.multi_label else 0,
                                 folder=None if in_memory else folder, key=key, steps=steps, verbose=verbose,
                                 title=f"caching {split} embeddings")
            caches[split][ctx.input_pipeline_id] = cache
            logging.info("frozen phase: %s cache of %d %s image(s) x %d view(s), %d-d, in %s%s", split, cache.count,
                         split, cache.views, cache.dim, cache.where, "" if in_memory else f" ({folder})")
    return caches


def _local_contexts(strategy: tf.distribute.Strategy) -> List[tf.distribute.InputContext]:
    """The input contexts this process builds pipelines for (one per worker)."""
    if not distribute.is_multi_worker(strategy):
        workers, worker = 1, 0
    else:
        resolver = strategy.cluster_resolver
        workers = strategy.extended._num_workers  # pylint: disable=protected-access
        worker = int(resolver.task_id or 0) + (1 if resolver.task_type == "worker" and "chief" in
                                               resolver.cluster_spec().as_dict() else 0)
    return [tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                       num_replicas_in_sync=strategy.num_replicas_in_sync)]


def _embedder(model: keras.Model, *, strategy: tf.distribute.Strategy) -> Callable:
    """A tf.function: distributed (images [B, V, S, S, 3], labels) -> per-replica (embeddings [B, V, D], labels).

    It runs in replica context, where reading a variable synchronized on read (BN statistics
    under MultiWorkerMirroredStrategy) is the local copy, not a collective: each worker may
    embed a different number of batches.
    """
    features = classifier.feature_model(model)

    def replica_fn(images, labels):
        shape = tf.shape(images)
        flat = tf.reshape(images, tf.concat([[-1], shape[2:]], 0))
        embedded = tf.cast(features(flat, training=False), tf.float32)
        # The width named, not -1: a replica's share of a last, short batch can be empty, and
        # reshaping no elements to [0, V, -1] infers the width as D / V.
        return tf.reshape(embedded, tf.concat([shape[:2], tf.shape(embedded)[1:]], 0)), labels

    @tf.function
    def embed(images, labels):
        return strategy.run(replica_fn, args=(images, labels))
    return embed


def _compute(ds, *, embed: Callable, strategy, views: int, dim: int, label_width: int, folder: Optional[str],
             key: str, steps: Optional[int], verbose: bool, title: str) -> Cache:
    """Runs the backbone over the views once; keeps the result in memory or writes shards."""
    writer = _ShardWriter(folder) if folder else None
    chunks: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    # A live bar on a terminal; in a log, a line at each tenth (effnet_common.progress).
    bar = progress.Progress(steps, label=title, unit="batch") if verbose else None
    logging.info("%s", title)
    for images, y in ds:
        out_e, out_y = embed(images, y)
        for e, l in zip(strategy.experimental_local_results(out_e), strategy.experimental_local_results(out_y)):
            e, l = e.numpy(), l.numpy()
            if writer:
                writer.write(e, l)
            else:
                chunks.append(e)
                labels.append(l)
        if bar:
            bar.add(1)
    if bar:
        bar.close()
    if writer:
        return writer.close(key=key, views=views, dim=dim, label_width=label_width)
    emb = np.concatenate(chunks) if chunks else np.zeros((0, views, dim), np.float32)
    dtype, shape = (np.float32, (0, label_width)) if label_width else (np.int32, (0,))
    lab = np.concatenate(labels).astype(dtype) if labels else np.zeros(shape, dtype)
    return Cache(count=len(lab), views=views, dim=dim, embeddings=emb, labels=lab, label_width=label_width)


class _ShardWriter:
    """float16 TFRecord shards of (embedding [V*D], label or multi-hot [C]) in one folder, then its manifest.

    The manifest is written last, atomically: a folder without one (a job killed while caching)
    is recomputed, never read half-written.
    """

    def __init__(self, folder: str):
        self.folder, self.files, self.count, self._writer, self._in_shard = folder, [], 0, None, 0
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)
        tf.io.gfile.makedirs(folder)

    def write(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        for e, l in zip(embeddings.astype(np.float16), labels):
            if self._writer is None or self._in_shard >= EXAMPLES_PER_SHARD:
                self._next_shard()
            feature = {"embedding": tf.train.Feature(bytes_list=tf.train.BytesList(value=[e.tobytes()])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(l).astype(np.int64)))}
            self._writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            self._in_shard += 1
            self.count += 1

    def _next_shard(self) -> None:
        if self._writer:
            self._writer.close()
        self.files.append(fileio.join(self.folder, f"shard-{len(self.files):05d}.tfrecord"))
        self._writer, self._in_shard = tf.io.TFRecordWriter(self.files[-1]), 0

    def close(self, *, key: str, views: int, dim: int, label_width: int) -> Cache:
        if self._writer:
            self._writer.close()
        names = [f.rsplit("/", 1)[-1] for f in self.files]
        fileio.write_json_atomic(fileio.join(self.folder, MANIFEST),
                                 {"key": key, "count": self.count, "views": views, "dim": dim, "files": names,
                                  "label_width": label_width})
        return Cache(count=self.count, views=views, dim=dim, files=tuple(self.files), label_width=label_width)


def _reuse(folder: str, key: str) -> Optional[Cache]:
    """The cache a previous attempt of the same run wrote in `folder`, or None."""
    path = fileio.join(folder, MANIFEST)
    if not fileio.exists(path):
        return None
    manifest = fileio.read_json(path)
    files = tuple(fileio.join(folder, name) for name in manifest["files"])
    if manifest.get("key") != key or not all(fileio.exists(f) for f in files):
        return None
    logging.info("frozen phase: reusing the embedding cache in %s", folder)
    return Cache(count=manifest["count"], views=manifest["views"], dim=manifest["dim"], files=files,
                 label_width=manifest.get("label_width", 0))


def _key(data_cfg, model_cfg, *, split: str, views: int, ctx) -> str:
    """What the embeddings depend on: data, backbone and its weights, views and the shard."""
    ident = {"split": split, "views": views, "pipeline": [ctx.input_pipeline_id, ctx.num_input_pipelines],
             "data": data_cfg.train_data if split == "train" else data_cfg.eval_data,
             "label_offset": data_cfg.label_offset, "classes": list(data_cfg.class_names),
             "multi_label": data_cfg.multi_label,
             "image_size": data_cfg.image_size, "augment": data_cfg.augment, "seed": data_cfg.seed,
             "backbone": model_cfg.backbone, "weights": model_cfg.weights}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def build_dataset(cache: Cache, *, batch_size: int, training: bool, seed: int, repeat: bool = True,
                  class_weights: Optional[Tuple[float, ...]] = None) -> tf.data.Dataset:
    """Batches of (embedding float32 [B, D], label) from a cache, repeated unless `repeat` is False;
    with `class_weights`, each example's weight as a third element (trainer/data/targets.py).

    Training: a new shuffle of the examples each epoch (a full shuffle in memory; the shards and
    a 10,000-example buffer on disk) and one view drawn per example. The in-memory order is the
    one the streaming pipeline gives a single shard with the same seed, so the two paths train
    the same head.
    """
    if cache.embeddings is not None:
        ds = _memory_examples(cache, training=training, seed=seed)
    else:
        ds = _disk_examples(cache, training=training, seed=seed)
    ds = (ds.repeat() if repeat else ds).batch(batch_size)

    def pick(e, l):
        e = _pick_view(e, training=training, seed=seed)
        return (e, l) if not class_weights else (e, l, targets.example_weights(l, class_weights))
    ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _memory_examples(cache: Cache, *, training: bool, seed: int) -> tf.data.Dataset:
    embeddings, labels = tf.constant(cache.embeddings), tf.constant(cache.labels)
    ds = tf.data.Dataset.range(cache.count)
    if training:
        ds = ds.shuffle(max(cache.count, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda i: (tf.gather(embeddings, i), tf.gather(labels, i)))


def _disk_examples(cache: Cache, *, training: bool, seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(list(cache.files))
    if training:
        ds = ds.shuffle(len(cache.files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(cache.files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)

    width = cache.label_width
    spec = {"embedding": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([width] if width else [], tf.int64)}

    def parse(record):
        feats = tf.io.parse_single_example(record, spec)
        emb = tf.reshape(tf.io.decode_raw(feats["embedding"], tf.float16), [cache.views, cache.dim])
        return tf.cast(emb, tf.float32), tf.cast(feats["label"], tf.float32 if width else tf.int32)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)


def _pick_view(embeddings: tf.Tensor, *, training: bool, seed: int) -> tf.Tensor:
    """[B, V, D] -> [B, D]: a random view per example in training, the first otherwise."""
    views = embeddings.shape[1]
    if not training or views == 1:
        return embeddings[:, 0]
    index = tf.random.uniform(tf.shape(embeddings)[:1], 0, views, dtype=tf.int32, seed=seed)
    return tf.gather(embeddings, index, axis=1, batch_dims=1)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def datasets_fn(caches: Dict[str, Dict[int, Cache]], *, strategy: tf.distribute.Strategy, seed: int,
                eval_examples: Optional[int], class_weights: Optional[Tuple[float, ...]] = None):
    """batch_size -> (train, eval or None, eval steps or None), distributed as train.py's image
    pipelines are (`distribute.train_and_eval_datasets`)."""
    def build(split: str, ctx, batch: int, repeat: bool):
        training = split == "train"
        return build_dataset(caches[split][ctx.input_pipeline_id], batch_size=batch, training=training, seed=seed,
                             repeat=repeat, class_weights=class_weights if training else None)

    def datasets(batch_size: int):
        return distribute.train_and_eval_datasets(build, strategy=strategy, batch_size=batch_size,
                                                  has_eval="eval" in caches, eval_examples=eval_examples)
    return datasets


def image_embedder(model: keras.Model) -> Callable[[tf.Tensor], np.ndarray]:
    """The frozen phase's embedding function for a tool that embeds each image once, outside
    training (trainer.audit): images float32 [B, S, S, 3] in 0..255 -> pooled embeddings
    float32 [B, D] (numpy), the backbone in inference mode, under the default strategy."""
    embed = _embedder(model, strategy=tf.distribute.get_strategy())

    def run(images: tf.Tensor) -> np.ndarray:
        embedded, _ = embed(images[:, None], tf.zeros(tf.shape(images)[:1], tf.int32))
        return embedded.numpy()[:, 0]
    return run


def probe_applies(caches: Dict[str, Dict[int, Cache]], *, setting: str, multi_label: bool,
                  strategy: tf.distribute.Strategy) -> Tuple[bool, str]:
    """Whether the frozen phase's head is fitted as a cross-validated probe (trainer/training/headfit.py), and why not."""
    if setting != "probe":
        return False, f"--frozen_head={setting}"
    if distribute.is_multi_worker(strategy):
        return False, "several workers: each holds its own shard of the embeddings"
    if multi_label:
        return False, "multi-label data: the probe fits one softmax head"
    if len(caches["train"]) != 1 or any(c.embeddings is None for split in caches.values() for c in split.values()):
        return False, "the embeddings are on disk or spread over workers; the probe needs them in one process's memory"
    return True, "the embeddings are in memory"


def fit_probe_head(model: keras.Model, caches: Dict[str, Dict[int, Cache]], *, num_classes: int, seed: int,
                   class_weights: Optional[Tuple[float, ...]] = None) -> dict:
    """Fits the classifier's head as a cross-validated probe on the cached training embeddings
    and sets it; returns the phase's history record (loss and accuracy on the training images'
    first view, and on the validation cache when there is one) with how the L2 strength was chosen."""
    train = caches["train"][0]
    weights = np.asarray(class_weights, np.float64)[train.labels] if class_weights else None
    fit = headfit.fit_head(train.embeddings, train.labels, num_classes=num_classes, weights=weights, seed=seed)
    classifier.set_head(model, kernel=fit.kernel, bias=fit.bias)
    record = {"phase": "frozen", "epoch": 1}
    for prefix, split in (("", "train"), ("val_", "eval")):
        cache = caches.get(split, {}).get(0)
        loss, accuracy = _scores(cache, fit) if cache is not None and cache.count else (None, None)
        record[prefix + "loss"], record[prefix + "accuracy"] = loss, accuracy
    record.update(probe_c=fit.c, probe_cv_log_loss=fit.cv_log_loss, probe_cv_accuracy=fit.cv_accuracy,
                  probe_folds=fit.folds)
    return record


def _scores(cache: Cache, fit: "headfit.HeadFit") -> Tuple[float, float]:
    """(log loss, accuracy) of a fitted head on a cache's first views."""
    log_p = metrics.log_softmax(cache.embeddings[:, 0].astype(np.float64) @ fit.kernel + fit.bias)
    labels = cache.labels.astype(np.int64)
    return float(-log_p[np.arange(len(labels)), labels].mean()), float((log_p.argmax(axis=1) == labels).mean())
