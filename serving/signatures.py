"""The tf.Module whose functions become the SavedModel's serving signatures.

One preprocessing source: every signature turns its input into the model's pixels through
`effnet_common.decode.decode_for_eval`, mapped over the batch, so what TF Serving answers is what
evaluation measured. The contract (docs/serving.md):

| signature         | input                                   | outputs                                  |
|-------------------|-----------------------------------------|------------------------------------------|
| `serving_default` | `image_bytes` string [None]             | `probabilities` [None, C], `classes` string [None, K], `scores` [None, K] |
| `classify`        | `inputs` string [None] (tf.Example)     | `classes`, `scores` (TF Serving's Classify API) |
| `features`        | `image_bytes` string [None]             | `features` float32 [None, D]             |

K = min(TOP_K, C). A multi-label classifier keeps these outputs (`probabilities` then holds
independent per-class probabilities, `classes`/`scores` the top K of them); its `classify`
answers every class in label order, and `assets/thresholds.txt` holds the per-class decision
thresholds chosen on validation (one a line, label order). Class names come from `assets/labels.txt` through a lookup table that the
SavedModel's init op fills at load time, so TF Serving, `tf.saved_model.load` and the TF1
loader all read the same file. Warmup records (TF Serving replays them before serving, see
tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc) are built here too, so
their request shapes follow the signatures.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

SERVING_DEFAULT = "serving_default"
CLASSIFY = "classify"
FEATURES = "features"
SIGNATURE_NAMES = (SERVING_DEFAULT, CLASSIFY, FEATURES)
# TF Serving's constants (tensorflow/cc/saved_model/signature_constants.h).
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
IMAGE_KEY = "image_bytes"
EXAMPLE_KEY = "inputs"
EXAMPLE_IMAGE_FEATURE = "image/encoded"
TOP_K = 5
THRESHOLDS_FILENAME = "thresholds.txt"
WARMUP_FILENAME = "tf_serving_warmup_requests"
# The batch sizes TF Serving forms (serving/config/batching.config, allowed_batch_sizes): the
# warmup replays each one so no request pays for a first-call trace.
ALLOWED_BATCH_SIZES = (1, 2, 4, 8, 16, 32)

DecodeFn = Callable[[tf.Tensor, int], tf.Tensor]


def _default_decode() -> DecodeFn:
    from effnet_common import decode  # pylint: disable=import-outside-toplevel  # keeps import light
    return decode.decode_for_eval


def decode_batch(image_bytes: tf.Tensor, *, image_size: int,
                 decode_fn: Optional[DecodeFn] = None) -> tf.Tensor:
    """Encoded images [N] -> float32 pixels [N, S, S, 3], 0..255, as every signature decodes them.

    Undecodable bytes raise InvalidArgumentError, which TF Serving returns as INVALID_ARGUMENT.
    """
    decode = decode_fn or _default_decode()
    return tf.map_fn(lambda b: decode(b, image_size), image_bytes,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


class ServingModule(tf.Module):
    """Holds the model, its feature extractor and the label table; its functions are signatures.

    Args:
      model: float32 Keras classifier, 0..255 pixels [None, S, S, 3] -> softmax [None, C].
      features_model: the same network up to the pooled embedding [None, D].
      labels_path: a local labels.txt (one class a line, in label order); saved as an asset.
      image_size: S.
      decode_fn: bytes scalar, image_size -> float32 [S, S, 3] 0..255; defaults to
        `effnet_common.decode.decode_for_eval`, the preprocessing evaluation uses.
      thresholds_path: a multi-label model's thresholds.txt, saved as an asset; None for a
        single-label model.
    """

    def __init__(self, model: keras.Model, *, features_model: keras.Model, labels_path: str,
                 image_size: int, num_classes: int, decode_fn: Optional[DecodeFn] = None,
                 thresholds_path: Optional[str] = None):
        super().__init__(name="effnet_serving")
        # Only the variables are tracked. Tracking the Keras models themselves would make
        # tf.saved_model.save trace every layer's call for Keras revival (B0: ~100 s to save,
        # ~35 s to load on 2 cores, measured) although TF Serving only runs the signatures.
        # One traced function computes both outputs, so the network's graph is traced and
        # stored once, not once per signature.
        self.model_variables = list(model.variables)
        both = keras.Model(model.inputs, [model.outputs[0], features_model.outputs[0]])
        self._network = tf.function(
            lambda pixels: both(pixels, training=False),
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)], autograph=False)
        self.labels_asset = tf.saved_model.Asset(labels_path)
        initializer = tf.lookup.TextFileInitializer(
            self.labels_asset, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE)
        self.labels_table = tf.lookup.StaticHashTable(initializer, default_value="")
        self._image_size = int(image_size)
        self._top_k = min(TOP_K, int(num_classes))
        self._num_classes = int(num_classes)
        self.multi_label = thresholds_path is not None
        if self.multi_label:
            self.thresholds_asset = tf.saved_model.Asset(thresholds_path)
        decode = decode_fn or _default_decode()
        # Every signature decodes through this one traced function: the decoding graph (a map
        # over the batch, EXIF orientation, the crop) is traced and stored once, not once per
        # signature (a third of the export's time, and of its loading, before).
        self._pixels = tf.function(
            lambda image_bytes: decode_batch(image_bytes, image_size=self._image_size, decode_fn=decode),
            input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)

    def _top_classes(self, probabilities: tf.Tensor):
        scores, indices = tf.math.top_k(probabilities, k=self._top_k)
        return self.labels_table.lookup(tf.cast(indices, tf.int64)), scores

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_KEY)], autograph=False)
    def serve(self, image_bytes):
        """Encoded images (JPEG/PNG/GIF/BMP) -> probabilities and the top-K classes."""
        probabilities, _ = self._network(self._pixels(image_bytes))
        classes, scores = self._top_classes(probabilities)
        return {"probabilities": probabilities, "classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLE_KEY)], autograph=False)
    def classify(self, inputs):
        """Serialized tf.Example with `image/encoded` -> top-K classes (TF Serving's Classify);
        multi-label: every class with its own score, in label order."""
        parsed = tf.io.parse_example(
            inputs, {EXAMPLE_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        probabilities, _ = self._network(self._pixels(parsed[EXAMPLE_IMAGE_FEATURE]))
        if self.multi_label:
            names = self.labels_table.lookup(tf.range(self._num_classes, dtype=tf.int64))
            return {"classes": tf.tile(names[None], [tf.shape(probabilities)[0], 1]), "scores": probabilities}
        classes, scores = self._top_classes(probabilities)
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_KEY)], autograph=False)
    def features(self, image_bytes):
        """Encoded images -> the pooled embedding (before dropout), for retrieval or new heads."""
        _, features = self._network(self._pixels(image_bytes))
        return {"features": features}

    def signatures(self) -> dict:
        """The concrete functions to pass to tf.saved_model.save, keyed by signature name."""
        return {SERVING_DEFAULT: self.serve.get_concrete_function(),
                CLASSIFY: self.classify.get_concrete_function(),
                FEATURES: self.features.get_concrete_function()}


def warmup_image(*, image_size: int) -> bytes:
    """A deterministic JPEG of the model's input size: cheap to decode, exercises every op."""
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (image_size, 1)),
                       np.tile(ramp[:, None], (1, image_size))], axis=-1).astype(np.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def image_example(image: bytes) -> bytes:
    """A serialized tf.Example holding `image/encoded`, the Classify input."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return tf.train.Example(features=tf.train.Features(
        feature={EXAMPLE_IMAGE_FEATURE: feature})).SerializeToString()


def warmup_records(*, image_size: int,
                   batch_sizes: Sequence[int] = ALLOWED_BATCH_SIZES) -> Iterator[bytes]:
    """Serialized PredictionLog records: every signature at every batch size.

    TF Serving reads them from assets.extra/tf_serving_warmup_requests and fails the whole
    model load if one fails, so they are built from the same keys the signatures declare.
    """
    # pylint: disable=import-outside-toplevel  # TF Serving's protos only where needed
    from tensorflow_serving.apis import (classification_pb2, input_pb2, predict_pb2,
                                         prediction_log_pb2)
    image = warmup_image(image_size=image_size)
    for size in batch_sizes:
        for name in (SERVING_DEFAULT, FEATURES):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = name
            request.inputs[IMAGE_KEY].CopyFrom(tf.make_tensor_proto([image] * size, dtype=tf.string))
            yield prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()
        request = classification_pb2.ClassificationRequest(
            input=input_pb2.Input(example_list=input_pb2.ExampleList(
                examples=[tf.train.Example.FromString(image_example(image))] * size)))
        request.model_spec.signature_name = CLASSIFY
        yield prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)).SerializeToString()


def set_classify_method_name(saved_model_pb: bytes) -> bytes:
    """Returns saved_model.pb with the `classify` signature's method_name set for Classify.

    tf.saved_model.save marks every signature `tensorflow/serving/predict`; TF Serving's
    Classify API checks for `tensorflow/serving/classify` when started with
    --enable_signature_method_name_check (servables/tensorflow/classifier.cc). The field is
    plain data in the MetaGraphDef, read by both the TF2 and the C++/TF1 loaders.
    """
    # pylint: disable=import-outside-toplevel
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel.FromString(saved_model_pb)
    for meta_graph in proto.meta_graphs:
        if CLASSIFY in meta_graph.signature_def:
            meta_graph.signature_def[CLASSIFY].method_name = CLASSIFY_METHOD_NAME
    return proto.SerializeToString()

