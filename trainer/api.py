"""The Python API: the commands for Python users (a notebook), on the same library, in the flags' names.

    import trainer
    info = trainer.prepare_data(input_dir="photos/", output_dir="data/", validation_fraction=0.2)
    run = trainer.fit(train_data="data/train-*.tfrecord", eval_data="data/validation-*.tfrecord",
                      model_dir="runs/first", backbone="efficientnet-lite0", image_size=64)
    run.history, run.export_dir, run.metrics        # what `python -m trainer.task` wrote and printed
    report = run.evaluate("photos-held-out/")       # trainer.evaluate's report, through the export
    predictions = run.predict(["a.jpg", "more/"])   # trainer.predict's answers
    explanations = run.explain(["a.jpg"])           # Grad-CAM (trainer.analysis.gradcam)
    run.export()                                    # trainer.export: another version

Each function takes its command's flags as keywords, with the flags' own defaults: the flags are
defined (as the command defines them) and each keyword parsed by its flag's parser, so a value is
checked as on the command line and nothing here repeats a default. `fit` then runs
`trainer.task.run_job`, the command's own body. A mistake raises the typed error the command
prints as its one `error: ...` line (`effnet_common.errors.UserError` and its subclasses, e.g.
`flagutil.FlagError`, `ConfigError`, `DataError`, `PredictError`).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from absl import flags

from effnet_common import flagutil  # no TensorFlow: effnet_common.fileio (TensorFlow's gfile) loads inside


def command_values(define_flags: Callable[[], None], module: str, values: Dict[str, Any], *,
                   command: str) -> types.SimpleNamespace:
    """Every flag of the command `module` (defined by its `define_flags`) at its default, with
    `values` parsed by the flags' own parsers over them.

    Raises:
      FlagError: a name that is no flag of the command, or a value its flag refuses.
    """
    define_flags()
    known = {flag.name: flag for flag in flags.FLAGS.get_key_flags_for_module(module)}
    for name in values:
        if name not in known:
            raise flagutil.FlagError(f"{command}({name}=...): no such setting; pass the flags of python -m {module} "
                                     f"as keywords, under their names (python -m {module} --help lists them)")
    chosen = {name: flag.default for name, flag in known.items()}
    chosen.update({name: _parsed(known[name], value, command=command) for name, value in values.items()})
    return types.SimpleNamespace(**chosen)


def _parsed(flag: flags.Flag, value: Any, *, command: str) -> Any:
    """`value` through the flag's parser (a number for a string flag such as a batch size is
    taken as its text); None stays None, as an unset flag."""
    if value is None:
        return None
    if type(flag.parser) is flags.ArgumentParser and not isinstance(value, str):  # a string flag
        value = str(value)
    try:
        return flag.parser.parse(value)
    except (TypeError, ValueError) as e:
        raise flagutil.FlagError(f"{command}({flag.name}={value!r}): {flagutil.one_line(e)}") from None


def _library_kwargs(function: Callable, namespace: types.SimpleNamespace, **renamed: str) -> Dict[str, Any]:
    """The keyword arguments of `function` that are flags of `namespace` (a library takes its
    command's flags under their names); `renamed`: parameter -> flag where they differ."""
    chosen = {}
    for parameter in inspect.signature(function).parameters:
        flag = renamed.get(parameter, parameter)
        if hasattr(namespace, flag):
            chosen[parameter] = getattr(namespace, flag)
    return chosen


def prepare_data(**values) -> dict:
    """`python -m trainer.prepare` with its flags as keywords (input_dir=, output_dir=,
    validation_fraction=, ...). Returns dataset.json's content (counts, skipped files, warnings)."""
    from trainer import prepare  # pylint: disable=import-outside-toplevel
    from trainer.data import preparing  # pylint: disable=import-outside-toplevel
    namespace = command_values(prepare.define_flags, "trainer.prepare", values, command="prepare_data")
    return preparing.prepare(**_library_kwargs(preparing.prepare, namespace), workers=_prepare_workers(namespace))


def _prepare_workers(namespace: types.SimpleNamespace):
    """The workers runner= and beam_options= ask for (trainer.beam.records), or None: threads."""
    from trainer.beam import options as beam_options  # pylint: disable=import-outside-toplevel
    settings = beam_options.from_flags(runner=namespace.runner, beam_options=namespace.beam_options)
    if settings is None:
        return None
    from trainer.beam import records  # pylint: disable=import-outside-toplevel  # Apache Beam: only here
    return records.BeamWorkers(settings)


def fit(**values) -> "Run":
    """`python -m trainer.task` with its flags as keywords (train_data=, model_dir=, backbone=,
    finetune_epochs=, ...): trains, exports and reports as the command does, and returns the run.
    A model_dir that holds this run resumes it, as rerunning the command does."""
    from trainer import task  # pylint: disable=import-outside-toplevel
    namespace = command_values(task.define_flags, "trainer.task", values, command="fit")
    result = task.run_job(namespace, os.environ)
    return Run(model_dir=namespace.model_dir or os.environ["AIP_MODEL_DIR"], export_dir=result.export_dir,
               history=result.history, metrics=result.metrics, test_metrics=result.test_metrics,
               report_dir=result.report_dir, test_report_dir=result.test_report_dir, summary=result.summary())


def load(model_dir: str) -> "Run":
    """The run a training run (`fit` or the command) left in `model_dir`: its history and newest export."""
    from effnet_common import fileio  # pylint: disable=import-outside-toplevel
    from trainer.inference import exported  # pylint: disable=import-outside-toplevel
    from trainer.runtime.rundir import RunDir  # pylint: disable=import-outside-toplevel
    run_dir = RunDir(model_dir)
    metrics = fileio.read_json(run_dir.path("eval", "metrics.json")) if fileio.exists(
        run_dir.path("eval", "metrics.json")) else None
    return Run(model_dir=model_dir, export_dir=exported.resolve_export_dir(model_dir), history=run_dir.read_history(),
               metrics=metrics, report_dir=run_dir.eval_dir if metrics else None)


@dataclasses.dataclass
class Report:
    """A report `Run.evaluate` wrote: metrics.json's content and the folder of its files."""
    metrics: dict
    report_dir: str

    def worst(self) -> List[dict]:
        """worst.csv's rows, worst first (image, true, predicted, and the probabilities)."""
        import csv  # pylint: disable=import-outside-toplevel
        from effnet_common import fileio  # pylint: disable=import-outside-toplevel
        from trainer.evaluation import evaluator  # pylint: disable=import-outside-toplevel
        return list(csv.DictReader(fileio.read_text(fileio.join(self.report_dir, evaluator.WORST_CSV)).splitlines()))

    def image(self, name: str) -> str:
        """The path of one of the report's pictures: confusion_matrix, worst_images,
        worst_explained, reliability."""
        from effnet_common import fileio  # pylint: disable=import-outside-toplevel
        from trainer.evaluation import evaluator  # pylint: disable=import-outside-toplevel
        return fileio.join(self.report_dir, evaluator.REPORT_IMAGES[name])


@dataclasses.dataclass
class Run:
    """A trained run: what `python -m trainer.task` wrote, and the commands that work on it.

    Attributes:
      model_dir: the run's folder.
      export_dir: its newest SavedModel (MODEL_DIR/export/N).
      history: history.json's epoch records (phase, epoch, loss, accuracy, val_loss, val_accuracy).
      metrics, test_metrics: the validation and test reports' metrics.json (None without them).
      report_dir, test_report_dir: their folders.
      summary: the lines the command prints at its end.
    """
    model_dir: str
    export_dir: Optional[str]
    history: List[dict]
    metrics: Optional[dict] = None
    test_metrics: Optional[dict] = None
    report_dir: Optional[str] = None
    test_report_dir: Optional[str] = None
    summary: List[str] = dataclasses.field(default_factory=list)
    _explainer: Any = dataclasses.field(default=None, repr=False)

    def explainer(self):
        """The run's `trainer.analysis.gradcam.Explainer` (its Keras model restored once)."""
        if self._explainer is None:
            from trainer.analysis import gradcam  # pylint: disable=import-outside-toplevel
            from trainer.inference import exported  # pylint: disable=import-outside-toplevel
            self._explainer = gradcam.explainer_for_export(exported.load_export(self.export_dir))
        return self._explainer

    def evaluate(self, data: str, *, output_dir: Optional[str] = None, explain: bool = True, **values) -> Report:
        """`python -m trainer.evaluate` on labelled `data` (TFRecord glob or class folders) through
        the export, its other flags as keywords (worst=, top_k=, label_offset=, ...); the report
        goes to `output_dir` (default: a new temporary folder). With `explain`, the worst images'
        Grad-CAM overlays too (worst_explained.png)."""
        from trainer import evaluate  # pylint: disable=import-outside-toplevel
        from trainer.evaluation import evaluator  # pylint: disable=import-outside-toplevel
        output_dir = output_dir or tempfile.mkdtemp(prefix="effnet-report-")
        namespace = command_values(evaluate.define_flags, "trainer.evaluate",
                                   {**values, "export_dir": self.export_dir, "data": data, "output_dir": output_dir},
                                   command="evaluate")
        kwargs = _library_kwargs(evaluator.write_report, namespace, data_path="data", model="export_dir")
        metrics = evaluator.write_report(**kwargs, explain=self.explainer().overlay_pngs if explain else None)
        return Report(metrics=metrics, report_dir=output_dir)

    def predict(self, images: Union[str, Sequence[str]], **values):
        """`python -m trainer.predict`'s answers through the export for image files, globs or
        folders, its other flags as keywords (batch_size=, ...): a
        `trainer.inference.prediction.Predictions` (paths, probabilities [N, C], skipped), row i
        for paths[i]; `class_names` names the columns."""
        from trainer import predict  # pylint: disable=import-outside-toplevel
        from trainer.inference import prediction  # pylint: disable=import-outside-toplevel
        namespace = command_values(predict.define_flags, "trainer.predict",
                                   {**values, "export_dir": self.export_dir}, command="predict")
        if namespace.runner.lower() != "local":
            raise flagutil.FlagError(f"predict(runner={namespace.runner!r}): Run.predict answers in memory on this "
                                     "machine; for a Beam pipeline that writes the CSV, run python -m trainer.predict "
                                     "--runner=... (docs/cloud.md, Dataflow)")
        paths = prediction.list_inputs([images] if isinstance(images, str) else list(images))
        kwargs = _library_kwargs(prediction.predict_files, namespace, model="export_dir")
        return prediction.predict_files(paths=paths, **kwargs)

    @property
    def class_names(self) -> tuple:
        from trainer.inference import exported  # pylint: disable=import-outside-toplevel
        return exported.class_names_of(self.export_dir)

    def explain(self, images: Union[str, Sequence[str]], **values) -> List[tuple]:
        """Grad-CAM of image files, globs or folders, read as `predict` reads them (its flags as
        keywords: batch_size=, max_image_side=): (path, [Explanation]) per readable image, one
        explanation per predicted class (each predicted label, multi-label); an Explanation has
        `class_index`, `probability`, `heatmap` ([S, S] in 0..1), `pixels` and `overlay()`."""
        from trainer import predict  # pylint: disable=import-outside-toplevel
        from trainer.inference import prediction  # pylint: disable=import-outside-toplevel
        namespace = command_values(predict.define_flags, "trainer.predict", values, command="explain")
        paths = prediction.list_inputs([images] if isinstance(images, str) else list(images))
        found = []
        for batch in prediction.read_files(paths, **_library_kwargs(prediction.read_files, namespace)):
            readable = [(path, data) for path, data, _ in batch if data is not None]
            found += zip([p for p, _ in readable], self.explainer().explain([d for _, d in readable]))
        return found

    def export(self, **values) -> str:
        """`python -m trainer.export` for this run (version=, export_base=, checkpoint=): another
        SavedModel version of the run as trained; returns its path, now `export_dir`."""
        from trainer.exporting import saved_model  # pylint: disable=import-outside-toplevel
        self.export_dir = saved_model.reexport(model_dir=self.model_dir, **values)
        return self.export_dir
