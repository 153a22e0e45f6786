"""python -m trainer.task: the training entry point.

The only reader of flags and of the cloud environment (AIP_MODEL_DIR, AIP_CHECKPOINT_DIR,
AIP_TENSORBOARD_LOG_DIR, TPU_NAME; Vertex AI's CLUSTER_SPEC becomes TF_CONFIG here, which
TensorFlow's cluster resolver reads). It makes the strategy first (MultiWorkerMirroredStrategy
must exist before TensorFlow's first op, and reading the data runs ops), builds one Config and
hands both to train.run. A user mistake ends in one line on stderr and exit status 2, before
anything is written to --model_dir.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: prepare the process before TensorFlow loads
    from effnet_common import process
    process.prepare()

import json
import os

from absl import flags, logging

from effnet_common import errors, flagutil
from trainer.configs import backbones, config
from trainer.training import hptune

FLAGS = flags.FLAGS


USAGE = flagutil.Usage(
    summary="Fine-tune a pretrained EfficientNet on your labelled images, export it for TF Serving and report on it.",
    example="python -m trainer.task --train_data='data/train-*.tfrecord' --eval_data='data/validation-*.tfrecord' "
            "--model_dir=runs/first",
    reference="docs/training.md")


def define_flags() -> None:
    """Defines the flags; called when the module runs as a command (or by tests), so that
    importing it beside another entry point defines no clashing flags."""
    flagutil.define("string", "train_data", None, "Training data: TFRecord glob or image folder (local or gs://).",
                    group="data", required=True)
    flagutil.define("string", "eval_data", None, "Validation data, same forms as --train_data.", group="data")
    flagutil.define("string", "test_data", None, "Held-out test data, same forms as --eval_data: reported through the "
                    "export (MODEL_DIR/eval/test/) and never used to choose anything, so the printed headline is "
                    "its accuracy. Default: the test-* shards beside --train_data when prepare's dataset.json there "
                    "lists a test split (prepare --test_fraction, or an import file's ML_USE test); none to skip.",
                    group="data")
    flagutil.define("string", "labels", None, "labels.txt (one class a line); default: beside --train_data.",
                    group="data")
    flagutil.define("integer", "label_offset", 0, "Subtracted from image/class/label (1 for Google's ImageNet shards).",
                    group="data")
    flagutil.define("bool", "multi_label", False, "Each image has zero or more labels (sigmoid head, binary "
                    "cross-entropy); default: what the data says (dataset.json, or records with other than one label).",
                    group="data")
    flagutil.define("string", "class_weight", "none", "Weights of the classes in the loss: none, balanced "
                    "(N / (C * n_c)), or a JSON/CSV file of class,weight pairs. Applied per example in the input "
                    "pipeline, so it works under every strategy.", group="data")
    flagutil.define("float", "label_smoothing", 0.0, "Label smoothing of the loss (0 = off; e.g. 0.1).", group="model")
    flagutil.define("string", "model_dir", None, "Output folder (local or gs://); default $AIP_MODEL_DIR.",
                    group="outputs", required="unless $AIP_MODEL_DIR is set")
    flagutil.define("string", "checkpoint_dir", None, "Checkpoints; default $AIP_CHECKPOINT_DIR or MODEL_DIR/checkpoints.",
                    group="outputs")
    flagutil.define("string", "tensorboard_dir", None, "TensorBoard logs; default $AIP_TENSORBOARD_LOG_DIR or MODEL_DIR/logs.",
                    group="outputs")
    flagutil.define("string", "backbone", "efficientnet-b0", f"Backbone: {', '.join(backbones.REGISTRY)}.",
                    group="model")
    flagutil.define("string", "weights", "imagenet", "imagenet, noisy-student, none, or a weights file path / gs:// URL.",
                    group="model")
    flagutil.define("integer", "image_size", 0, "Input side in pixels; 0 = the backbone's native size.", group="model")
    flagutil.define("float", "dropout", 0.2, "Dropout before the classification layer.", group="model")
    flagutil.define("integer", "frozen_epochs", 30, "Epochs of the frozen phase (head only); 0 skips it. On cached "
                    "embeddings an epoch costs about one step of the backbone, so the head trains to convergence.",
                    group="phases")
    flagutil.define("integer", "finetune_epochs", 20, "Epochs of the fine-tune phase; 0 skips it. The cosine "
                    "schedule runs to its end (docs/training.md: 20 measured 0.87 held out on 1,000 photos, 12 0.85).",
                    group="phases")
    flagutil.define("string", "frozen_batch_size", "64", "Global batch size of the frozen phase, or auto.",
                    group="phases")
    flagutil.define("string", "finetune_batch_size", "16", "Global batch size of the fine-tune phase, or auto.",
                    group="phases")
    flagutil.define("float", "frozen_learning_rate", 3e-3, "Peak learning rate of the frozen phase at --lr_base_batch_size.",
                    group="phases")
    flagutil.define("float", "finetune_learning_rate", 3e-4, "Peak learning rate of the fine-tune phase at --lr_base_batch_size.",
                    group="phases")
    flagutil.define("integer", "lr_base_batch_size", 64,
                    "Batch size the learning rates are given for: above it they grow with the square root of the "
                    "global batch, at or below it they are used as given. 0 = always as given.", group="phases")
    flagutil.define("float", "warmup_epochs", 1.0, "Linear warmup before the cosine decay, in epochs (at most a tenth of the phase).",
                    group="phases")
    flagutil.define("string", "unfreeze", "all", "Fine-tune phase: all, or top:N EfficientNet blocks.", group="model")
    flagutil.define("enum", "bn", "frozen", list(config.BN_MODES),
                      "frozen: BatchNormalization in inference mode in both phases; trainable: the seed blog's variant.",
                      group="model")
    flagutil.define("integer", "early_stopping_patience", 0, "Epochs without a better validation accuracy "
                    "(the loss for multi-label data) before a phase stops, its best weights restored; 0 = off (the "
                    "default: each phase runs its cosine schedule to the end).", group="phases")
    flagutil.define("bool", "keep_best_phase", True, "Where fine-tuning ends below the frozen phase on the validation "
                    "split (accuracy; the loss for multi-label data), keep the frozen phase's weights.", group="phases")
    flagutil.define("integer", "steps_per_epoch", None, "Cap on the steps of an epoch (large datasets, smoke runs).",
                    group="phases")
    flagutil.define("enum", "augment", "flip", list(config.AUGMENT), "Training augmentation: none (the evaluation "
                    "center crop), flip (it or its mirror: small datasets), crop (Inception-style random crop and flip: "
                    "large datasets), randaugment (crop plus RandAugment).", group="input and caches")
    flagutil.define("bool", "cache_records", False, "Keep the encoded records in memory after their first pass (small "
                    "datasets): later epochs and evaluations skip the file reads; every epoch still decodes.",
                    group="input and caches")
    flagutil.define("bool", "cache_pixels", True, "With --augment=none or flip: keep the decoded crops of the training "
                    "and validation images in memory after the first epoch when they fit in a quarter of the "
                    "available RAM; later epochs neither read nor decode.", group="input and caches")
    flagutil.define("enum", "frozen_cache", "auto", list(config.FROZEN_CACHE),
                    "Frozen phase: train the head on embeddings the backbone computes once per image view (auto: "
                    "wherever the backbone is a fixed function, i.e. not with --bn=trainable or on TPUs), or stream "
                    "images every epoch (off).", group="input and caches")
    flagutil.define("enum", "frozen_head", "probe", list(config.FROZEN_HEAD),
                    "Frozen phase on cached embeddings: probe (the head fitted as logistic regression, its L2 strength "
                    "chosen by 5-fold cross-validation on the training split, where the embeddings fit in memory and "
                    "each image has one label), or epochs (--frozen_epochs of Adam, as where probe does not apply).",
                    group="phases")
    flagutil.define("integer", "cache_views", 4, "With --augment=crop or randaugment: random views per image in the frozen "
                    "phase's embedding cache (each epoch draws one).", group="input and caches")
    flagutil.define("enum", "strategy", "auto", list(config.STRATEGIES), "Distribution strategy.",
                    group="distribution and memory")
    flagutil.define("string", "tpu", None, "TPU name, grpc:// address, or local on a TPU VM (default $TPU_NAME).",
                    group="distribution and memory")
    flagutil.define("enum", "mixed_precision", "none", list(config.MIXED_PRECISION), "Mixed-precision policy.",
                    group="distribution and memory")
    flagutil.define("bool", "jit_compile", False, "Compile the train step with XLA (for GPUs/TPUs).",
                    group="distribution and memory")
    flagutil.define("float", "memory_budget_gb", None, "Device memory to plan auto batch sizes for; default detected.",
                    group="distribution and memory")
    flagutil.define("integer", "max_batch_size", 256, "Cap on auto batch sizes.", group="distribution and memory")
    flagutil.define("integer", "accumulate_steps", 1, "Gradient accumulation steps.", group="distribution and memory")
    flagutil.define("integer", "seed", 0, "Random seed.", group="phases")
    flagutil.define("bool", "eval_report", True, "After the export, write the validation report (metrics, per-class "
                      "table, confusion matrix, worst images) to MODEL_DIR/eval through the exported model, and the "
                      "test report (--test_data) to MODEL_DIR/eval/test.", group="after training")
    flagutil.define("bool", "leakage_check", True, "Count each report's images with a near copy in the training split "
                    "(metrics.json near_copies_of_training; one pass of the training split through the export).",
                    group="after training")
    flagutil.define("bool", "calibrate", True, "Fit a temperature on the validation split (Guo et al. 2017) and "
                    "fold it into every export, so that probabilities are calibrated; the argmax does not change.",
                    group="after training")
    flagutil.define("list", "tflite", [], "After the SavedModel: .tflite variants to write to MODEL_DIR/tflite "
                    "(float16, dynamic, int8), each scored by LiteRT on the validation split (docs/edge.md).",
                    group="after training")
    flagutil.define("float", "max_accuracy_drop", 0.01, "Refuse a .tflite variant that loses more accuracy than "
                    "this against the SavedModel.", group="after training")
    flagutil.define("bool", "overwrite", False, "Start afresh even if --model_dir holds a run: once every check has "
                    "passed, its files are moved to MODEL_DIR/.replaced (deleted after the new run's first phase); "
                    "export/ stays and the new export takes the next version.", group="outputs")
    flagutil.define("bool", "plan_only", False, "Print the plan (phases, trainable parameters, batch sizes, learning "
                      "rates) and exit without training; nothing is written to --model_dir.", group="outputs")
    flagutil.define("string", "hptune_metric", hptune.DEFAULT_METRIC,
                    "Metric reported to Vertex AI hyperparameter tuning at each epoch of the last phase "
                    f"({', '.join(hptune.METRICS)}); only inside a tuning trial (CLOUD_ML_TRIAL_ID set).",
                    group="cloud")




def _batch_size(value: str, flag: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise config.ConfigError(f"--{flag}={value}: pass a positive number or auto") from None


def build_config(f=FLAGS, env=os.environ) -> config.Config:
    """One validated Config from flags and the Vertex AI environment. It reads labels.txt (or the
    class folders) through tf.io.gfile, which runs no TensorFlow op, so the strategy can be built
    from it afterwards (MultiWorkerMirroredStrategy must exist before the first op)."""
    if not f.train_data:
        raise config.ConfigError("--train_data is required: pass a TFRecord glob or an image folder")
    model_dir = f.model_dir or env.get("AIP_MODEL_DIR")
    if not model_dir:
        raise config.ConfigError("--model_dir is required (or set AIP_MODEL_DIR): pass an output folder")
    flagutil.check_folder("model_dir", model_dir)
    if hptune.trial_id(env):
        try:
            hptune.check_metric(f.hptune_metric, has_eval_data=bool(f.eval_data))
        except ValueError as e:
            raise config.ConfigError(str(e)) from None
    spec = config.backbone_spec(f.backbone)
    image_size = f.image_size or spec.native_size
    data_cfg = _data_config(f, image_size=image_size)
    model_cfg = config.Model(backbone=f.backbone, weights=f.weights, dropout=f.dropout, bn=f.bn,
                             label_smoothing=f.label_smoothing)
    common = dict(early_stopping_patience=f.early_stopping_patience, warmup_epochs=f.warmup_epochs,
                  base_batch_size=f.lr_base_batch_size)
    phases = (
        config.Phase(name="frozen", epochs=f.frozen_epochs, unfreeze="none", learning_rate=f.frozen_learning_rate,
                     batch_size=_batch_size(f.frozen_batch_size, "frozen_batch_size"), **common),
        config.Phase(name="finetune", epochs=f.finetune_epochs, unfreeze=f.unfreeze,
                     learning_rate=f.finetune_learning_rate,
                     batch_size=_batch_size(f.finetune_batch_size, "finetune_batch_size"), **common),
    )
    runtime = config.Runtime(
        model_dir=model_dir, strategy=f.strategy, tpu=f.tpu or env.get("TPU_NAME"), mixed_precision=f.mixed_precision,
        jit_compile=f.jit_compile, steps_per_epoch=f.steps_per_epoch, overwrite=f.overwrite,
        memory_budget_gb=f.memory_budget_gb, max_batch_size=f.max_batch_size, accumulate_steps=f.accumulate_steps,
        tensorboard_dir=f.tensorboard_dir or env.get("AIP_TENSORBOARD_LOG_DIR"),
        checkpoint_dir=f.checkpoint_dir or env.get("AIP_CHECKPOINT_DIR"), eval_report=f.eval_report,
        frozen_cache=f.frozen_cache, frozen_head=f.frozen_head, keep_best_phase=f.keep_best_phase, calibrate=f.calibrate,
        tflite=tuple(f.tflite), max_accuracy_drop=f.max_accuracy_drop)
    return config.Config(data=data_cfg, model=model_cfg, phases=phases, runtime=runtime)


def _data_config(f, *, image_size: int) -> config.Data:
    """The data part of the Config as the flags give it: class names from labels.txt (or the
    class folders) and nothing read through TensorFlow ops. Counts, multi-label detection and
    class weights come after the strategy exists (`inspection.inspect_data`)."""
    from trainer.data import discovery
    class_names = discovery.resolve_class_names(f.train_data, f.labels)
    return config.Data(
        train_data=f.train_data, eval_data=f.eval_data, class_names=class_names, image_size=image_size,
        label_offset=f.label_offset, augment=f.augment, cache_records=f.cache_records, cache_pixels=f.cache_pixels, seed=f.seed, cache_views=f.cache_views,
        multi_label=f.multi_label, class_weight=f.class_weight, test_data=_test_data(f))


def _test_data(f):
    """--test_data as given (none: no test report), else the test-* shards prepare wrote beside
    --train_data (logged, so the user sees which images the headline figure comes from)."""
    from trainer.data import discovery
    if f.test_data is not None:
        return None if f.test_data.strip().lower() in ("", "none") else f.test_data
    found = discovery.test_split_beside(f.train_data, eval_data=f.eval_data)
    if found:
        logging.info("--test_data: %s (the test split listed in dataset.json beside --train_data; --test_data=none "
                     "skips it)", found)
    return found


def export_tf_config(env=os.environ) -> None:
    """Sets TF_CONFIG from Vertex AI's CLUSTER_SPEC when only the latter is set (custom
    containers), so that workerpool0 is the chief; an existing TF_CONFIG is kept."""
    if env.get("CLUSTER_SPEC") and not env.get("TF_CONFIG"):
        from trainer.runtime import distribute
        try:
            spec = json.loads(env["CLUSTER_SPEC"])
        except json.JSONDecodeError as e:
            raise config.ConfigError(f"CLUSTER_SPEC is not valid JSON ({e})") from None
        env["TF_CONFIG"] = json.dumps(distribute.tf_config_from_cluster_spec(spec))


def _check_outputs_writable(runtime: config.Runtime) -> None:
    """Fails in seconds, not after an hour of training, when an output bucket is missing or read-only."""
    from effnet_common import fileio, gcs  # pylint: disable=import-outside-toplevel
    urls = [p for p in (runtime.model_dir, runtime.checkpoint_dir, runtime.tensorboard_dir) if p and fileio.is_gcs(p)]
    if urls:
        gcs.check_writable(urls)


def main(argv):
    if len(argv) > 1:
        raise flagutil.FlagError(f"unexpected argument(s) {' '.join(argv[1:])}: every setting is a flag, "
                                 "e.g. --train_data=PATH (see --helpfull)")
    for line in run_job().summary():
        print(line)


def run_job(f=FLAGS, env=os.environ):
    """The whole job from the flags' values: the command's body, and `trainer.fit`'s, which passes
    its keywords under the flags' names (trainer/api.py), so both make the same checks and steps.

    Returns:
      The job's `trainer.jobs.pipeline.RunResult`.
    """
    export_tf_config(env)
    cfg = build_config(f, env)
    # Imported once the flags are known good: TensorFlow and the model stack take seconds to
    # load, and a mistake in a flag is answered before that.
    from trainer.runtime import distribute
    from trainer.data import inspection
    from trainer.jobs import pipeline
    strategy = distribute.build_strategy(strategy=cfg.runtime.strategy, tpu=cfg.runtime.tpu)
    cfg = inspection.inspect_data(cfg)
    _check_outputs_writable(cfg.runtime)
    tuning = hptune.build_callback(metric=f.hptune_metric, env=env,
                                   is_chief=distribute.is_chief(strategy),
                                   epoch_offset=sum(p.epochs for p in cfg.phases[:-1]) if cfg.phases[-1].epochs else 0)
    try:
        result = pipeline.run(cfg, strategy=strategy, plan_only=f.plan_only,
                              last_phase_callbacks=[tuning] if tuning else [], leakage_check=f.leakage_check)
    except KeyboardInterrupt as e:  # outside an epoch (the phase loop says where it stopped)
        raise e if isinstance(e, errors.Interrupted) else errors.Interrupted(
            f"stopped by Ctrl-C ({cfg.runtime.model_dir}); rerun the same command to resume: finished phases are "
            "kept") from None
    distribute.wait_for_all(strategy)
    return result


def run_main():
    flagutil.run(main, define_flags, usage=USAGE)


if __name__ == "__main__":
    run_main()
