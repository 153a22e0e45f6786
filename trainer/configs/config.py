"""One frozen configuration for a training run, validated once.

`task.py` builds a `Config` from flags and the environment; every other module receives only the
part it needs (`cfg.data`, `cfg.model`, a `Phase`, `cfg.runtime`). `Config.__post_init__` is the
single place where user mistakes in settings are caught: it raises `ConfigError`, whose message
names the flag and the fix, and `task.py` prints it as one line.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional, Tuple, Union

from effnet_common import errors
from trainer.configs import backbones

PHASE_NAMES = ("frozen", "finetune")
BN_MODES = ("frozen", "trainable")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
TFLITE_VARIANTS = ("float16", "dynamic", "int8")  # trainer/exporting/tflite.py
AUGMENT = ("none", "flip", "crop", "randaugment")
FROZEN_CACHE = ("auto", "on", "off")
FROZEN_HEAD = ("probe", "epochs")
CLASS_WEIGHT_MODES = ("none", "balanced")  # or the path of a per-class file (trainer/data/targets.py)
MIN_IMAGE_SIZE = 32


class ConfigError(errors.UserError):
    """A setting the user must change; the message says which flag and how."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class Data:
    """Where the images are and how they become tensors.

    Attributes:
      train_data: TFRecord glob (data contract in docs/data.md) or an image folder with one
        subfolder per class; local or gs://.
      eval_data: the same for validation, or None.
      class_names: the class names, in label order (from labels.txt or the folder names).
      image_size: side of the square model input in pixels.
      label_offset: subtracted from `image/class/label` (1 for Google's ImageNet shards).
      augment: training augmentation: none (the evaluation crop), flip (it or its mirror), crop
        (Inception-style random crop and flip) or randaugment (that plus RandAugment).
      cache_records: keep the encoded records in memory after their first pass (small datasets
        only): later epochs skip the file reads; every epoch still decodes them.
      cache_pixels: where every epoch decodes an image to the same pixels (validation, and
        training with augment none or flip), keep the decoded crops in memory after the first
        epoch when they fit (`data.pixel_cache_bytes`): later epochs neither read nor decode.
      shuffle_buffer: examples in the training shuffle buffer.
      seed: the run's one seed: shuffling, augmentation and (train.run) weight initialization.
      num_train_examples / num_eval_examples: known example counts (dataset.json), or None.
      cache_views: with randaugment, the random views per image the frozen phase's embedding
        cache holds (each epoch draws one).
      multi_label: each record holds zero or more labels (a repeated `image/class/label`); the
        head is a sigmoid per class (docs/training.md).
      class_weight: none, balanced, or the path of a per-class weights file: how the training
        examples of each class are weighted in the loss.
      class_weights: the resolved weight per class (label order), or None for none.
      test_data: held-out data (same forms as train_data), or None: only the final report reads
        it, so no choice of the run (epochs, temperature, thresholds) is made on it and its
        figure is not optimistic. Not part of `Config.run_identity`: it never changes training.
    """
    train_data: str
    eval_data: Optional[str]
    class_names: Tuple[str, ...]
    image_size: int
    label_offset: int = 0
    augment: str = "flip"
    cache_records: bool = False
    cache_pixels: bool = True
    shuffle_buffer: int = 1024
    seed: int = 0
    num_train_examples: Optional[int] = None
    num_eval_examples: Optional[int] = None
    cache_views: int = 4
    multi_label: bool = False
    class_weight: str = "none"
    class_weights: Optional[Tuple[float, ...]] = None
    test_data: Optional[str] = None

    def __post_init__(self):
        _check(bool(self.train_data), "--train_data is empty: pass a TFRecord glob or an image folder")
        _check(len(self.class_names) >= 2,
               f"only {len(self.class_names)} class(es) found in the labels: a classifier needs at "
               "least 2; check --labels or the class folders of --train_data")
        _check(len(set(self.class_names)) == len(self.class_names),
               "labels.txt repeats a class name: each line must name a different class")
        _check(self.image_size >= MIN_IMAGE_SIZE,
               f"--image_size={self.image_size} is below {MIN_IMAGE_SIZE}: EfficientNet downsamples "
               f"32x, pass --image_size={MIN_IMAGE_SIZE} or more")
        _check(self.augment in AUGMENT, f"--augment={self.augment}: choose one of {', '.join(AUGMENT)}")
        _check(self.label_offset >= 0, "--label_offset must be 0 or more")
        _check(self.cache_views >= 1, "--cache_views must be 1 or more")
        _check(not self.test_data or self.test_data != self.eval_data,
               f"--test_data is --eval_data ({self.test_data}): validation chooses the epochs and the temperature, "
               "so its figure is not held out; pass held-out images as --test_data, or leave it out")
        _check(self.class_weights is None or (len(self.class_weights) == len(self.class_names)
                                              and all(w >= 0 for w in self.class_weights)),
               "--class_weight: one non-negative weight per class is needed")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class Model:
    """The network: a registered backbone, its starting weights, the head's dropout and how
    BatchNormalization and the loss behave.

    The network's shape is the data's, and lives only there (`Data`): the input side is
    `Data.image_size`, the head's width `Data.num_classes`, and `Data.multi_label` makes it a
    sigmoid per class (trainer.models.classifier.build_classifier takes the three as arguments).

    Attributes:
      backbone: a name from `backbones.REGISTRY`, e.g. efficientnet-b0.
      weights: imagenet, noisy-student, none, or a path/gs:// URL of a Keras HDF5 weights file.
      dropout: dropout rate before the head's Dense layer.
      bn: frozen (BatchNormalization in inference mode in both phases) or trainable (the seed
        blog's variant: BN layers train even while the rest of the backbone is frozen).
      label_smoothing: the loss's label smoothing (0 = off).
    """
    backbone: str
    weights: str
    dropout: float = 0.2
    bn: str = "frozen"
    label_smoothing: float = 0.0

    def __post_init__(self):
        spec = backbone_spec(self.backbone)
        _check(self.weights in spec.named_weights + ("none",) or is_weights_file(self.weights),
               f"--weights={self.weights}: {self.backbone} takes "
               f"{', '.join(spec.named_weights + ('none',))} or the path of a weights file")
        _check(0.0 <= self.dropout < 1.0, f"--dropout={self.dropout} must be in [0, 1)")
        _check(self.bn in BN_MODES, f"--bn={self.bn}: choose one of {', '.join(BN_MODES)}")
        _check(0.0 <= self.label_smoothing < 1.0, f"--label_smoothing={self.label_smoothing} must be in [0, 1), e.g. 0.1")


def backbone_spec(name: str) -> backbones.BackboneSpec:
    """The registry entry for --backbone, or a ConfigError listing the choices."""
    _check(name in backbones.REGISTRY, f"--backbone={name} is unknown: choose one of {', '.join(backbones.REGISTRY)}")
    return backbones.REGISTRY[name]


def is_weights_file(value: str) -> bool:
    """True when --weights names a file (local or gs://) rather than a named set of weights."""
    return "/" in value or value.endswith((".h5", ".hdf5", ".keras"))


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase; the run is `for phase in cfg.phases`.

    Attributes:
      name: frozen (only the head trains) or finetune (the backbone opens per `unfreeze`).
      epochs: maximum epochs; 0 skips the phase.
      batch_size: global batch size, or "auto" for the memory plan to choose.
      learning_rate: peak learning rate at `base_batch_size` and below; above it, scaled with the
        square root of the batch (trainer/training/schedules.py).
      unfreeze: none (frozen phase), all, or top:N (the top N EfficientNet blocks).
      early_stopping_patience: epochs without improvement before the phase stops.
      warmup_epochs: linear warmup before the cosine decay, in epochs.
    """
    name: str
    epochs: int
    batch_size: Union[int, str]
    learning_rate: float
    unfreeze: str = "none"
    early_stopping_patience: int = 3
    warmup_epochs: float = 0.0
    base_batch_size: int = 0

    def __post_init__(self):
        _check(self.name in PHASE_NAMES, f"unknown phase {self.name}")
        _check(self.epochs >= 0, f"--{self.name}_epochs must be 0 or more")
        _check(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size > 0),
               f"--{self.name}_batch_size={self.batch_size}: pass a positive number or auto")
        _check(self.learning_rate > 0, f"--{self.name}_learning_rate must be positive")
        _check(self.early_stopping_patience >= 0, "--early_stopping_patience must be 0 or more")
        _check(self.warmup_epochs >= 0, "--warmup_epochs must be 0 or more")
        if self.name == "frozen":
            _check(self.unfreeze == "none", "the frozen phase trains the head only")
        else:
            _check(self.unfreeze == "all" or re.fullmatch(r"top:[1-9]\d*", self.unfreeze) is not None,
                   f"--unfreeze={self.unfreeze}: pass all or top:N with N a positive number of blocks")

    @property
    def top_blocks(self) -> Optional[int]:
        """N of top:N, None for all, 0 for the frozen phase."""
        if self.unfreeze == "none":
            return 0
        return None if self.unfreeze == "all" else int(self.unfreeze.split(":")[1])

    def with_batch_size(self, batch_size: int) -> "Phase":
        return dataclasses.replace(self, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how the run executes.

    Attributes:
      model_dir: output folder (local or gs://).
      strategy: auto, default, mirrored, multi_worker or tpu.
      tpu: TPU name or grpc:// address, or None.
      mixed_precision: none, mixed_float16 or mixed_bfloat16.
      jit_compile: compile the train step with XLA.
      steps_per_epoch: cap on steps per epoch, or None for a full pass.
      overwrite: start afresh even if model_dir holds a run.
      memory_budget_gb: device memory to plan batches for, or None to detect.
      max_batch_size: cap for automatic batch sizes.
      accumulate_steps: gradient accumulation steps.
      tensorboard_dir / checkpoint_dir: override the defaults under model_dir (Vertex AI sets them).
      eval_report: after the export, write the validation report (model_dir/eval/) through it.
      frozen_cache: auto (train the frozen phase's head on cached embeddings where that applies),
        on (the same, an error where it does not), off (stream images every epoch).
      frozen_head: probe (fit the frozen phase's head as a cross-validated logistic regression
        on the cached embeddings where they are in memory and labels single: trainer/training/headfit.py),
        or epochs (--frozen_epochs of Adam on them, as everywhere it does not apply).
      keep_best_phase: where the last phase ends below the one before it on the validation split,
        keep the earlier phase's weights (trainer/training/train.py, `phase_to_keep`).
      calibrate: fit a temperature on the validation split and fold it into every export.
      tflite: .tflite variants to write after the SavedModel (model_dir/tflite/), each scored.
      max_accuracy_drop: the accuracy a .tflite variant may lose against the SavedModel.
    """
    model_dir: str
    strategy: str = "auto"
    tpu: Optional[str] = None
    mixed_precision: str = "none"
    jit_compile: bool = False
    steps_per_epoch: Optional[int] = None
    overwrite: bool = False
    memory_budget_gb: Optional[float] = None
    max_batch_size: int = 256
    accumulate_steps: int = 1
    tensorboard_dir: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    eval_report: bool = True
    frozen_cache: str = "auto"
    frozen_head: str = "probe"
    keep_best_phase: bool = True
    calibrate: bool = True
    tflite: Tuple[str, ...] = ()
    max_accuracy_drop: float = 0.01

    def __post_init__(self):
        _check(bool(self.model_dir), "--model_dir is empty: pass a folder (local or gs://) or set AIP_MODEL_DIR")
        _check(self.strategy in STRATEGIES, f"--strategy={self.strategy}: choose one of {', '.join(STRATEGIES)}")
        _check(self.mixed_precision in MIXED_PRECISION,
               f"--mixed_precision={self.mixed_precision}: choose one of {', '.join(MIXED_PRECISION)}")
        _check(self.steps_per_epoch is None or self.steps_per_epoch > 0, "--steps_per_epoch must be positive")
        _check(self.memory_budget_gb is None or self.memory_budget_gb > 0, "--memory_budget_gb must be positive")
        _check(self.max_batch_size > 0, "--max_batch_size must be positive")
        _check(self.accumulate_steps >= 1, "--accumulate_steps must be 1 or more")
        _check(self.frozen_cache in FROZEN_CACHE, f"--frozen_cache={self.frozen_cache}: choose one of {', '.join(FROZEN_CACHE)}")
        _check(self.frozen_head in FROZEN_HEAD, f"--frozen_head={self.frozen_head}: choose one of {', '.join(FROZEN_HEAD)}")
        _check(all(v in TFLITE_VARIANTS for v in self.tflite),
               f"--tflite={','.join(self.tflite)}: choose from {', '.join(TFLITE_VARIANTS)} (comma-separated)")
        _check(0.0 <= self.max_accuracy_drop <= 1.0, "--max_accuracy_drop must be in [0, 1]")


# Fields renamed so that each name says one thing: config.json keys of earlier runs -> today's.
_RENAMED = {"cache": "cache_records", "report": "eval_report"}


@dataclasses.dataclass(frozen=True)
class Config:
    data: Data
    model: Model
    phases: Tuple[Phase, ...]
    runtime: Runtime

    def __post_init__(self):
        _check(not (self.data.multi_label and self.runtime.tflite),
               "--tflite is for single-label classifiers (its gate scores top-1 accuracy); leave it out with "
               "multi-label data, or export the SavedModel only")
        _check(not (self.runtime.frozen_cache == "on" and self.model.bn == "trainable"),
               "--frozen_cache=on needs --bn=frozen: with trainable BatchNormalization the backbone is no fixed "
               "function to cache; pass --frozen_cache=auto or off")
        _check(sum(p.epochs for p in self.phases) > 0,
               "--frozen_epochs and --finetune_epochs are both 0: nothing to train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        weights = d["data"].get("class_weights")
        data = dict({_RENAMED.get(k, k): v for k, v in d["data"].items()},
                    class_names=tuple(d["data"]["class_names"]),
                    class_weights=tuple(weights) if weights is not None else None)
        # A config.json from before each setting lived in one field (the seed was also in
        # runtime, the network's shape also in model) or had one name (_RENAMED).
        runtime = {_RENAMED.get(k, k): v for k, v in d["runtime"].items() if k != "seed"}
        runtime["tflite"] = tuple(runtime.get("tflite", ()))
        model = {k: v for k, v in d["model"].items() if k not in ("num_classes", "image_size", "multi_label")}
        return cls(data=Data(**data), model=Model(**model),
                   phases=tuple(Phase(**p) for p in d["phases"]), runtime=Runtime(**runtime))

    def run_identity(self) -> dict:
        """The settings that make two runs the same run (resume) rather than different ones.

        Batch sizes, epochs, steps, the strategy and output locations may change between a run
        and its restart (e.g. a different machine count); what the weights mean may not.
        """
        return {"backbone": self.model.backbone, "num_classes": self.data.num_classes,
                "class_names": list(self.data.class_names), "image_size": self.data.image_size,
                "bn": self.model.bn, "multi_label": self.data.multi_label, "phases": [[p.name, p.unfreeze] for p in self.phases]}
