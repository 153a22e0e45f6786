"""The run directory (--model_dir): its layout, and every read and write of what lives there.

One owner, so that the layout is written down once and `--overwrite` clears exactly what a run
wrote:

    MODEL_DIR/
      config.json          the run's Config (what a restart must match: Config.run_identity)
      state.json           finished phases in order, each with its checkpoint prefix
      history.json         one record per epoch: phase, epoch, loss, accuracy, val_loss, val_accuracy
      plan.json            the memory plan per phase, and out-of-memory retries
      checkpoints/<phase>/ a finished phase's weights (or under --checkpoint_dir)
      backup/<phase>/      BackupAndRestore of the phase in progress (preemption)
      embeddings/<split>-<pipeline>/  the frozen phase's embedding cache on disk
      logs/<phase>/, logs/eval/  TensorBoard (or under --tensorboard_dir)
      plots/learning_curves.png
      eval/                the validation report, through the export
      eval/test/           the test report (with --test_data), through the same export
      export/<version>/    the SavedModel
      tflite/              model_<variant>.tflite, labels.txt, tflite_report.json (trainer.exporting.tflite)
      calibration.json     the fitted temperature folded into every export (trainer.evaluation.calibration)
      .lock                who is running here (trainer/runtime/runlock.py): one run at a time
      .replaced/           with --overwrite, the previous run's files until the new run's first checkpoint

`--overwrite` replaces a run without risking it: it takes effect only after every check of the
new run has passed (flags, data, weights, the model build, the plan), it moves the previous
run's files into `.replaced/` rather than deleting them, and deletes those only once the new run
has finished its first phase. `export/` is never moved or cleared: TF Serving may be serving a
version there, and the new run's export takes the next version.

Small files are written atomically through fileio (local: temp sibling + rename; gs://: one
upload). Under MultiWorkerMirroredStrategy only the chief writes here; callers decide.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import tensorflow as tf

from effnet_common import fileio
from trainer.configs.config import Config, ConfigError

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
PLAN_FILE = "plan.json"
CALIBRATION_FILE = "calibration.json"
THRESHOLDS_FILE = "thresholds.json"
CHECKPOINTS, BACKUP, EMBEDDINGS, LOGS, PLOTS, EVAL, EXPORT = (
    "checkpoints", "backup", "embeddings", "logs", "plots", "eval", "export")
TFLITE = "tflite"
_EMBEDDINGS_BEFORE = "cache"  # the embedding cache's folder in runs written before it was named for what it holds
REPLACED = ".replaced"
# What --overwrite replaces: everything a run writes here but its exports.
REPLACEABLE = (CONFIG_FILE, STATE_FILE, HISTORY_FILE, PLAN_FILE, CHECKPOINTS, BACKUP, EMBEDDINGS, _EMBEDDINGS_BEFORE,
               LOGS, PLOTS, EVAL, TFLITE, CALIBRATION_FILE, THRESHOLDS_FILE)
OWNED = REPLACEABLE + (EXPORT,)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths and files of one run. `checkpoint_root` / `tensorboard_root` override the defaults
    under `root` (Vertex AI sets AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR)."""
    root: str
    checkpoint_root: Optional[str] = None
    tensorboard_root: Optional[str] = None

    @classmethod
    def of(cls, runtime) -> "RunDir":
        """The run directory a `config.Runtime` names."""
        return cls(runtime.model_dir, runtime.checkpoint_dir, runtime.tensorboard_dir)

    def path(self, *parts: str) -> str:
        return fileio.join(self.root, *parts)

    def checkpoint_prefix(self, phase: str) -> str:
        """Where a finished phase's weights go (TF checkpoint format: works on gs://)."""
        return fileio.join(self.checkpoint_root or self.path(CHECKPOINTS), phase, "weights")

    def backup_dir(self, phase: str) -> str:
        return self.path(BACKUP, phase)

    def embeddings_dir(self, name: str = "") -> str:
        """The frozen phase's embedding cache on disk (trainer/training/embeddings.py)."""
        return self.path(EMBEDDINGS, name) if name else self.path(EMBEDDINGS)

    def logs_dir(self, *parts: str) -> str:
        return fileio.join(self.tensorboard_root or self.path(LOGS), *parts)

    @property
    def curves(self) -> str:
        return self.path(PLOTS, "learning_curves.png")

    @property
    def eval_dir(self) -> str:
        return self.path(EVAL)

    @property
    def test_eval_dir(self) -> str:
        """The test split's report: inside eval/, so that --overwrite sets it aside with the
        validation report and one folder holds every figure of the run."""
        return self.path(EVAL, "test")

    @property
    def export_base(self) -> str:
        return self.path(EXPORT)

    @property
    def tflite_dir(self) -> str:
        return self.path(TFLITE)

    # ------------------------------------------------------------------ files

    def write_config(self, cfg: Config) -> None:
        fileio.write_text_atomic(self.path(CONFIG_FILE), cfg.to_json() + "\n")

    def read_config(self) -> Optional[Config]:
        """The config.json a run wrote here, None when there is none; ConfigError when it is not ours."""
        path = self.path(CONFIG_FILE)
        if not fileio.exists(path):
            return None
        try:
            return Config.from_dict(fileio.read_json(path))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a config.json of this trainer ({e}); pass --overwrite to start "
                              "afresh or choose another --model_dir") from None

    def read_state(self) -> Dict[str, str]:
        """Finished phases in order, each with its checkpoint prefix."""
        path = self.path(STATE_FILE)
        if not fileio.exists(path):
            return {}
        return {entry["phase"]: entry["checkpoint"] for entry in fileio.read_json(path)["completed"]}

    def write_state(self, state: Dict[str, str]) -> None:
        fileio.write_json_atomic(self.path(STATE_FILE),
                                 {"completed": [{"phase": n, "checkpoint": p} for n, p in state.items()]})

    def read_history(self) -> List[dict]:
        path = self.path(HISTORY_FILE)
        return list(fileio.read_json(path)) if fileio.exists(path) else []

    def write_history(self, history: List[dict]) -> None:
        fileio.write_json_atomic(self.path(HISTORY_FILE), history)

    def read_plan(self) -> Optional[dict]:
        return self._read_optional(PLAN_FILE)

    def write_plan(self, document: dict) -> None:
        fileio.write_json_atomic(self.path(PLAN_FILE), document)

    def _read_optional(self, name: str) -> Optional[dict]:
        path = self.path(name)
        return fileio.read_json(path) if fileio.exists(path) else None

    def read_calibration(self) -> Optional[dict]:
        return self._read_optional(CALIBRATION_FILE)

    def write_calibration(self, document: dict) -> None:
        fileio.write_json_atomic(self.path(CALIBRATION_FILE), document)

    def read_thresholds(self) -> Optional[dict]:
        """A multi-label run's per-class decision thresholds ({"thresholds": [...], ...})."""
        return self._read_optional(THRESHOLDS_FILE)

    def write_thresholds(self, document: dict) -> None:
        fileio.write_json_atomic(self.path(THRESHOLDS_FILE), document)

    @staticmethod
    def remove(target: str) -> None:
        """Removes a file or folder (a path this class gave), if there."""
        if tf.io.gfile.isdir(target):
            tf.io.gfile.rmtree(target)
        elif tf.io.gfile.exists(target):
            tf.io.gfile.remove(target)

    # ------------------------------------------------------------------ whole-run rules

    def remove_backup(self, phase: str) -> None:
        """Drops a finished phase's backup, and backup/ itself once no phase has one."""
        self.remove(self.backup_dir(phase))
        folder = self.path(BACKUP)
        if tf.io.gfile.isdir(folder) and not tf.io.gfile.listdir(folder):
            tf.io.gfile.rmtree(folder)

    # ------------------------------------------------------------------ whole-run rules

    def check(self, cfg: Config) -> None:
        """Refuses a folder that holds another run (a config.json whose run identity differs).
        Reads only: `--overwrite` skips this check, and `set_aside` replaces the run later."""
        previous = self.read_config()
        if previous is None:
            return
        old, new = previous.run_identity(), cfg.run_identity()
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            detail = ", ".join(f"{k}: {old[k]} vs {new[k]}" for k in diff)[:300]
            raise ConfigError(f"--model_dir={self.root} holds a different run ({detail}); "
                              "pass --overwrite to start afresh or choose another --model_dir")

    def set_aside(self) -> Optional[str]:
        """--overwrite, once every check has passed: moves the previous run's files (all but
        export/) into `.replaced/` and returns that folder (None when there was nothing to move).

        A `.replaced/` already there means the run that replaced it never finished a phase: what
        lies here is that run's partial output, so it is deleted and the older run stays aside.
        """
        aside = self.path(REPLACED)
        present = [name for name in REPLACEABLE if tf.io.gfile.exists(self.path(name))]
        if tf.io.gfile.exists(aside):
            for name in present:
                self.remove(self.path(name))
            return aside
        if not present:
            return None
        tf.io.gfile.makedirs(aside)
        for name in present:
            source, target = self.path(name), fileio.join(aside, name)
            if tf.io.gfile.isdir(source):
                fileio.move_folder(source, target)
            else:
                tf.io.gfile.rename(source, target)
        return aside

    def drop_replaced(self) -> None:
        """Deletes the run `set_aside` kept, once the new run has a checkpoint of its own."""
        self.remove(self.path(REPLACED))
