"""`--runner` and `--beam_options`: the same two flags on every command that runs a pipeline.

`--runner=local` (the default) keeps a command on this machine's threads; any runner Apache Beam
knows (DirectRunner, DataflowRunner, PrismRunner, FlinkRunner, ...) runs its per-image work as a
Beam pipeline, with Beam's own pipeline options passed through as one shell-quoted string
(`--beam_options="--project=P --region=R --temp_location=gs://B/tmp --num_workers=8"`). Every
mistake Beam would find late (a runner it does not know, an option it would silently discard,
a value its parser rejects, a Dataflow job without project, region or a gs:// temp_location) is
refused here, before anything is listed or read, in one line.

A DataflowRunner dry run (`--beam_options="... --dry_run=true --dataflow_job_file=job.json"`)
builds the job as the runner translates it, submits nothing and needs no network: the job file
holds the job request's head (name, type) and, under "pipeline", the translated pipeline (the
graph Dataflow stages as pipeline.pb and draws in its console), whose step names `step_names`
lists. Staging (the package, the pipeline file) and the environment block are left to a real
submission, which needs the network.

Nothing here imports Apache Beam at module level: the commands define these flags whether or not
the `[beam]` extra is installed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shlex
import tempfile
import uuid
from typing import List, Optional, Tuple

from absl import logging
import tensorflow as tf

from effnet_common import errors, fileio, flagutil

LOCAL = "local"
DATAFLOW = "DataflowRunner"
_DATAFLOW_REQUIRED = ("project", "region", "temp_location")
_INSTALL = "pip install 'effnet-trainer[beam]'"


class BeamError(errors.UserError):
    """A runner or pipeline option that cannot work; the message says how to fix it."""


def define_flags() -> None:
    """--runner and --beam_options, for each command that can run a pipeline."""
    flagutil.define("string", "runner", LOCAL, "Where the per-image work runs: local (this machine's threads) or "
                    "an Apache Beam runner: DirectRunner, DataflowRunner, PrismRunner, ... (docs/cloud.md, Dataflow; "
                    f"{_INSTALL}).", group="performance")
    flagutil.define("string", "beam_options", "", "Apache Beam pipeline options for --runner, one shell-quoted "
                    "string, e.g. \"--project=P --region=R --temp_location=gs://B/tmp --num_workers=8 "
                    "--setup_file=./setup.py\"; a Dataflow dry run: \"... --dry_run=true "
                    "--dataflow_job_file=job.json\".", group="performance")


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """A checked runner and its pipeline options (as given on the command line)."""
    runner: str
    argv: Tuple[str, ...]

    def options(self, *extra: str):
        """Beam's PipelineOptions for one pipeline; `extra` options come after the user's."""
        from apache_beam.options.pipeline_options import PipelineOptions
        return PipelineOptions(list(self.argv) + list(extra), runner=self.runner)

    @property
    def dry_run(self) -> bool:
        from apache_beam.options.pipeline_options import TestOptions
        return _truthy(self.options().view_as(TestOptions).dry_run)

    @property
    def job_file(self) -> Optional[str]:
        from apache_beam.options.pipeline_options import DebugOptions
        return self.options().view_as(DebugOptions).dataflow_job_file


def from_flags(*, runner: str, beam_options: str) -> Optional[BeamSettings]:
    """The settings of a Beam runner, or None for `local`.

    Raises:
      BeamError: Beam not installed, a runner it does not know, options it would reject or
        discard, or a Dataflow job without project, region and a gs:// temp_location.
    """
    runner = (runner or "").strip()
    if runner.lower() == LOCAL:
        if (beam_options or "").strip():
            raise BeamError(f"--beam_options={beam_options!r} is given but --runner=local runs no pipeline: pass "
                            "--runner=DirectRunner (or DataflowRunner, ...) or drop --beam_options")
        return None
    try:
        import apache_beam  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel
    except ImportError as e:
        raise BeamError(f"--runner={runner} needs Apache Beam, which is not installed ({e}): {_INSTALL}, "
                        "or pass --runner=local") from None
    settings = BeamSettings(runner=_known_runner(runner), argv=tuple(_split(beam_options)))
    _check_options(settings)
    return settings


def _known_runner(runner: str) -> str:
    """Beam's own spelling of a runner it knows (case and the 'Runner' suffix forgiven)."""
    from apache_beam.options.pipeline_options import StandardOptions
    names = {n.lower(): n for n in StandardOptions.KNOWN_RUNNER_NAMES}
    found = names.get(runner.lower()) or names.get(runner.lower() + "runner")
    if not found:
        raise BeamError(f"--runner={runner} is not a runner Apache Beam knows: pass local or one of "
                        f"{', '.join(sorted(set(names.values())))}")
    return found


def _split(beam_options: str) -> List[str]:
    try:
        argv = shlex.split(beam_options or "")
    except ValueError as e:
        raise BeamError(f"--beam_options={beam_options!r} does not split as a command line ({e}): quote it as one "
                        "string, e.g. --beam_options=\"--project=P --temp_location=gs://B/tmp\"") from None
    runner_flags = [a for a in argv if a.split("=", 1)[0] == "--runner"]
    if runner_flags:
        raise BeamError(f"--beam_options holds {runner_flags[0]}: name the runner with the command's own --runner "
                        "flag, e.g. --runner=DataflowRunner")
    return argv


def _check_options(settings: BeamSettings) -> None:
    """Refuses what Beam would discard with a warning or reject with a usage dump."""
    options = settings.options()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            known = options.get_all_options()
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit:  # argparse's error(): a value Beam's parser rejects
        said = stderr.getvalue().strip().splitlines()
        raise BeamError(f"--beam_options rejected by Apache Beam: {said[-1] if said else 'bad option'}; fix the value "
                        "(Beam's options: python -m apache_beam.examples.wordcount --help)") from None
    unknown = sorted(set(given) - set(known))
    strays = [a for a in settings.argv if not a.startswith("-")]
    if unknown or (strays and not _values_of_options(settings.argv, strays)):
        what = ", ".join(f"--{n}" for n in unknown) or " ".join(strays)
        raise BeamError(f"--beam_options holds {what}, which Apache Beam does not know: check the spelling "
                        "(Beam's options: python -m apache_beam.examples.wordcount --help)")
    if settings.runner == DATAFLOW:
        _check_dataflow(known, options)
    elif _truthy(known.get("dry_run")):
        raise BeamError(f"--beam_options holds --dry_run, which only DataflowRunner honours ({settings.runner} "
                        "would run the pipeline): pass --runner=DataflowRunner or drop --dry_run")


def _values_of_options(argv: Tuple[str, ...], strays: List[str]) -> bool:
    """Whether every word without a leading dash is the value of the option before it."""
    return all(i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
               for i, word in enumerate(argv) if word in strays)


def _check_dataflow(known: dict, options) -> None:
    """Project, region and a well-formed gs:// temp_location: where one is missing or malformed,
    Beam would go looking for a default bucket over the network, and retry."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    missing = [n for n in _DATAFLOW_REQUIRED if not known.get(n)]
    if missing:
        raise BeamError(f"--runner=DataflowRunner needs {', '.join('--' + n for n in missing)} in --beam_options: "
                        "e.g. --beam_options=\"--project=P --region=us-central1 --temp_location=gs://B/tmp\"")
    wrong = PipelineOptionsValidator(options, None).validate_gcs_path(options.view_as(GoogleCloudOptions),
                                                                      "temp_location")
    if wrong or not str(known["temp_location"]).startswith("gs://"):
        raise BeamError(f"--beam_options --temp_location={known['temp_location']} is not a Cloud Storage folder "
                        f"({flagutil.one_line(wrong[0]) if wrong else 'not gs://'}): Dataflow's workers need a "
                        "gs://BUCKET/PATH they can write")


def _truthy(value) -> bool:
    return str(value).strip().lower() not in ("", "0", "false", "no", "none")


def new_pipeline(settings: BeamSettings, *extra: str):
    """A Beam pipeline on the settings' runner; Beam's own validation errors become one line.

    Beam's INFO records (type hints, every worker's harness lines relayed by DirectRunner) are
    left out of the command's log; Dataflow's stay (the job's console link, its states)."""
    import logging as std_logging
    import apache_beam as beam
    std_logging.getLogger("apache_beam").setLevel(std_logging.WARNING)
    std_logging.getLogger("apache_beam.runners.dataflow").setLevel(std_logging.INFO)
    try:
        return beam.Pipeline(options=settings.options(*extra))
    except ValueError as e:
        raise BeamError(f"--beam_options rejected by {settings.runner}: {flagutil.one_line(e)}") from None


def run(pipeline, *, settings: BeamSettings, what: str, job_file: Optional[str] = None):
    """Runs `pipeline` to its end (or, in a dry run, writes its job file); returns Beam's result.

    Raises:
      BeamError: the pipeline ended in a state other than DONE (the runner's log says why).
    """
    from apache_beam.runners.runner import PipelineState
    result = pipeline.run()
    if settings.dry_run:
        graph = job_graph(result)
        if job_file:
            fileio.write_text_atomic(job_file, json.dumps(graph, indent=1) + "\n")
        logging.info("dry run of the %s pipeline: steps %s; nothing submitted", what, ", ".join(step_names(graph)))
        return result
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise BeamError(f"the {what} pipeline ended {state} on {settings.runner}: the runner's log says why")
    return result


def job_graph(result) -> dict:
    """A DataflowRunner dry run's job: the request's head (name, type; staging and the
    environment come with a real submission) and, under "pipeline", the translated pipeline
    Dataflow would stage as pipeline.pb."""
    from google.protobuf import json_format
    job = result.job
    graph = json.loads(job.json())
    graph["pipeline"] = json_format.MessageToDict(job.proto_pipeline)
    return graph


def step_names(graph: dict) -> List[str]:
    """The top-level steps of a job graph (the boxes Dataflow's console draws), in graph order."""
    components = graph["pipeline"]["components"]["transforms"]
    roots = graph["pipeline"].get("rootTransformIds", [])
    top = [t for root in roots for t in components[root].get("subtransforms", [])] or roots
    return [components[t]["uniqueName"] for t in top]


def job_file_for(settings: BeamSettings, suffix: str) -> Optional[str]:
    """The --dataflow_job_file of one of a command's several pipelines: NAME-SUFFIX.EXT."""
    path = settings.job_file
    if not path:
        return None
    stem, dot, ext = path.rpartition(".")
    return f"{stem}-{suffix}.{ext}" if dot and "/" not in ext else f"{path}-{suffix}"


def work_root(settings: BeamSettings) -> str:
    """Where a command's work lists go: the pipeline's --temp_location (the workers can read it),
    else local temp (DirectRunner and Prism run on this machine)."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    return settings.options().view_as(GoogleCloudOptions).temp_location or tempfile.gettempdir()


class WorkDir:
    """A folder of its own under `work_root` for one pipeline's work lists, removed after: the
    lists travel as files, not inside the job graph (whose size Dataflow limits)."""

    def __init__(self, settings: BeamSettings, *, prefix: str):
        self.root = fileio.join(work_root(settings), f"{prefix}-{uuid.uuid4().hex[:12]}")

    def __enter__(self) -> "WorkDir":
        tf.io.gfile.makedirs(self.root)
        return self

    def __exit__(self, *exc) -> None:
        if tf.io.gfile.exists(self.root):
            tf.io.gfile.rmtree(self.root)

    def path(self, name: str) -> str:
        return fileio.join(self.root, name)

    def read_lines(self, prefix: str) -> List[str]:
        """The non-empty lines of every file whose name starts with `prefix`, files in name order."""
        paths = sorted(tf.io.gfile.glob(self.path(prefix) + "*"))
        return [line for p in paths for line in fileio.read_text(p).splitlines() if line.strip()]
