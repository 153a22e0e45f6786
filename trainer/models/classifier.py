"""The classifier: a registered backbone, preprocessing inside the model, a dropout and dense head.

With trainer.models.finetuning, the only modules that know layer names: the feature layer
(`avg_pool`, what the `features` signature serves), the head (`head_dropout`, `head_dense`), and
the views of one network that the phases and the export use (`head_model`, `feature_model`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple
import numpy as np
import tensorflow as tf
import tf_keras as keras
from effnet_common.errors import WeightsError
from trainer.configs import backbones
from trainer.configs.config import Config, Model, is_weights_file
from trainer.models import lite, weights_files
from trainer.models.pretrained import imagenet


FEATURES_LAYER = "avg_pool"


HEAD_LAYER = "head_dense"


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
        weights_files.load_weights_file(model, model_cfg.weights, num_classes=num_classes)
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
        backbone.load_weights(imagenet.imagenet_notop_file(spec.name))
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


def parameter_counts(model: keras.Model) -> Dict[str, int]:
    """Total / trainable / non-trainable parameter counts, as model.summary() reports them."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def leaf_layers(model: keras.Model):
    """Every non-model layer, nested backbones walked into, in network order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def is_multi_label(model: keras.Model) -> bool:
    """True for a classifier whose output layer is a sigmoid per class (multi-label)."""
    return getattr(model.layers[-1], "activation", None) is keras.activations.sigmoid


def embedding_width(model: keras.Model) -> int:
    """D of the pooled embedding."""
    return int(model.get_layer(FEATURES_LAYER).output.shape[-1])


def head_model(model: keras.Model) -> keras.Model:
    """embedding -> class probabilities through the classifier's own dropout and dense layers.

    The layers are shared, not copied: training this model trains the classifier's head (the
    frozen phase on cached embeddings, trainer/training/embeddings.py).
    """
    inputs = keras.Input((embedding_width(model),), name="embedding")
    x = model.get_layer("head_dropout")(inputs)
    return keras.Model(inputs, model.get_layer(HEAD_LAYER)(x), name="head")


def detached_head(model: keras.Model) -> keras.Model:
    """A new head of the classifier's shapes and dtypes ([B, D] embedding -> dropout -> dense),
    sharing no layer or weight with `model`: what the memory plan sizes for the frozen phase on
    cached embeddings, without adding a node to the classifier's layers."""
    inputs = keras.Input((embedding_width(model),), name="embedding")
    dropout, dense = model.get_layer("head_dropout"), model.get_layer(HEAD_LAYER)
    x = type(dropout).from_config(dropout.get_config())(inputs)
    return keras.Model(inputs, type(dense).from_config(dense.get_config())(x), name="head")


def set_head(model: keras.Model, *, kernel, bias) -> None:
    """Sets the classifier's dense head (kernel [D, C], bias [C]): a head fitted outside Keras
    (trainer/training/headfit.py)."""
    model.get_layer(HEAD_LAYER).set_weights([kernel, bias])


def feature_model(model: keras.Model) -> keras.Model:
    """image -> pooled embedding (before dropout): what the `features` signature serves."""
    return keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output)


def feature_map_view(model: keras.Model) -> Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]:
    """pixels (0..255, [N, S, S, 3]) -> (the backbone's last convolutional feature map [N, h, w, K],
    the head's logits [N, C]), for Grad-CAM (trainer/analysis/gradcam.py).

    Both come from one forward pass in inference mode, so a GradientTape around the call gives
    d(logit)/d(feature map). The layer is the registry's `feature_map_layer`; the logits are the
    dense head before its softmax or sigmoid (a probability saturates, and its gradient with it;
    a temperature folded into the head scales them, which Grad-CAM's normalization removes). The
    classifier's layers are called on tensors, not wired into a new functional graph, so the
    model gains no inbound node (`feature_model` still finds one output per layer).
    """
    backbone = backbone_of(model)
    layer = backbones.get(backbone.name).feature_map_layer
    inner = keras.Model(backbone.inputs, [backbone.get_layer(layer).output, backbone.output])
    preprocessing, pool, dense = (model.get_layer(name) for name in ("preprocessing", FEATURES_LAYER, HEAD_LAYER))

    def call(pixels: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        feature_map, top = inner(preprocessing(pixels), training=False)
        return feature_map, tf.matmul(tf.cast(pool(top), dense.kernel.dtype), dense.kernel) + dense.bias
    return call
