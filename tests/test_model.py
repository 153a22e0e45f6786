"""The fine-tuning rules (trainer.models.finetuning), at millisecond speed on the tiny backbone.

`trainable_mask` is what the memory plan reads and `set_trainable` what training applies: the two
must agree layer by layer with what Keras then trains, and computing the mask must leave the
model as it was.
"""
from __future__ import annotations

import pytest

import trainer  # noqa: F401  # TF_USE_LEGACY_KERAS before TensorFlow loads
import tf_keras as keras  # noqa: E402

from effnet_common.errors import WeightsError  # noqa: E402
from trainer.configs import config  # noqa: E402
from trainer.models import classifier, finetuning  # noqa: E402
from trainer.training import memory  # noqa: E402

SIZE = 32
FROZEN = config.Phase(name="frozen", epochs=1, batch_size=8, learning_rate=1e-3, unfreeze="none")
ALL = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-4, unfreeze="all")
TOP1 = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-4, unfreeze="top:1")


@pytest.fixture
def model():
    return classifier.build_classifier(config.Model(backbone="tiny", weights="none"), num_classes=3, image_size=SIZE)


def _flags(net):
    return [(layer.name, layer.trainable) for layer in [net, *classifier.leaf_layers(net)]]


def _trained_by_mask(net, mask):
    return {id(w) for layer in classifier.leaf_layers(net) if mask[id(layer)] for w in layer.weights if w.trainable}


def _trained_by_keras(net):
    return {id(w) for w in net.trainable_weights}


def _trains(net, mask):
    backbone = classifier.backbone_of(net)
    return {layer.name for layer in classifier.leaf_layers(backbone) if mask[id(layer)] and layer.weights}


@pytest.mark.parametrize("phase", [FROZEN, ALL, TOP1], ids=["frozen", "all", "top1"])
@pytest.mark.parametrize("bn", ["frozen", "trainable"])
def test_the_mask_is_what_keras_trains_once_applied(model, phase, bn):
    before = _flags(model)
    mask = finetuning.trainable_mask(model, phase=phase, bn=bn)
    assert _flags(model) == before  # computing the mask changes no flag
    finetuning.set_trainable(model, phase=phase, bn=bn)
    assert _trained_by_keras(model) == _trained_by_mask(model, mask)


def test_frozen_phase_trains_the_head_only(model):
    mask = finetuning.trainable_mask(model, phase=FROZEN, bn="frozen")
    assert _trains(model, mask) == set()
    finetuning.set_trainable(model, phase=FROZEN, bn="frozen")
    head = model.get_layer(classifier.HEAD_LAYER)
    assert _trained_by_keras(model) == {id(w) for w in head.weights}
    assert not classifier.backbone_of(model).trainable  # its BN layers run in inference mode


def test_seed_blog_variant_trains_batch_norm_in_the_frozen_phase(model):
    mask = finetuning.trainable_mask(model, phase=FROZEN, bn="trainable")
    assert _trains(model, mask) == {"stem_bn", "block1a_bn", "block2a_bn", "block2b_bn", "top_bn"}


def test_fine_tuning_all_keeps_batch_norm_frozen(model):
    trains = _trains(model, finetuning.trainable_mask(model, phase=ALL, bn="frozen"))
    assert trains == {"stem_conv", "block1a_conv", "block2a_conv", "block2b_conv", "top_conv"}


def test_top_blocks_open_from_the_first_open_block_on(model):
    assert finetuning.block_names(classifier.backbone_of(model)) == ["block1a", "block2a", "block2b"]
    trains = _trains(model, finetuning.trainable_mask(model, phase=TOP1, bn="frozen"))
    assert trains == {"block2b_conv", "top_conv"}
    trains = _trains(model, finetuning.trainable_mask(model, phase=TOP1, bn="trainable"))
    assert trains == {"block2b_conv", "block2b_bn", "top_conv", "top_bn"}


def test_more_top_blocks_than_the_backbone_has_is_one_clear_error(model):
    phase = config.Phase(name="finetune", epochs=1, batch_size=8, learning_rate=1e-4, unfreeze="top:4")
    with pytest.raises(WeightsError, match=r"--unfreeze=top:4 but tiny has 3 blocks; pass --unfreeze=top:N with N <= 3"):
        finetuning.trainable_mask(model, phase=phase, bn="frozen")


def test_the_estimate_reads_the_mask_and_changes_nothing(model):
    before = _flags(model)
    frozen = memory.estimate_phase(model, phase=FROZEN, bn="frozen")
    finetune = memory.estimate_phase(model, phase=ALL, bn="frozen")
    assert _flags(model) == before
    head = sum(int(w.shape.num_elements()) for w in model.get_layer(classifier.HEAD_LAYER).weights)
    assert frozen.trainable_params == head
    assert finetune.trainable_params > head and finetune.total_params == frozen.total_params
    assert finetune.bytes_per_example > frozen.bytes_per_example  # back-propagation keeps the backbone's activations


def test_the_frozen_phase_on_embeddings_is_planned_for_the_head(model):
    """With the cache the frozen phase trains [B, D] embeddings through the head: its estimate is the
    head's alone (no image input, no accumulation), built apart from the classifier."""
    head = classifier.detached_head(model)
    nodes = len(model.get_layer(classifier.HEAD_LAYER).inbound_nodes)
    estimate = memory.estimate_phase(head, phase=FROZEN, bn="frozen", on_embeddings=True)
    assert len(model.get_layer(classifier.HEAD_LAYER).inbound_nodes) == nodes  # the classifier gained no node
    width = classifier.embedding_width(model)
    assert estimate.total_params == estimate.trainable_params == width * 3 + 3
    assert estimate.activations.input == width * 4  # float32 embeddings, not images
    assert isinstance(head.layers[-1], keras.layers.Dense) and head.layers[-1] is not model.get_layer(classifier.HEAD_LAYER)
