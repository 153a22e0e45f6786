"""The frozen phase on cached embeddings: same head as streaming, views, the on-disk cache, fallbacks."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainer.configs import config
from trainer.data import pipelines
from trainer.models import classifier
from trainer.runtime import rundir
from trainer.training import embeddings
from tests.testing.presets import REPO_DIR as ROOT

SIZE = 32
# The equivalence is the pipeline's, not the network's: the tiny backbone (a few convolutions
# with BN and swish) makes the three runs seconds each where B0 took a minute in all.
_TINY = ("--backbone=tiny",)


def _data_cfg(records, *, augment="none", eval_data=None, views=4):
    info = json.load(open(os.path.join(records, "dataset.json")))
    return config.Data(train_data=os.path.join(records, "train-*.tfrecord"), eval_data=eval_data,
                       class_names=tuple(info["class_names"]),
                       image_size=SIZE, augment=augment, cache_views=views,
                       num_train_examples=info["splits"]["train"]["num_examples"],
                       num_eval_examples=info["splits"]["validation"]["num_examples"] if eval_data else None)


@pytest.fixture(scope="module")
def one_shard(demo_images, tmp_path_factory):
    """The demo images as one training shard (a fixed read order) and one validation shard."""
    from trainer.data import preparing
    out = tmp_path_factory.mktemp("one_shard")
    preparing.prepare(input_dir=demo_images, output_dir=str(out), validation_fraction=0.25, num_shards=1, seed=0)
    return str(out)


def _train(model_dir, records, cache, *extra, backbone=()):
    env = dict(os.environ, TF_DETERMINISTIC_OPS="1")
    cmd = [sys.executable, "-m", "trainer.task", f"--train_data={records}/train-*.tfrecord",
           f"--model_dir={model_dir}", *backbone, "--weights=none", f"--image_size={SIZE}", "--augment=none",
           "--dropout=0",
           "--frozen_epochs=1", "--finetune_epochs=0", "--frozen_batch_size=8", "--early_stopping_patience=0",
           "--noeval_report", f"--frozen_cache={cache}", "--frozen_head=epochs", "--seed=3", *extra]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _head(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "frozen", "weights"))
    top_level = re.compile(r"^layer_with_weights-\d+/(kernel|bias)/")  # the head; the backbone's are nested
    names = sorted(n for n in reader.get_variable_to_shape_map() if top_level.match(n))
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow
def test_cached_head_equals_streamed_head(tmp_path, one_shard):
    """One epoch without augmentation, same seed and order: the same head weights both ways."""
    streamed, cached = str(tmp_path / "streamed"), str(tmp_path / "cached")
    log_streamed = _train(streamed, one_shard, "off", backbone=_TINY)
    log_cached = _train(cached, one_shard, "on", backbone=_TINY)
    assert "frozen phase streams images: --frozen_cache=off" in log_streamed
    assert "frozen phase on cached embeddings" in log_cached
    a, b = _head(streamed), _head(cached)
    assert a.keys() == b.keys() and len(a) == 2  # the head's kernel and bias; the backbone is frozen
    bias = [name for name in a if "/bias/" in name]
    assert len(bias) == 1 and not np.allclose(a[bias[0]], 0.0)  # it trained: Dense's bias starts at zero
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    history = [json.load(open(os.path.join(d, "history.json"))) for d in (streamed, cached)]
    assert [r["epoch"] for r in history[0]] == [r["epoch"] for r in history[1]] == [1]
    assert history[0][0]["loss"] == pytest.approx(history[1][0]["loss"], rel=1e-4)


def test_views_per_augmentation(one_shard):
    flip = _data_cfg(one_shard, augment="flip")
    images, labels = next(iter(pipelines.build_view_dataset(flip, split="train", views=2, batch_size=4)))
    assert images.shape == (4, 2, SIZE, SIZE, 3) and labels.shape == (4,)
    np.testing.assert_array_equal(images[:, 1].numpy(), images[:, 0].numpy()[:, :, ::-1])
    none = _data_cfg(one_shard, augment="none")
    plain, _ = next(iter(pipelines.build_view_dataset(none, split="train", views=1, batch_size=4)))
    np.testing.assert_array_equal(plain[:, 0].numpy(), images[:, 0].numpy())  # the evaluation crop
    ra = _data_cfg(one_shard, augment="randaugment", views=3)
    views, _ = next(iter(pipelines.build_view_dataset(ra, split="train", views=3, batch_size=4)))
    assert views.shape == (4, 3, SIZE, SIZE, 3)
    assert not np.allclose(views[:, 0].numpy(), views[:, 1].numpy())  # independent random views
    assert pipelines.view_count("none", randaugment_views=3) == 1 and pipelines.view_count("flip", randaugment_views=3) == 2
    assert pipelines.view_count("randaugment", randaugment_views=3) == 3


@pytest.mark.slow
def test_disk_cache_is_written_whole_and_reused(one_shard, tmp_path, monkeypatch):
    cfg = _data_cfg(one_shard, augment="flip", eval_data=os.path.join(one_shard, "validation-*.tfrecord"))
    model_cfg = config.Model(backbone="efficientnet-b0", weights="none")
    model = classifier.build_classifier(model_cfg, num_classes=4, image_size=SIZE)
    strategy = tf.distribute.get_strategy()
    kwargs = dict(data_cfg=cfg, model_cfg=model_cfg, views=2, strategy=strategy, run_dir=rundir.RunDir(str(tmp_path)), verbose=False)
    in_memory = embeddings.build_caches(model, memory_budget=1 << 40, **kwargs)
    on_disk = embeddings.build_caches(model, memory_budget=0, **kwargs)
    train_mem, train_disk = in_memory["train"][0], on_disk["train"][0]
    assert (train_mem.where, train_disk.where) == ("memory", "disk")
    assert train_mem.count == train_disk.count == cfg.num_train_examples and train_mem.views == 2
    folder = os.path.join(str(tmp_path), "embeddings", "train-00000-of-00001")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["count"] == cfg.num_train_examples and manifest["files"]
    # The disk records hold the in-memory embeddings in float16, in the same order.
    disk = embeddings.build_dataset(train_disk, batch_size=train_disk.count, training=False, seed=0)
    mem = embeddings.build_dataset(train_mem, batch_size=train_mem.count, training=False, seed=0)
    (xd, yd), (xm, ym) = next(iter(disk)), next(iter(mem))
    np.testing.assert_array_equal(yd.numpy(), ym.numpy())
    np.testing.assert_allclose(xd.numpy(), xm.numpy(), rtol=2e-3, atol=2e-3)

    def no_compute(*args, **kw):
        raise AssertionError("the cache should have been reused")
    monkeypatch.setattr(embeddings, "_compute", no_compute)
    again = embeddings.build_caches(model, memory_budget=0, **kwargs)
    assert again["train"][0].files == train_disk.files and again["eval"][0].count == cfg.num_eval_examples
    # A folder without its manifest (a job killed while caching) is never read.
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(AssertionError, match="reused"):
        embeddings.build_caches(model, memory_budget=0, **kwargs)


def test_training_draws_one_view_per_example(one_shard):
    cache = embeddings.Cache(count=6, views=2, dim=3, labels=np.arange(6, dtype=np.int32),
                             embeddings=np.stack([np.full((6, 3), 1.0), np.full((6, 3), 2.0)], 1).astype(np.float32))
    x, y = next(iter(embeddings.build_dataset(cache, batch_size=6, training=True, seed=0)))
    assert sorted(y.numpy().tolist()) == list(range(6))  # each example once per epoch
    assert set(np.unique(x.numpy())) <= {1.0, 2.0} and x.shape == (6, 3)
    x_eval, _ = next(iter(embeddings.build_dataset(cache, batch_size=6, training=False, seed=0)))
    assert np.all(x_eval.numpy() == 1.0)  # evaluation: the first view


def test_where_the_cache_does_not_apply():
    assert embeddings.applies(setting="auto", bn="frozen", tpu=False)[0]
    off, why = embeddings.applies(setting="off", bn="frozen", tpu=False)
    assert not off and "--frozen_cache=off" in why
    trainable, why = embeddings.applies(setting="auto", bn="trainable", tpu=False)
    assert not trainable and "--bn=trainable" in why
    tpu, why = embeddings.applies(setting="auto", bn="frozen", tpu=True)
    assert not tpu and "TPUStrategy" in why
    base = dict(data=config.Data(train_data="x", eval_data=None, class_names=("a", "b"), image_size=SIZE),
                model=config.Model(backbone="efficientnet-b0", weights="none", bn="trainable"),
                phases=(config.Phase(name="frozen", epochs=1, batch_size=8, learning_rate=1e-3),))
    with pytest.raises(config.ConfigError, match="--frozen_cache=on needs --bn=frozen"):
        config.Config(runtime=config.Runtime(model_dir="m", frozen_cache="on"), **base)


def test_an_empty_share_of_a_batch_keeps_the_embedding_width():
    """A replica's share of a last, short batch can be empty (MirroredStrategy): its embeddings
    are [0, V, D], not [0, V, D / V], so they concatenate with the other batches'."""
    from tests.testing.presets import TINY, TINY_SIZE
    model = classifier.build_classifier(config.Model(backbone=TINY, weights="none"), num_classes=3, image_size=TINY_SIZE)
    embed = embeddings._embedder(model, strategy=tf.distribute.get_strategy())  # pylint: disable=protected-access
    width = classifier.embedding_width(model)
    for count in (0, 3):
        out, _ = embed(tf.zeros([count, 2, TINY_SIZE, TINY_SIZE, 3]), tf.zeros([count], tf.int32))
        assert tuple(out.shape) == (count, 2, width)
