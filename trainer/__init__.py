"""effnet-trainer: fine-tune a pretrained EfficientNet on your images and serve it.

Importing it changes nothing in the process but TF_USE_LEGACY_KERAS (through effnet_common:
tf-keras is the Keras this package is written for), and loads no TensorFlow: `trainer.fit`,
`trainer.load` and `trainer.prepare_data` (the Python API, trainer/api.py) load it when called.
Commands prepare their process themselves (effnet_common.process: TensorFlow's start-up lines,
gs:// defaults).
"""
import effnet_common  # noqa: F401  # TF_USE_LEGACY_KERAS before TensorFlow loads

__version__ = "0.1.0"

# The Python API (trainer/api.py), loaded on first use: `import trainer` stays as light as before.
_API = ("fit", "load", "prepare_data", "Run", "Report")


def __getattr__(name: str):
    if name in _API:
        from trainer import api  # pylint: disable=import-outside-toplevel
        return getattr(api, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
