"""Input pipelines: TFRecord shards or image folders -> batches of (images 0..255, labels).

Only the tf.data pipelines live here (`build_dataset`, `build_view_dataset`); the pieces they
are built from have their own modules: trainer.data.discovery finds the files and class names,
effnet_common.decode turns bytes into pixels (`decode_for_eval`, the single preprocessing source of
evaluation and serving), trainer.data.randaugment augments, trainer.data.skips counts the records a
pipeline drops. An image folder with one subfolder per class is read through the same decode
and augment functions as TFRecord shards, so the two inputs train alike.

Images leave the pipeline as float32 in 0..255, not normalized: each backbone normalizes inside
the model, so the exported SavedModel stands alone.

This module builds datasets only: it imports neither the model nor the strategy.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from absl import logging
import tensorflow as tf

from effnet_common import decode as decode_lib
from trainer.data import discovery, skips, targets
from trainer.data.discovery import DataError
from trainer.data.randaugment import rand_augment
from trainer.runtime import devices

# Range of the per-element random draw that seeds the stateless crop, flip and RandAugment.
_SEED_RANGE = 2 ** 62
# The share of the available RAM that the decoded crops of a training run's splits may hold
# (`--cache_pixels`): what is left covers the model, the shuffle buffer and tf.data's buffers.


def _records(files: List[str], *, training: bool, input_context, seed: int) -> tf.data.Dataset:
    """Serialized records, sharded per input pipeline: by file when there
    are at least as many files as pipelines (no pipeline reads bytes it throws away), else by
    record after a deterministic interleave (every pipeline must see the same order)."""
    n = input_context.num_input_pipelines if input_context else 1
    i = input_context.input_pipeline_id if input_context else 0
    by_record = n > 1 and len(files) < n
    if n > 1 and not by_record:
        files = files[i::n]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and not by_record:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_still_there)
    deterministic = not training or by_record
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.shard(n, i) if by_record else ds


def _still_there(path: tf.Tensor) -> tf.Tensor:
    """The shard's path, or an error (which `ignore_errors` downstream drops, with a warning
    that names it) when the file is gone since the run listed it. Without this a vanished shard
    would hang the job: `TFRecordDataset` retries opening it on every call, `ignore_errors`
    calls again, forever. Costs one file lookup per shard and pass."""
    present = tf.size(tf.io.matching_files(path)) > 0
    message = tf.strings.join([path, " is gone since the run listed it: its records are skipped"])
    with tf.control_dependencies([tf.debugging.Assert(present, [message])]):
        return tf.identity(path)


def _image_files(paths: List[str], labels: List[int], *, training: bool, input_context,
                 seed: int) -> tf.data.Dataset:
    """(file bytes, label) of an image folder, sharded by file per input pipeline."""
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    if input_context and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda p, l: (tf.io.read_file(p), l), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=not training)


def _decode_counted(ds: tf.data.Dataset, *, unpack, decode, counter: skips.SkipCounter,
                    num_classes: int, multi_label: bool, training: bool, seed: int) -> tf.data.Dataset:
    """Decodes every element; one whose image fails to decode, or whose labels are not what
    the data holds (exactly one label in [0, C) single-label, zero or more in [0, C)
    multi-label), is dropped and stays recorded in `counter`.

    The failing map call raises (a failed decode, or the label assertion) and `ignore_errors`
    drops that element: the cheap way. A per-element fallback dataset cost ~0.5 ms per image,
    a quarter of a decode; a filter stage after the map ~0.1 ms. Its price: `ignore_errors`
    also drops an element when reading its file fails (tf.data logs it), and would wait forever
    on a shard deleted mid-run (`_still_there` turns that into one dropped, logged error).

    Parsing happens in this same map, and each element's random seed comes from a stateful
    draw here rather than a zipped `Dataset.random`: every extra tf.data stage cost 0.1-0.3 ms
    per image on this 2-core machine. Stateless ops then make the crop, flip and RandAugment
    of an element independent draws from that one seed.

    Args:
      unpack: element -> (image bytes, 0-based int64 labels [n]).
      decode: (image bytes, seed) -> image.

    Labels leave as int32 (single-label) or a float32 multi-hot [C] (multi-label).
    """
    def fn(*element):
        image_bytes, labels = unpack(*element)
        ok = tf.reduce_all(tf.logical_and(labels >= 0, labels < num_classes))
        if not multi_label:
            ok = tf.logical_and(ok, tf.size(labels) == 1)
        key, image_bytes = counter.enter(image_bytes, ok)
        image = decode(image_bytes, _draw(seed))
        target = (targets.multi_hot(labels, num_classes) if multi_label
                  else tf.cast(tf.concat([labels, [-1]], 0)[0], tf.int32))
        return counter.leave(key, image), target

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return ds.ignore_errors(log_warning=True)


def _draw(seed: int) -> tf.Tensor:
    """An element's random seed [2]: a stateful draw, the one random stage of a pipeline."""
    return tf.random.uniform([2], minval=0, maxval=_SEED_RANGE, dtype=tf.int64, seed=seed)


def pixel_cache_bytes(data_cfg, *, pipelines: int = 1) -> Optional[int]:
    """Bytes the decoded crops of a training run's splits would take in one input pipeline's
    memory; None where `--cache_pixels` cannot serve: it is off, the crops change between
    epochs (augment crop or randaugment) or an example count is unknown.

    Every pass decodes an image to the same pixels with augment none or flip (the evaluation
    crop, kept as uint8 [S, S, 3]) and in validation (kept as float32, exactly what serving
    computes). `pixel_cache_kept_bytes` says whether they fit in their share of the host's RAM
    (`devices.PIXEL_CACHE_SHARE`): tf.data's guide advises a cache after an expensive map where the result
    fits in memory.
    """
    if not data_cfg.cache_pixels or data_cfg.augment not in ("none", "flip"):
        return None
    counts = [(data_cfg.num_train_examples, 1)]
    if data_cfg.eval_data:
        counts.append((data_cfg.num_eval_examples, 4))
    if any(count is None for count, _ in counts):
        return None
    side = data_cfg.image_size
    return sum(-(-count // pipelines) * side * side * 3 * depth for count, depth in counts)


def pixel_cache_kept_bytes(data_cfg, *, pipelines: int = 1) -> int:
    """Host RAM the pixel cache will keep in one input pipeline: its size where it serves and fits
    its share (`devices.PIXEL_CACHE_SHARE`), else 0. The CPU memory plan leaves it out of its budget."""
    size = pixel_cache_bytes(data_cfg, pipelines=pipelines)
    return size if size is not None and size <= devices.ram_share(devices.PIXEL_CACHE_SHARE) else 0


def _keeps_pixels(data_cfg, split: str, input_context) -> bool:
    """Whether the pixel cache serves this pipeline; the training split's call logs why."""
    size = pixel_cache_bytes(data_cfg, pipelines=input_context.num_input_pipelines if input_context else 1)
    if size is None:
        return False
    budget = devices.ram_share(devices.PIXEL_CACHE_SHARE)
    splits = "training and validation" if data_cfg.eval_data else "training"
    if split == "train" and size <= budget:
        logging.info("--cache_pixels: the decoded %s crops stay in memory after the first epoch (%.0f MB): "
                     "later epochs neither read nor decode", splits, size / 2 ** 20)
    elif split == "train":
        logging.info("--cache_pixels: the decoded %s crops (%.0f MB) exceed a quarter of the available RAM "
                     "(%.0f MB): every epoch decodes", splits, size / 2 ** 20, 4 * budget / 2 ** 20)
    return size <= budget


def _source(data_cfg, *, path: str, what: str, training: bool, input_context):
    """The elements of a TFRecord glob or an image folder, and the function that turns one
    into (image bytes, 0-based labels [n])."""
    if discovery.is_image_folder(path):
        paths, labels = discovery.list_image_files(path, class_names=data_cfg.class_names, what=what)
        ds = _image_files(paths, labels, training=training, input_context=input_context,
                          seed=data_cfg.seed)
        return ds, lambda image_bytes, label: (image_bytes, label[None])
    ds = _records(discovery.list_record_files(path, what=what), training=training,
                  input_context=input_context, seed=data_cfg.seed)

    def parse(serialized):
        feats = tf.io.parse_single_example(serialized, discovery.RECORD_FEATURES)
        return feats["image/encoded"], feats[discovery.LABEL_KEY].values - data_cfg.label_offset

    return ds, parse


def _split_path(data_cfg, split: str) -> Tuple[str, str]:
    """The data path of a split and the flag that named it (for messages); DataError when empty."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    what = "--train_data" if split == "train" else "--eval_data"
    path = data_cfg.train_data if split == "train" else data_cfg.eval_data
    if not path:
        raise DataError(f"{what} is empty: pass a TFRecord glob or an image folder")
    return path, what


def build_dataset(data_cfg, *, split: str, batch_size: int, input_context=None,
                  repeat: bool = False, drop_remainder: bool = False,
                  ram_budget_mb: Optional[int] = None,
                  skip_counters: Optional[skips.SkipCounters] = None,
                  epochs: int = 1) -> tf.data.Dataset:
    """The input pipeline of one split.

    list files -> shard per input pipeline -> parallel interleaved reads -> (cache) -> shuffle ->
    (repeat) -> decode (training: Inception random crop decoding only the crop; eval: center
    crop) -> augment -> batch -> prefetch. Undecodable records are skipped and counted
    (trainer.data.skips: `skipped_records`, `SkippedRecordsLogger`).

    Where the decoded crop of an image is the same every pass (evaluation, and training with
    augment none or flip) and the caller reads the split more than once, the crops are kept
    in memory after the first pass (`pixel_cache_bytes` says when): decode -> cache ->
    shuffle -> (repeat) -> mirror -> batch, so later passes neither read nor decode.

    Args:
      data_cfg: a `config.Data`.
      split: 'train' (data_cfg.train_data, shuffled and augmented) or 'eval'
        (data_cfg.eval_data, deterministic order and center crop).
      batch_size: the batch size this dataset yields: with `input_context`, the per-replica
        size (`input_context.get_per_replica_batch_size(global_batch_size)`), as
        `strategy.distribute_datasets_from_function` expects.
      input_context: a `tf.distribute.InputContext`, or None for one pipeline.
      repeat: repeat forever (then set steps_per_epoch) rather than one pass per iteration.
      drop_remainder: static batch shapes, e.g. for TPUs.
      ram_budget_mb: tf.data autotune's RAM budget (default: tf.data's own, half the RAM).
      skip_counters: the registry that counts the skipped records (a training run's own;
        default: the process's, `skips.DEFAULT_COUNTERS`).
      epochs: the passes the caller makes over the split (a training phase's epochs, for its
        training and validation data); from 2, the pixel cache may serve the later ones.

    Returns:
      Dataset of (images float32 [B, S, S, 3] in 0..255, labels int32 [B]) -- labels float32
      multi-hot [B, C] with multi-label data; training batches gain per-example weights [B]
      as a third element with class weights.

    Raises:
      DataError: missing or empty path, a glob matching nothing, an unknown class folder.
    """
    training = split == "train"
    path, what = _split_path(data_cfg, split)
    ds, unpack = _source(data_cfg, path=path, what=what, training=training,
                         input_context=input_context)
    keep_pixels = epochs > 1 and _keeps_pixels(data_cfg, split, input_context)
    decode_args = dict(unpack=unpack, counter=skips.counter_for(split, path, skip_counters),
                       num_classes=len(data_cfg.class_names), multi_label=data_cfg.multi_label,
                       training=training, seed=data_cfg.seed)
    if keep_pixels:
        crop = _train_crop if training else decode_lib.decode_for_eval
        ds = _decode_counted(ds, decode=lambda image_bytes, seed: crop(image_bytes, data_cfg.image_size),
                             **decode_args).cache()
    elif data_cfg.cache_records:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(data_cfg.shuffle_buffer, seed=data_cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if not keep_pixels:
        ds = _decode_counted(ds, decode=_decoder(data_cfg, training=training), **decode_args)
    elif training and data_cfg.augment == "flip":
        ds = ds.map(lambda image, target: (decode_lib.random_flip(image, _draw(data_cfg.seed)), target),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=not training)
    if training:
        weights = data_cfg.class_weights
        ds = ds.map(lambda x, y: _to_float(x, y, weights), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(training=training, ram_budget_mb=ram_budget_mb,
                                    sharded=input_context is not None))


def build_view_dataset(data_cfg, *, split: str, views: int, batch_size: int,
                       input_context=None, skip_counters: Optional[skips.SkipCounters] = None) -> tf.data.Dataset:
    """Every image of a split once, in a fixed order, as `views` preprocessed views each.

    What the frozen phase's embedding cache is computed from: no shuffle and no repeat, the
    records in the order the training pipeline reads them before its shuffle (so a cache can
    replay that shuffle), sharded per input pipeline like `build_dataset`, skipped records
    counted the same way.

    Views: augment=none gives the evaluation crop (rounded to uint8, as the training pipeline
    reads it); flip that crop and its mirror; crop and randaugment `views` random training
    views (random crop, flip, RandAugment with randaugment), each an independent draw from the
    element's seed. The eval split always gives the evaluation crop.

    Returns:
      Dataset of (images float32 [B, V, S, S, 3] in 0..255, labels int32 [B]).
    """
    training = split == "train"
    path, what = _split_path(data_cfg, split)
    ds, unpack = _source(data_cfg, path=path, what=what, training=False, input_context=input_context)
    decode = _view_decoder(data_cfg, views=views if training else 1, training=training)
    ds = _decode_counted(ds, unpack=unpack, decode=decode, counter=skips.counter_for(split, path, skip_counters),
                         num_classes=len(data_cfg.class_names), multi_label=data_cfg.multi_label,
                         training=False, seed=data_cfg.seed)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(
        _options(training=False, ram_budget_mb=None, sharded=input_context is not None))


def view_count(augment: str, *, randaugment_views: int) -> int:
    """Views cached per training image: 1 without augmentation, 2 with flip, K random ones with
    crop or randaugment."""
    return {"none": 1, "flip": 2}.get(augment, randaugment_views)


def _view_decoder(data_cfg, *, views: int, training: bool):
    """(image bytes, seed) -> float32 [V, S, S, 3]: the views `build_view_dataset` describes."""
    size, mode = data_cfg.image_size, data_cfg.augment
    random_view = _decoder(data_cfg, training=True)

    def decode(image_bytes, seed):
        if training and mode in ("crop", "randaugment"):
            seeds = tf.random.experimental.stateless_split(seed, views)
            return tf.map_fn(lambda s: tf.cast(random_view(image_bytes, s), tf.float32), seeds,
                             fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        if not training:
            return decode_lib.decode_for_eval(image_bytes, size)[None]
        image = tf.cast(_train_crop(image_bytes, size), tf.float32)
        if mode == "flip":
            return tf.stack([image, tf.reverse(image, axis=[1])])
        return image[None]

    return decode


def _decoder(data_cfg, *, training: bool):
    """(image bytes, seed) -> one image, by --augment: none, the evaluation crop; flip, the
    evaluation crop or its mirror (exactly the views the frozen phase caches); crop, an
    Inception-style random crop and flip (the ImageNet recipe, for large datasets); randaugment,
    that plus RandAugment. Evaluation: `decode_for_eval`, the serving preprocessing."""
    size, mode = data_cfg.image_size, data_cfg.augment

    def train(image_bytes, seed):
        crop_seed, flip_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        if mode in ("none", "flip"):
            image = _train_crop(image_bytes, size)
            return image if mode == "none" else decode_lib.random_flip(image, flip_seed)
        image = decode_lib.decode_for_train(image_bytes, size, crop_seed)
        if mode == "randaugment":
            image = rand_augment(image, seed=augment_seed)
        return decode_lib.random_flip(decode_lib.to_uint8(image), flip_seed)

    def evaluate(image_bytes, seed):
        del seed
        return decode_lib.decode_for_eval(image_bytes, size)

    return train if training else evaluate


def _train_crop(image_bytes, size: int) -> tf.Tensor:
    """The evaluation crop as a training image (augment none or flip): rounded to uint8 like
    every training image, so the flip and the batch move a quarter of the bytes. The frozen
    phase's cached views are these same pixels."""
    return decode_lib.to_uint8(decode_lib.decode_for_eval(image_bytes, size))


def _to_float(images, labels, class_weights):
    """uint8 training batch -> float32, once per batch; with class weights, each example's
    weight joins the batch (trainer/data/targets.py), in this same stage."""
    images = tf.cast(images, tf.float32)
    if not class_weights:
        return images, labels
    return images, labels, targets.example_weights(labels, class_weights)


def _options(*, training: bool, ram_budget_mb: Optional[int], sharded: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = not training
    options.autotune.enabled = True
    if ram_budget_mb:
        options.autotune.ram_budget = int(ram_budget_mb) * 1024 * 1024
    if sharded:  # sharded here, per input_context: a strategy must not shard again
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
