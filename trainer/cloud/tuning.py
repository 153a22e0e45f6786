"""Hyperparameter tuning: a study file (docs/cloud.md), then a HyperparameterTuningJob body.

The job is the study around the CustomJob's spec (`trialJobSpec`); Vertex AI appends
`--NAME=VALUE` for each tuned flag to every trial's trainer arguments and gives each trial its own
AIP_MODEL_DIR. Everything here but the YAML read is pure.
"""
from __future__ import annotations

import re
from typing import Sequence

from effnet_common import flagutil
from trainer.cloud import jobs
from trainer.cloud.errors import CloudError, check

GOALS = {"maximize": "MAXIMIZE", "minimize": "MINIMIZE"}
SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE"}
STUDY_KEYS = {"metric", "goal", "max_trial_count", "parallel_trial_count", "max_failed_trial_count", "parameters"}
PARAMETER_KEYS = {"double": {"type", "min", "max", "scale"}, "integer": {"type", "min", "max", "scale"},
                  "categorical": {"type", "values"}, "discrete": {"type", "values", "scale"}}
# Flags Vertex AI sets per trial (through AIP_*): a fixed value would make every trial share a folder.
PER_TRIAL_FLAGS = ("model_dir", "checkpoint_dir", "tensorboard_dir")


def load_study(path: str) -> dict:
    """The study YAML read and checked; parameters become StudySpec.ParameterSpec dicts.

    Raises:
      CloudError: naming the file and the key to fix.
    """
    import yaml  # pylint: disable=import-outside-toplevel  # only tuning needs it
    try:
        with open(path, encoding="utf-8") as f:
            study = yaml.safe_load(f)
    except OSError as e:
        raise CloudError(f"--hptune_config={path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise CloudError(f"--hptune_config={path} is not valid YAML ({flagutil.one_line(e)})") from None
    check(isinstance(study, dict), f"{path}: expected a mapping with metric, goal, max_trial_count, parameters")
    unknown = sorted(set(study) - STUDY_KEYS)
    check(not unknown, f"{path}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(sorted(STUDY_KEYS))}")
    check(str(study.get("goal", "")).lower() in GOALS, f"{path}: goal must be maximize or minimize")
    check(isinstance(study.get("metric"), str) and bool(study["metric"]),
          f"{path}: metric must name what the trainer reports, e.g. val_accuracy (its --hptune_metric)")
    for key in ("max_trial_count", "parallel_trial_count"):
        check(isinstance(study.get(key), int) and study[key] >= 1, f"{path}: {key} must be a whole number >= 1")
    check(study["parallel_trial_count"] <= study["max_trial_count"],
          f"{path}: parallel_trial_count must not exceed max_trial_count")
    params = study.get("parameters")
    check(isinstance(params, dict) and bool(params), f"{path}: parameters must map trainer flag names to ranges")
    study["parameters"] = [parameter_spec(name, value, where=path) for name, value in params.items()]
    return study


def parameter_spec(name: str, value, *, where: str) -> dict:
    """One StudySpec.ParameterSpec from `flag: {type, min, max, scale | values}`."""
    check(isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None,
          f"{where}: parameter {name!r} must be a trainer flag name such as finetune_learning_rate")
    check(name not in PER_TRIAL_FLAGS, f"{where}: {name} cannot be tuned; each trial gets its own")
    check(isinstance(value, dict) and value.get("type") in PARAMETER_KEYS,
          f"{where}: {name} needs type: double, integer, categorical or discrete")
    kind = value["type"]
    unknown = sorted(set(value) - PARAMETER_KEYS[kind])
    check(not unknown, f"{where}: {name} ({kind}) takes {', '.join(sorted(PARAMETER_KEYS[kind]))}, not "
          f"{', '.join(unknown)}")
    spec = {"parameterId": name}
    if kind in ("double", "integer"):
        spec[f"{kind}ValueSpec"] = _range_spec(name, value, kind=kind, where=where)
    else:
        spec[f"{kind}ValueSpec"] = _values_spec(name, value.get("values"), kind=kind, where=where)
    scale = value.get("scale")
    if scale is not None:
        check(scale in SCALES, f"{where}: {name} scale must be linear or log")
        check(scale != "log" or min(_bounds(spec)) > 0, f"{where}: {name} with scale: log needs values above 0")
        spec["scaleType"] = SCALES[scale]
    return spec


def _range_spec(name: str, value: dict, *, kind: str, where: str) -> dict:
    """{minValue, maxValue} of a double or integer parameter."""
    number = float if kind == "double" else int
    low, high = (_as_number(value.get(k)) for k in ("min", "max"))
    check(all(isinstance(v, (int, float)) and not isinstance(v, bool) and number(v) == v for v in (low, high))
          and low < high, f"{where}: {name} needs {kind} min < max")
    return {"minValue": number(low), "maxValue": number(high)}


def _values_spec(name: str, values, *, kind: str, where: str) -> dict:
    """{values} of a categorical (words) or discrete (sorted numbers) parameter."""
    check(isinstance(values, list) and len(values) >= 2, f"{where}: {name} needs a list of 2 or more values")
    if kind == "categorical":
        return {"values": [str(v) for v in values]}
    check(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
          f"{where}: {name} (discrete) takes numbers; use categorical for words")
    return {"values": sorted(float(v) for v in values)}


def _as_number(value):
    """YAML 1.1 reads 1e-5 (no dot) as a string; a number written so is still a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _bounds(spec: dict):
    inner = next(v for k, v in spec.items() if k.endswith("ValueSpec"))
    return inner.get("values") or (inner["minValue"], inner["maxValue"])


def check_tuning_args(study: dict, trainer_args: Sequence[str]) -> None:
    """Refuses trainer flags the study or Vertex AI sets per trial (they would collide)."""
    names = {arg[2:].partition("=")[0] for arg in trainer_args if arg.startswith("--")}
    for name in PER_TRIAL_FLAGS:
        check(name not in names, f"--{name} in the trainer arguments would make every trial write to one folder: "
              "drop it; Vertex AI gives each trial its own AIP_MODEL_DIR under the job's output directory")
    for spec in study["parameters"]:
        check(spec["parameterId"] not in names, f"--{spec['parameterId']} is tuned by the study: drop it from the "
              "trainer arguments (each trial gets its value appended)")
    metric = study["metric"]
    check(not metric.startswith("val_") or "eval_data" in names, f"the study's metric {metric} is measured on "
          "validation data: add --eval_data=gs://... to the trainer arguments")
    if metric != "val_accuracy":
        check(f"--hptune_metric={metric}" in trainer_args, f"the study's metric is {metric}: add "
              f"--hptune_metric={metric} to the trainer arguments so the trainer reports it")


def build_tuning_job(spec: jobs.JobSpec, study: dict) -> dict:
    """The HyperparameterTuningJob REST resource: the study around the CustomJob's spec."""
    custom = jobs.build_custom_job(spec)
    job = {"displayName": spec.display_name,
           "studySpec": {"metrics": [{"metricId": study["metric"], "goal": GOALS[study["goal"].lower()]}],
                         "parameters": study["parameters"]},
           "maxTrialCount": study["max_trial_count"], "parallelTrialCount": study["parallel_trial_count"],
           "trialJobSpec": custom["jobSpec"], "labels": dict(custom["labels"], kind="hptune")}
    if "max_failed_trial_count" in study:
        job["maxFailedTrialCount"] = study["max_failed_trial_count"]
    return job
