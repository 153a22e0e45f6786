"""The classifier: a registered backbone, preprocessing inside the model, and a softmax head.

The only module that knows layer names. `set_trainable` encodes the fine-tuning rules once:
which layers train in which phase, and that BatchNormalization stays in inference mode unless
the user asks for the seed blog's variant (`bn="trainable"`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Dict, List, Optional

import h5py
import numpy as np
import tf_keras as keras

from effnet_common import fileio
from trainer import backbones, lite, pretrained
from trainer.config import Config, ConfigError, Model, Phase, is_weights_file
from effnet_common.errors import WeightsError
from trainer.rundir import RunDir

FEATURES_LAYER = "avg_pool"
HEAD_LAYER = "head_dense"
_BLOCK_RE = re.compile(r"^(block\d+[a-z]+)_")
# ImageNet statistics of the `efficientnet` package's preprocess_input (mode="torch").
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def build_classifier(model_cfg: Model, *, num_classes: int, image_size: int, multi_label: bool = False,
                     drop_connect_rate: Optional[float] = None) -> keras.Model:
    """Builds image (0..255 float pixels) -> class probabilities, with the backbone nested.

    The input is [image_size, image_size, 3]; the head is a softmax over `num_classes` classes,
    or with `multi_label` an independent sigmoid per class. A run takes the three from its data
    (`classifier_for`).

    The backbone is one nested layer so that `backbone.trainable` flips it as a whole. With
    `bn="frozen"` it is called with `training=False`, so its BatchNormalization layers (and
    drop-connect) run in inference mode in every phase, as the Keras transfer-learning guide
    recommends; with `bn="trainable"` it follows the training flag, which is what lets the
    seed blog's trainable BN layers update their statistics. `drop_connect_rate` overrides an
    `efficientnet`-package backbone's stochastic depth (it has no weights: files still fit).
    """
    spec = backbones.get(model_cfg.backbone)
    size = image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = _preprocessing(spec)(inputs)
    backbone = _build_backbone(spec, image_size=size, weights=model_cfg.weights, drop_connect_rate=drop_connect_rate)
    x = backbone(x, training=False if model_cfg.bn == "frozen" else None)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(model_cfg.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="sigmoid" if multi_label else "softmax",
                                 dtype="float32", name=HEAD_LAYER)(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}-classifier")
    if is_weights_file(model_cfg.weights):
        load_weights_file(model, model_cfg.weights, num_classes=num_classes)
    return model


def classifier_for(cfg: Config, *, weights: Optional[str] = None) -> keras.Model:
    """The classifier of a run: `cfg.model`'s network in the shape of `cfg.data` (its image size,
    classes and label kind); `weights` overrides `cfg.model.weights` (e.g. "none" to restore)."""
    model_cfg = cfg.model if weights is None else dataclasses.replace(cfg.model, weights=weights)
    return build_classifier(model_cfg, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size,
                            multi_label=cfg.data.multi_label)


def _preprocessing(spec: backbones.BackboneSpec) -> keras.layers.Layer:
    """Pixel normalization as a layer, so the export needs nothing outside the graph."""
    if spec.preprocessing == "builtin":
        return keras.layers.Identity(name="preprocessing")
    if spec.preprocessing == "lite":
        return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocessing")
    return keras.layers.Normalization(
        mean=[255.0 * m for m in _IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in _IMAGENET_STD], name="preprocessing")


def _build_backbone(spec: backbones.BackboneSpec, *, image_size: int, weights: str,
                    drop_connect_rate: Optional[float] = None) -> keras.Model:
    if spec.family == "tiny":
        return build_tiny_backbone(image_size=image_size, width=spec.width, name=spec.name)
    if spec.family == "lite":
        return _build_lite(spec, image_size=image_size, weights=weights, drop_connect_rate=drop_connect_rate)
    named = weights if weights in spec.named_weights else None
    kwargs = dict(include_top=False, weights=named, input_shape=(image_size, image_size, 3))
    if spec.family == "efficientnet":
        import efficientnet.tfkeras as efn  # pylint: disable=import-outside-toplevel
        constructor = getattr(efn, spec.constructor)
        if drop_connect_rate is not None:
            kwargs["drop_connect_rate"] = drop_connect_rate
    else:
        constructor = getattr(keras.applications, spec.constructor)
        kwargs["include_preprocessing"] = True
    try:
        backbone = constructor(**kwargs)
    except Exception as e:  # pylint: disable=broad-except  # the download is the only thing that fails here
        if named is None:
            raise
        raise WeightsError(
            f"could not download the {named} weights of {spec.name} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}); on a machine without internet, stage the notop weights "
            f"file (backbone.save_weights('x.h5') format) and pass --weights=PATH or gs://BUCKET/x.h5") from None
    backbone._name = spec.name  # pylint: disable=protected-access  # a stable name to find it by
    return backbone


def _build_lite(spec: backbones.BackboneSpec, *, image_size: int, weights: str,
                drop_connect_rate: Optional[float]) -> keras.Model:
    """A Lite network; its ImageNet weights through the converted notop file (Lite0-2 offline)."""
    kwargs = {} if drop_connect_rate is None else {"drop_connect_rate": drop_connect_rate}
    backbone = lite.build_backbone(spec.name, image_size=image_size, **kwargs)
    if weights == "imagenet":
        backbone.load_weights(pretrained.imagenet_notop_file(spec.name))
    return backbone


def build_tiny_backbone(*, image_size: int, width: int, name: str = "tiny") -> keras.Model:
    """A few-layer stand-in for an EfficientNet: the `tiny` preset of plumbing tests and smoke runs.

    stem (stride 2) -> block1a -> block2a (stride 2) -> block2b (residual) -> top (1x1 to
    `width` channels), each a bias-free convolution, BatchNormalization and swish named as
    EfficientNet names its layers (`stem_conv`, `block2a_bn`, `top_activation`, ...). So
    `block_names`, `--unfreeze=top:N`, the BN rules, the memory walk and notop HDF5 files treat
    it as they treat B0, at a few thousand parameters and a few milliseconds a step at 32 px.
    """
    inputs = keras.Input((image_size, image_size, 3), name="input")
    x = _tiny_unit(inputs, "stem", filters=8, kernel=3, strides=2)
    x = _tiny_unit(x, "block1a", filters=8, kernel=3)
    x = _tiny_unit(x, "block2a", filters=16, kernel=3, strides=2)
    x = keras.layers.Add(name="block2b_add")([x, _tiny_unit(x, "block2b", filters=16, kernel=3)])
    x = _tiny_unit(x, "top", filters=width, kernel=1)
    return keras.Model(inputs, x, name=name)


def _tiny_unit(x, prefix: str, *, filters: int, kernel: int, strides: int = 1):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
    return keras.layers.Activation("swish", name=f"{prefix}_activation")(x)


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model of a classifier built by `build_classifier`."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def load_weights_file(model: keras.Model, path: str, *, num_classes: int) -> None:
    """Loads a Keras HDF5 weights file: the backbone's notop weights or a whole classifier's.

    A notop file (`backbone.save_weights('x.h5')`, the format of the official downloads) goes
    into the backbone; a file saved from a whole classifier of this package (it holds our head
    layer) goes into the whole model, so a previous run can be a starting point. A gs:// file
    is read through a temporary local copy, removed afterwards.
    """
    if not fileio.exists(path):
        raise WeightsError(f"--weights={path} does not exist; pass imagenet, none, or the path of a weights file")
    local = fileio.local_copy(path, suffix=".h5")
    try:
        _load_local_weights(model, local, path=path, num_classes=num_classes)
    finally:
        if local != path:
            os.remove(local)


def _load_local_weights(model: keras.Model, local: str, *, path: str, num_classes: int) -> None:
    try:
        with h5py.File(local, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs.get("layer_names", [])]
            head_classes = _head_classes(f) if HEAD_LAYER in names else None
    except (OSError, KeyError) as e:
        raise WeightsError(f"--weights={path} is not a Keras HDF5 weights file ({e}); pass the file "
                           "that backbone.save_weights('x.h5') writes") from None
    if head_classes is not None and head_classes != num_classes:
        raise WeightsError(f"--weights={path} is a classifier for {head_classes} classes but the data has "
                           f"{num_classes}; pass the backbone's notop weights file instead")
    target = model if head_classes is not None else backbone_of(model)
    try:
        target.load_weights(local)
    except (ValueError, KeyError) as e:
        raise WeightsError(f"--weights={path} does not fit {target.name} ({str(e).splitlines()[0][:160]}); "
                           "pass a notop weights file saved from the same backbone") from None


def _head_classes(f: "h5py.File") -> Optional[int]:
    group = f[HEAD_LAYER]
    for name in group.attrs.get("weight_names", []):
        name = name.decode() if isinstance(name, bytes) else name
        if "kernel" in name:
            return int(group[name].shape[-1])
    return None


def block_names(backbone: keras.Model) -> List[str]:
    """EfficientNet block prefixes (block1a, block2a, ...) in network order."""
    seen: Dict[str, None] = {}
    for layer in backbone.layers:
        match = _BLOCK_RE.match(layer.name)
        if match:
            seen.setdefault(match.group(1))
    return list(seen)


def set_trainable(model: keras.Model, *, phase: Phase, bn: str) -> None:
    """Applies the phase's fine-tuning rules; the caller must recompile afterwards.

    frozen: only the head trains (with bn="trainable", the backbone's BN layers too — the seed
    blog's workaround, kept for comparison). finetune: all of the backbone, or its top N blocks
    and the layers after them, trains; BN layers stay frozen unless bn="trainable".
    """
    backbone = backbone_of(model)
    top = phase.top_blocks
    backbone.trainable = True
    if top == 0:
        for layer in backbone.layers:
            layer.trainable = bn == "trainable" and _is_bn(layer)
        if bn == "frozen":
            backbone.trainable = False
        return
    if top is not None:
        _freeze_below_top_blocks(backbone, top)
    if bn == "frozen":
        for layer in backbone.layers:
            if _is_bn(layer):
                layer.trainable = False


@contextlib.contextmanager
def trainable_flags_kept(model: keras.Model):
    """Restores every layer's `trainable` flag on exit: a look at another phase's rules (the
    memory estimate) leaves the model as it found it."""
    layers = [model, *_all_layers(model)]
    saved = [layer.trainable for layer in layers]
    try:
        yield model
    finally:
        for layer, flag in zip(layers, saved):
            layer.trainable = flag


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _freeze_below_top_blocks(backbone: keras.Model, top: int) -> None:
    blocks = block_names(backbone)
    if top > len(blocks):
        raise WeightsError(f"--unfreeze=top:{top} but {backbone.name} has {len(blocks)} blocks; "
                           f"pass --unfreeze=top:N with N <= {len(blocks)}, or --unfreeze=all")
    first_open = blocks[len(blocks) - top]
    opened = False
    for layer in backbone.layers:
        match = _BLOCK_RE.match(layer.name)
        if match and match.group(1) == first_open:
            opened = True
        layer.trainable = opened


def _is_bn(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def parameter_counts(model: keras.Model) -> Dict[str, int]:
    """Total / trainable / non-trainable parameter counts, as model.summary() reports them."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


@contextlib.contextmanager
def precision_policy(name: Optional[str]):
    """Keras' global dtype policy set to `name` inside the block (unchanged for None or "none")
    and restored on exit: a run's mixed precision does not leak into what runs after it."""
    previous = keras.mixed_precision.global_policy()
    if name and name != "none":
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_float32_copy(model: keras.Model, model_cfg: Model) -> keras.Model:
    """The same network and weights in float32, for export after mixed-precision training."""
    with precision_policy("float32"):
        copy = build_classifier(_without_weights(model_cfg), num_classes=int(model.output_shape[-1]),
                                image_size=int(model.input_shape[1]), multi_label=is_multi_label(model))
    copy_weights(src=model, dst=copy)
    return copy


def copy_weights(*, src: keras.Model, dst: keras.Model) -> None:
    """Copies layer by layer: a model's flat weight order depends on its trainable flags."""
    for a, b in zip(leaf_layers(src), leaf_layers(dst)):
        b.set_weights(a.get_weights())


def leaf_layers(model: keras.Model):
    """Every non-model layer, nested backbones walked into, in network order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def _without_weights(model_cfg: Model) -> Model:
    return dataclasses.replace(model_cfg, weights="none")


def is_multi_label(model: keras.Model) -> bool:
    """True for a classifier whose output layer is a sigmoid per class (multi-label)."""
    return getattr(model.layers[-1], "activation", None) is keras.activations.sigmoid


def embedding_width(model: keras.Model) -> int:
    """D of the pooled embedding."""
    return int(model.get_layer(FEATURES_LAYER).output.shape[-1])


def head_model(model: keras.Model) -> keras.Model:
    """embedding -> class probabilities through the classifier's own dropout and dense layers.

    The layers are shared, not copied: training this model trains the classifier's head (the
    frozen phase on cached embeddings, trainer/embeddings.py).
    """
    inputs = keras.Input((embedding_width(model),), name="embedding")
    x = model.get_layer("head_dropout")(inputs)
    return keras.Model(inputs, model.get_layer(HEAD_LAYER)(x), name="head")


def set_head(model: keras.Model, *, kernel, bias) -> None:
    """Sets the classifier's dense head (kernel [D, C], bias [C]): a head fitted outside Keras
    (trainer/headfit.py)."""
    model.get_layer(HEAD_LAYER).set_weights([kernel, bias])


def feature_model(model: keras.Model) -> keras.Model:
    """image -> pooled embedding (before dropout): what the `features` signature serves."""
    return keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output)


def restore_trained_model(model_dir: str, checkpoint: Optional[str] = None) -> "tuple[keras.Model, Config]":
    """The float32 classifier of a finished (or partly finished) run, from its config.json and a
    checkpoint (default: the last finished phase's).

    Raises:
      ConfigError: `model_dir` holds no run, or no finished phase and no `checkpoint` is given.
    """
    run = RunDir(model_dir)
    cfg = run.read_config()
    if cfg is None:
        raise ConfigError(f"{run.path('config.json')} not found: --model_dir must be the folder a training run wrote")
    done = run.read_state()
    if checkpoint is None and not done:
        raise ConfigError(f"{model_dir} has no finished phase yet: pass --checkpoint=PREFIX or train first")
    model = classifier_for(cfg, weights="none")
    model.load_weights(checkpoint or list(done.values())[-1]).expect_partial()
    return model, cfg
