"""The signature_def map of an export as TF Serving's C++ loader sees it (the stand-in and the tests read it)."""
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2


def read_signature_defs(export_dir: str) -> dict:
    """The serve-tagged MetaGraphDef's signature_def map of an export."""
    with tf.io.gfile.GFile(f"{export_dir.rstrip('/')}/saved_model.pb", "rb") as f:
        proto = saved_model_pb2.SavedModel.FromString(f.read())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir} has no MetaGraphDef tagged 'serve'")
