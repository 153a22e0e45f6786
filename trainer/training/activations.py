"""The activation walk: which tensors one training step holds, per example, for the memory plan.

The model is flattened to its leaf layer calls in execution order, each tensor a size per
example (at its dtype: mixed precision halves them). Which tensors the backward pass keeps
follows TensorFlow's registered gradients: a convolution or dense layer keeps its input only when
its kernel trains (the input's gradient needs the kernel alone); batch normalization keeps its
input (FusedBatchNormGrad reads it, also in inference mode); the `efficientnet` package's swish
(x * sigmoid(x), two ops under tf_keras) keeps its input and the sigmoid; a multiply keeps the
other operand; add, pooling, reshape and padding keep nothing. Layers before the first one that
trains keep nothing: the gradient never reaches them. trainer/training/memory.py turns the result into a
phase's estimate; bench/memory.py compares it with measured peaks (docs/memory.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras


# ---------------------------------------------------------------------------------------------
# The graph: leaf layer calls in execution order, tensors as sizes per example.


@dataclasses.dataclass(frozen=True)
class _Call:
    """One leaf layer call of the (flattened) model: tensor keys in, tensor keys out."""
    layer: keras.layers.Layer
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    trainable: bool  # the layer has weights that train in this phase


def _ordered_nodes(model: keras.Model) -> List[Any]:
    return [node for depth in sorted(model._nodes_by_depth, reverse=True)  # pylint: disable=protected-access
            for node in model._nodes_by_depth[depth] if not node.is_input]  # pylint: disable=protected-access


def _flat_calls(model: keras.Model, *, alias: Dict[int, int], sizes: Dict[int, int],
                mask: Optional[Mapping[int, bool]], parent_trainable: bool = True) -> List[_Call]:
    """The leaf calls of a functional model, nested functional models flattened in place; a leaf
    trains by `mask` (trainer.models.finetuning.trainable_mask) or, without one, by its flags."""
    calls: List[_Call] = []
    for node in _ordered_nodes(model):
        layer = node.layer
        ins = tuple(alias.get(id(t), id(t)) for t in node.keras_inputs)
        outs = tuple(tf.nest.flatten(node.outputs))
        for t in outs:
            sizes[id(t)] = _bytes_per_example(t)
        trainable = parent_trainable and layer.trainable
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            for inner, outer in zip(layer.inputs, ins):
                alias[id(inner)] = outer
            calls += _flat_calls(layer, alias=alias, sizes=sizes, mask=mask, parent_trainable=trainable)
            for inner, outer in zip(tf.nest.flatten(layer.outputs), outs):
                alias[id(outer)] = alias.get(id(inner), id(inner))
            continue
        trains = mask.get(id(layer), trainable) if mask is not None else trainable
        calls.append(_Call(layer, ins, tuple(id(t) for t in outs), trains and any(w.trainable for w in layer.weights)))
    return calls


def _bytes_per_example(tensor) -> int:
    shape = tensor.shape[1:]
    if any(d is None for d in shape):
        raise ValueError(f"cannot size {tensor.name}: its shape {tensor.shape} is not static")
    return int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(tensor.dtype).size


# ---------------------------------------------------------------------------------------------
# What the backward pass keeps, per layer type (TensorFlow's registered gradients).

# Dropout keeps a mask: EfficientNet's drop-connect mask is one number per example, the head's
# one per feature, so it is left out.
_KEEPS_NOTHING = (keras.layers.Add, keras.layers.GlobalAveragePooling2D, keras.layers.Reshape,
                  keras.layers.ZeroPadding2D, keras.layers.Flatten, keras.layers.Identity,
                  keras.layers.Rescaling, keras.layers.Normalization, keras.layers.InputLayer,
                  keras.layers.Average, keras.layers.AveragePooling2D, keras.layers.Dropout)
_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
             keras.layers.SeparableConv2D)


def _activation_kind(fn) -> str:
    """How an activation's gradient is computed: which tensors it keeps.

    Returns 'input' (tf.nn.silu's custom gradient recomputes the sigmoid), 'output' (relu,
    sigmoid, tanh, softmax read their output), 'input+temp' (x * sigmoid(x) written out as
    two ops: Mul keeps x and sigmoid(x)), or 'none' (linear).
    """
    name = getattr(fn, "__name__", "")
    module = getattr(fn, "__module__", "") or ""
    if name in ("linear", "identity") or fn is None:
        return "none"
    if name in ("swish", "silu") and not module.startswith(("tf_keras", "keras", "tensorflow")):
        return "input+temp"
    if name in ("swish", "silu", "gelu"):
        return "input"
    return "output"


def _kept_by(call: _Call, *, needs_grad: Dict[int, bool], sizes: Dict[int, int]) -> Tuple[List[int], int]:
    """(tensor keys this call keeps for its gradient, bytes of call-internal tensors it keeps)."""
    layer = call.layer
    if isinstance(layer, _KEEPS_NOTHING):
        return [], 0
    if isinstance(layer, keras.layers.BatchNormalization):
        return list(call.inputs), 0
    if isinstance(layer, keras.layers.Activation):
        return _activation_keeps(_activation_kind(layer.activation), call, sizes)
    if isinstance(layer, keras.layers.Multiply):
        others = [t for t in call.inputs if any(needs_grad.get(o, False) for o in call.inputs if o != t)]
        return others, 0
    if isinstance(layer, _WEIGHTED):
        keep = list(call.inputs) if call.trainable else []
        keys, extra = _activation_keeps(_activation_kind(getattr(layer, "activation", None)), call, sizes)
        return keep + keys, extra
    return list(call.inputs) + list(call.outputs), 0  # unknown layer: assume it keeps both


def _activation_keeps(kind: str, call: _Call, sizes: Dict[int, int]) -> Tuple[List[int], int]:
    """(keys, internal bytes) an activation of `kind` keeps (see `_activation_kind`)."""
    out = sum(sizes[t] for t in call.outputs)
    if kind == "none":
        return [], 0
    if kind == "input":
        return list(call.inputs), 0
    if kind == "input+temp":
        return list(call.inputs), out
    return list(call.outputs), 0


def _temp_bytes(call: _Call, sizes: Dict[int, int]) -> int:
    """Bytes a call holds inside itself besides its outputs (forward): swish's sigmoid."""
    if _activation_kind(getattr(call.layer, "activation", None)) != "input+temp":
        return 0
    return sum(sizes[t] for t in call.outputs)


@dataclasses.dataclass(frozen=True)
class Activations:
    """Activation memory per example of one phase, in bytes.

    Attributes:
      kept: tensors kept from the forward pass for the backward pass.
      forward_peak: the most alive at once during the forward pass, kept tensors included.
      backward_peak: kept tensors plus the backward pass's largest working set.
      input: one example of model input.
      first_trainable: name of the first layer whose weights train (None: none do).
      layers / backward_layers: leaf layer calls, and those the backward pass goes through.
    """
    kept: int
    forward_peak: int
    backward_peak: int
    input: int
    first_trainable: Optional[str]
    layers: int = 0
    backward_layers: int = 0

    @property
    def peak(self) -> int:
        return max(self.forward_peak, self.backward_peak)


def analyze_activations(model: keras.Model, mask: Optional[Mapping[int, bool]] = None) -> Activations:
    """Walks the model in execution order, each leaf layer training by `mask` ({id(layer): trains},
    as `finetuning.trainable_mask` gives it) or, without one, by its current flags (see module doc).

    BatchNormalization keeps its input in training and inference mode alike, so --bn changes
    the estimate only through which layers train.
    """
    sizes: Dict[int, int] = {id(t): _bytes_per_example(t) for t in model.inputs}
    calls = _flat_calls(model, alias={}, sizes=sizes, mask=mask)
    needs_grad: Dict[int, bool] = {}
    kept_keys: set = set()
    kept_extra = 0
    backward_work = 0
    backward_layers = 0
    first = None
    for call in calls:
        upstream = any(needs_grad.get(t, False) for t in call.inputs)
        on_path = upstream or call.trainable
        for t in call.outputs:
            needs_grad[t] = on_path
        if call.trainable and first is None:
            first = call.layer.name
        if not on_path:
            continue
        backward_layers += 1
        keys, extra = _kept_by(call, needs_grad=needs_grad, sizes=sizes)
        kept_keys.update(keys)
        kept_extra += extra
        if upstream:
            work = sum(sizes[t] for t in call.inputs) + 2 * sum(sizes[t] for t in call.outputs)
            backward_work = max(backward_work, work)
    kept = sum(sizes[t] for t in kept_keys) + kept_extra
    forward = _forward_peak(calls, sizes=sizes, kept=kept_keys, inputs=[id(t) for t in model.inputs],
                            outputs=[id(t) for t in model.outputs])
    return Activations(kept=kept, forward_peak=forward + kept_extra, backward_peak=kept + backward_work,
                       input=sum(sizes[id(t)] for t in model.inputs), first_trainable=first,
                       layers=len(calls), backward_layers=backward_layers)


def _forward_peak(calls: Sequence[_Call], *, sizes: Dict[int, int], kept: set, inputs: List[int],
                  outputs: List[int]) -> int:
    """Most bytes alive at once when the calls run in order, tensors freed after their last reader."""
    remaining: Dict[int, int] = {}
    for call in calls:
        for t in call.inputs:
            remaining[t] = remaining.get(t, 0) + 1
    live = {t: sizes[t] for t in inputs}
    current = sum(live.values())
    peak = current
    for call in calls:
        new = {t: sizes[t] for t in call.outputs if t not in live}
        current += sum(new.values())
        live.update(new)
        peak = max(peak, current + _temp_bytes(call, sizes))
        for t in set(call.inputs):
            remaining[t] -= call.inputs.count(t)
            if remaining[t] <= 0 and t not in kept and t not in outputs and t in live:
                current -= live.pop(t)
    return peak
