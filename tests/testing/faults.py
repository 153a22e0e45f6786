"""Faults tests inject through public seams (callbacks), never through hooks in the product."""
import tf_keras as keras
import tensorflow as tf


class OomOnce(keras.callbacks.Callback):
    """Raises ResourceExhaustedError at the first training step it sees, once: how a test makes
    a phase run out of memory without filling a device."""

    def __init__(self):
        super().__init__()
        self.fired = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self.fired:
            self.fired = True
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor (injected by the test)")
