"""Gradient accumulation: an effective batch larger than what fits in memory.

`install(model, steps=k)` replaces the model's `train_step` so that each replica splits its
batch into k micro-batches, runs forward and backward on one at a time inside a
`tf.while_loop` (one iteration at a time, so only one micro-batch's activations are alive),
sums the gradients weighted by micro-batch size, and applies them once. The optimizer sees the
gradient of the whole batch's mean loss, exactly as without accumulation, so the learning rate,
the schedule's step count, checkpoints and metrics are unchanged; only the activation memory
drops to one micro-batch's (the gradient sums cost one extra copy of the trainable weights).

What differs from one large batch: BatchNormalization in training mode (--bn=trainable) sees
micro-batch statistics, and dropout masks are drawn per micro-batch.

The datasets keep yielding the full (effective) batch: the input batch is small next to the
activations it causes.
"""
from __future__ import annotations

import types

import tensorflow as tf
import tf_keras as keras



def install(model: keras.Model, *, steps: int) -> None:
    """Makes `model.fit` accumulate gradients over `steps` micro-batches per step (1: no change).

    Call once after building the model; `compile` keeps it (it resets the cached train
    function, not `train_step`).
    """
    if steps < 1:
        raise ValueError(f"accumulation steps must be 1 or more, not {steps}")
    if steps == 1:
        return
    model.train_step = types.MethodType(lambda self, data: accumulating_train_step(self, data, steps=steps), model)
    model.train_function = None


def accumulating_train_step(model: keras.Model, data, *, steps: int) -> dict:
    """One optimizer step from `steps` micro-batches of `data`; returns the metrics like train_step."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    part, count = _splitter(tf.nest.flatten(x)[0], steps=steps)
    variables = model.trainable_variables
    sums = [tf.zeros_like(v) for v in variables]
    predictions = tf.TensorArray(model.outputs[0].dtype, size=count, infer_shape=False,
                                 element_shape=tf.TensorShape([None]).concatenate(model.outputs[0].shape[1:]))
    batch = tf.cast(tf.shape(tf.nest.flatten(x)[0])[0], tf.float32)

    def body(i, sums, predictions):
        xi, yi, wi = (None if t is None else tf.nest.map_structure(lambda a: part(a, i), t)
                      for t in (x, y, sample_weight))
        with tf.GradientTape() as tape:
            pred = model(xi, training=True)
            loss = model.compute_loss(xi, yi, pred, wi)
        grads = [g for g, _ in model.optimizer.compute_gradients(loss, variables, tape=tape)]
        weight = tf.cast(tf.shape(pred)[0], tf.float32) / batch
        sums = [s if g is None else s + tf.cast(weight, s.dtype) * tf.convert_to_tensor(g)
                for s, g in zip(sums, grads)]
        return i + 1, sums, predictions.write(i, pred)

    _, sums, predictions = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), sums, predictions),
                                         parallel_iterations=1)
    model.optimizer.apply_gradients(zip(sums, variables))
    return model.compute_metrics(x, y, predictions.concat(), sample_weight)


def _splitter(first: tf.Tensor, *, steps: int):
    """(part(tensor, i) -> micro-batch i, number of micro-batches) for this batch.

    A static batch divisible by `steps` (drop_remainder, TPUs) is reshaped to [steps, micro, ...]
    so every micro-batch keeps a static shape, as XLA needs; otherwise micro-batches are
    dynamic slices of ceil(batch / steps) examples, the last one shorter.
    """
    static = first.shape[0]
    if static is not None and static % steps == 0:
        micro = static // steps
        return (lambda a, i: tf.gather(tf.reshape(a, [steps, micro] + a.shape[1:].as_list()), i)), steps
    batch = tf.shape(first)[0]
    micro = (batch + steps - 1) // steps
    return (lambda a, i: a[i * micro:tf.minimum((i + 1) * micro, batch)]), (batch + micro - 1) // micro
