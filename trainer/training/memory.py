"""Per-phase memory estimate, batch-size plan (plan.json) and recovery from out-of-memory.

Opening the backbone for fine-tuning multiplies the memory a training step needs: with only the
head training, the backbone runs as inference and frees each activation as soon as the next
layer has read it; once a layer trains, back-propagation must keep, for every layer from the
first trainable one on, the tensors its gradient reads. So the fine-tune phase fits a much
smaller batch than the frozen one, and a fixed batch size that suits one phase either wastes
the other or dies out of memory. This module sizes each phase's batch from the built model.

The estimate of one replica's peak memory, for a per-replica batch of `b` examples split into
`k` micro-batches (gradient accumulation; k = 1 without), is

    fixed_bytes + ceil(b / k) * bytes_per_example + b * input_bytes_per_example

  fixed_bytes = parameters (at their variable dtype)
              + gradients and Adam's two slots for the trainable parameters
              (+ one more copy of the trainable parameters with gradient accumulation)
              + the runtime's workspace (on CPU: TensorFlow's graphs, executor and thread
                pools, measured; on accelerators a margin for cuDNN's / XLA's scratch space)
  bytes_per_example = activations, from the model's layer output shapes at their dtype
              (mixed precision halves them): the larger of the forward peak (tensors alive
              while the forward pass runs, those kept for the backward pass included) and the
              kept tensors plus the backward pass's largest working set
  input_bytes_per_example = the model input of the batches the input pipeline holds

Which tensors the backward pass keeps is the activation walk's (trainer/training/activations.py); the
budget is the device's (trainer/runtime/devices.py). bench/memory.py compares the estimate with
measured peaks; docs/memory.md holds the table.

`build_plan` turns the estimates into integer batch sizes (`auto` = the largest that fits) and
the plan.json document, writing nothing (train.py writes it once the run may change its folder); when a phase runs out of memory anyway, training
halves its batch (trainer/training/oom.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tf_keras as keras

from trainer.configs.config import ConfigError, Phase
from trainer.models import classifier, finetuning
from trainer.runtime.devices import Budget, GIB, MIB, detect_budget, device_kind
from trainer.runtime.rundir import RunDir
from trainer.training import embeddings, schedules
from trainer.training.activations import Activations, analyze_activations

# An automatic batch must fit in (1 - SAFETY_FRACTION) of the budget: the estimate is meant to
# be within +-25 % of the measured peak (bench/memory.py), and an allocator fragments.
SAFETY_FRACTION = 0.2
# Automatic per-replica batches are multiples of this (tensor-core and TPU friendly) when the
# budget allows at least that many examples.
BATCH_MULTIPLE = 8
ADAM_SLOTS = 2
# Batches of model input the input pipeline holds besides the one being trained on
# (tf.data prefetch and the batch being assembled).
INPUT_BATCHES_IN_FLIGHT = 2
# On CPU the process also holds TensorFlow's traced and optimized graphs, the executor, oneDNN
# and thread pools: measured with bench/memory.py (docs/memory.md), about 215 MiB for B0's
# frozen phase (forward graph) plus about 0.25 MiB per layer the backward pass goes through
# (B0: 237 layers, measured +50 MiB; B3: 380, +120 MiB).
CPU_RUNTIME_BYTES = 215 * MIB
CPU_BYTES_PER_BACKWARD_LAYER = 256 * 1024
# GPU/TPU: scratch space of cuDNN / XLA and allocator fragmentation. Not measured here (no
# accelerator on the development machines): a round margin, to be checked with the benchmark.
ACCELERATOR_WORKSPACE_BYTES = 1 * GIB


# ---------------------------------------------------------------------------------------------
# The estimate of one phase.


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Peak memory of one replica in one phase: fixed_bytes + batch * bytes_per_example.

    Attributes:
      phase: the phase name.
      total_params / trainable_params: parameter counts in this phase.
      param_bytes: all variables, at their dtype.
      optimizer_bytes: gradients and Adam slots (and accumulators) of the trainable variables.
      workspace_bytes: the runtime's own memory (see the module docstring).
      bytes_per_example: activation bytes per example of a micro-batch (without accumulation,
        of the per-replica batch).
      activations: the breakdown of the activation part.
      accumulate_steps: micro-batches per step; the activation term applies to one micro-batch.
    """
    phase: str
    total_params: int
    trainable_params: int
    param_bytes: int
    optimizer_bytes: int
    workspace_bytes: int
    bytes_per_example: int
    activations: Activations
    accumulate_steps: int = 1

    @property
    def fixed_bytes(self) -> int:
        return self.param_bytes + self.optimizer_bytes + self.workspace_bytes

    @property
    def input_bytes_per_example(self) -> int:
        """Model input held by the input pipeline, per example of the per-replica batch."""
        return self.activations.input * INPUT_BATCHES_IN_FLIGHT

    def peak_bytes(self, per_replica_batch: int) -> int:
        """Estimated peak for a per-replica batch (split into accumulate_steps micro-batches)."""
        micro = math.ceil(per_replica_batch / self.accumulate_steps)
        return (self.fixed_bytes + micro * self.bytes_per_example
                + per_replica_batch * self.input_bytes_per_example)


def estimate_phase(model: keras.Model, *, phase: Phase, bn: str, device: str = "CPU",
                   accumulate_steps: int = 1, on_embeddings: bool = False) -> Estimate:
    """One replica's peak memory in `phase`, from the network's structure and the phase's
    trainable mask (`finetuning.trainable_mask`); the model itself is not changed.

    Args:
      model: a classifier from `classifier.build_classifier` (any functional Keras model works).
      phase: the phase; its `unfreeze` decides which layers train.
      bn: the run's --bn (frozen or trainable).
      device: CPU, GPU or TPU: which workspace term applies.
      accumulate_steps: gradient accumulation micro-batches per step.
      on_embeddings: `model` is the head alone (`classifier.detached_head`), every layer of it training.
    """
    mask = ({id(layer): True for layer in classifier.leaf_layers(model)} if on_embeddings
            else finetuning.trainable_mask(model, phase=phase, bn=bn))
    acts = analyze_activations(model, mask)
    variables = {id(v): (v, mask[id(layer)] and v.trainable)
                 for layer in classifier.leaf_layers(model) for v in layer.weights}
    trainable_bytes = sum(_bytes(v) for v, trains in variables.values() if trains)
    trainable_params = sum(int(np.prod(v.shape)) for v, trains in variables.values() if trains)
    copies = 1 + ADAM_SLOTS + (1 if accumulate_steps > 1 else 0)
    return Estimate(
        phase=phase.name, total_params=sum(int(np.prod(v.shape)) for v, _ in variables.values()),
        trainable_params=trainable_params, param_bytes=sum(_bytes(v) for v, _ in variables.values()),
        optimizer_bytes=copies * trainable_bytes,
        workspace_bytes=_workspace_bytes(device=device, acts=acts),
        bytes_per_example=acts.peak, activations=acts, accumulate_steps=accumulate_steps)


def _bytes(variable) -> int:
    return int(np.prod(variable.shape)) * variable.dtype.size


def _workspace_bytes(*, device: str, acts: Activations) -> int:
    if device != "CPU":
        return ACCELERATOR_WORKSPACE_BYTES
    return CPU_RUNTIME_BYTES + CPU_BYTES_PER_BACKWARD_LAYER * acts.backward_layers


# ---------------------------------------------------------------------------------------------
# The plan.


def auto_batch_size(estimate: Estimate, *, budget: Budget, replicas: int, accumulate_steps: int = 1,
                    max_batch_size: int, num_examples: Optional[int]) -> int:
    """The largest global batch that fits one replica's budget with the safety margin.

    The per-replica micro-batch is a multiple of BATCH_MULTIPLE when at least that many fit,
    else the largest that fits; the global batch is micro * accumulate_steps * replicas, capped
    by --max_batch_size and the dataset's size (rounded down to a whole number of micro-batches).

    Raises:
      ConfigError: not even one example per replica fits.
    """
    usable = budget.bytes * (1 - SAFETY_FRACTION)
    unit = replicas * accumulate_steps
    micro = _largest_fitting(lambda m: estimate.peak_bytes(m * accumulate_steps) <= usable)
    if micro == 0:
        raise ConfigError(_too_small_message(estimate, budget=budget, replicas=replicas))
    if micro >= BATCH_MULTIPLE:
        micro -= micro % BATCH_MULTIPLE
    cap = min(max_batch_size, num_examples) if num_examples else max_batch_size
    if micro * unit > cap:
        micro = max(1, cap // unit)
        if micro >= BATCH_MULTIPLE:
            micro -= micro % BATCH_MULTIPLE
    return micro * unit


def _largest_fitting(fits: Callable[[int], bool], limit: int = 1 << 20) -> int:
    """Largest m in [0, limit] with fits(m), fits being monotone (false above some m)."""
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _too_small_message(estimate: Estimate, *, budget: Budget, replicas: int) -> str:
    need = estimate.peak_bytes(estimate.accumulate_steps) / (1 - SAFETY_FRACTION)
    return (f"the {estimate.phase} phase does not fit even 1 example per replica ({replicas} replica(s)): it needs "
            f"about {need / GIB:.2f} GiB per replica (fixed {estimate.fixed_bytes / GIB:.2f} GiB + "
            f"{estimate.bytes_per_example / MIB:.0f} MiB per example, with a {SAFETY_FRACTION:.0%} margin) but the "
            f"budget is {budget.bytes / GIB:.2f} GiB ({budget.source}); pass a larger --memory_budget_gb, or a "
            "smaller --image_size or --backbone, --unfreeze=top:N, or --mixed_precision")


def build_plan(phases: Sequence[Phase], *, model: keras.Model, bn: str, runtime, num_examples: Optional[int],
               replicas: int, device: Optional[str] = None, budget: Optional[Budget] = None,
               reserved_bytes: int = 0) -> Tuple[Tuple[schedules.PhasePlan, ...], dict]:
    """Each phase's plan (`schedules.PhasePlan`): an integer global batch divisible by
    replicas * accumulate_steps, and the steps and learning rates that follow from it; and the
    plan.json document. Writes nothing.

    Estimates every phase from `model`'s structure (nothing in it changes) and resolves
    `auto` batch sizes. Opening each phase's layers is also what checks `--unfreeze` against
    the backbone, so a run is refused here, before anything is written.

    Args:
      phases: the run's phases; `bn`: its --bn; `runtime`: its `config.Runtime` (budget, caps,
        accumulation); `num_examples`: training examples (auto batches never exceed them);
        `reserved_bytes`: host RAM the pixel cache keeps (left out of a detected CPU budget).

    Raises:
      ConfigError: a batch size that does not divide among the replicas and micro-batches, a
        budget too small for one example per replica, or an undetectable budget with `auto`.
      WeightsError: `--unfreeze=top:N` beyond the backbone's blocks.
    """
    device = device or device_kind()
    if budget is None:
        budget = detect_budget(memory_budget_gb=runtime.memory_budget_gb, replicas=replicas, device=device,
                               reserved_bytes=reserved_bytes)
    planned, entries = [], []
    for phase in phases:
        on_embeddings = _on_embeddings(phase, runtime=runtime, bn=bn, device=device)
        # The frozen phase on cached embeddings trains the head alone, without accumulation (trainer.training.embeddings).
        steps = 1 if on_embeddings else runtime.accumulate_steps
        estimate = estimate_phase(classifier.detached_head(model) if on_embeddings else model, phase=phase, bn=bn,
                                  device=device, accumulate_steps=steps, on_embeddings=on_embeddings)
        batch = _resolve_batch(phase, estimate=estimate, budget=budget, runtime=runtime, num_examples=num_examples,
                               replicas=replicas, device=device, accumulate_steps=steps)
        planned.append(schedules.PhasePlan(
            phase.with_batch_size(batch), replicas=replicas, accumulate_steps=steps,
            num_examples=num_examples, steps_cap=runtime.steps_per_epoch, auto=phase.batch_size == "auto",
            total_params=estimate.total_params, trainable_params=estimate.trainable_params,
            on_embeddings=on_embeddings))
        entries.append(plan_entry(planned[-1], estimate=estimate))
    document = {"replicas": replicas, "device": device, "accumulate_steps": runtime.accumulate_steps,
                "budget_bytes": budget.bytes if budget else None, "budget_source": budget.source if budget else None,
                "safety_fraction": SAFETY_FRACTION, "phases": entries}
    return tuple(planned), document


def _on_embeddings(phase: Phase, *, runtime, bn: str, device: str) -> bool:
    """Whether the frozen phase trains its head on cached embeddings (the plan decides; training follows).

    Raises:
      ConfigError: --frozen_cache=on where the cache does not apply.
    """
    if phase.name != "frozen":
        return False
    cached, reason = embeddings.applies(setting=runtime.frozen_cache, bn=bn, tpu=device == "TPU")
    if not cached and runtime.frozen_cache == "on":
        raise ConfigError(f"--frozen_cache=on does not apply here ({reason}): pass --frozen_cache=auto")
    logging.info("frozen phase %s: %s", "on cached embeddings" if cached else "streams images", reason)
    return cached


def _resolve_batch(phase: Phase, *, estimate: Estimate, budget: Optional[Budget], runtime,
                   num_examples: Optional[int], replicas: int, device: str, accumulate_steps: int) -> int:
    unit = replicas * accumulate_steps
    if phase.batch_size == "auto":
        if phase.epochs == 0:
            return unit  # a skipped phase needs a number, not a plan
        if budget is None:
            raise ConfigError(f"--{phase.name}_batch_size=auto: the {device} memory could not be detected; "
                              "pass --memory_budget_gb (memory of one device) or a number")
        return auto_batch_size(estimate, budget=budget, replicas=replicas, accumulate_steps=accumulate_steps,
                               max_batch_size=runtime.max_batch_size, num_examples=num_examples)
    batch = int(phase.batch_size)
    if batch % unit:
        what = f"the {replicas} replicas" + (f" x {accumulate_steps} accumulation steps"
                                             if accumulate_steps > 1 else "")
        raise ConfigError(f"--{phase.name}_batch_size={batch} is not divisible by {what}; pass a multiple of {unit}")
    if budget is not None and phase.epochs > 0:
        if estimate.peak_bytes(accumulate_steps) > budget.bytes:
            raise ConfigError(_too_small_message(estimate, budget=budget, replicas=replicas))
        need = estimate.peak_bytes(batch // replicas)
        if need > budget.bytes:
            logging.warning("--%s_batch_size=%d: estimated %.2f GiB per replica exceeds the %.2f GiB budget (%s); "
                            "an out-of-memory error will halve it", phase.name, batch, need / GIB,
                            budget.bytes / GIB, budget.source)
    return batch


def plan_entry(phase_plan: schedules.PhasePlan, *, estimate: Estimate) -> dict:
    """The plan.json record of one phase: its plan and its memory estimate."""
    return dict(
        phase_plan.to_dict(),
        **_estimate_entry(estimate, per_replica=phase_plan.per_replica_batch_size))


def _estimate_entry(estimate: Estimate, *, per_replica: int) -> dict:
    return {
        "total_params": estimate.total_params, "trainable_params": estimate.trainable_params,
        "fixed_bytes": estimate.fixed_bytes, "bytes_per_example": estimate.bytes_per_example,
        "input_bytes_per_example": estimate.input_bytes_per_example,
        "estimated_peak_bytes": estimate.peak_bytes(per_replica),
        "first_trainable_layer": estimate.activations.first_trainable,
        "non_trainable_params": estimate.total_params - estimate.trainable_params,
        "oom_retries": [],
    }


def format_plan(document: dict) -> str:
    """The plan as the table printed at start."""
    budget = document.get("budget_bytes")
    head = (f"memory plan: {document['replicas']} replica(s) on {document['device']}, budget "
            + (f"{budget / GIB:.2f} GiB per replica ({document['budget_source']})" if budget else "unknown")
            + (f", {document['accumulate_steps']} accumulation steps" if document["accumulate_steps"] > 1 else ""))
    lines = [head, f"  {'phase':<9}{'unfreeze':>9}{'trainable':>12}{'batch':>7}{'lr':>10}{'fixed MiB':>11}"
                   f"{'MiB/example':>12}{'peak MiB':>10}"]
    for e in document["phases"]:
        lines.append(f"  {e['name']:<9}{e['unfreeze']:>9}{e['trainable_params']:>12,}"
                     f"{str(e['batch_size']) + ('*' if e['auto'] else ''):>7}{e['learning_rate']:>10.3g}"
                     f"{e['fixed_bytes'] / MIB:>11.0f}{e['bytes_per_example'] / MIB:>12.1f}"
                     f"{e['estimated_peak_bytes'] / MIB:>10.0f}")
    return "\n".join(lines + ["  (* = auto; peak is per replica at the planned batch)"])


# ---------------------------------------------------------------------------------------------
# plan.json: written here only, once when a run begins and again for each out-of-memory revision.


def write_plan(run_dir: RunDir, document: dict) -> None:
    """plan.json of a run that passed every check (the chief's, before its first phase)."""
    run_dir.write_plan(document)


def record_retry(run_dir: RunDir, *, old: schedules.PhasePlan, new: schedules.PhasePlan, reason: str) -> None:
    """Writes the revised plan of a phase that ran out of memory (trainer.training.oom) into
    plan.json and appends the retry."""
    document = run_dir.read_plan() or {"phases": []}
    entry = next((e for e in document["phases"] if e["name"] == new.name), None)
    if entry is None:
        entry = {"name": new.name, "oom_retries": []}
        document["phases"].append(entry)
    entry.setdefault("oom_retries", []).append({"batch_size": old.batch_size, "new_batch_size": new.batch_size,
                                                "error": reason})
    entry.update(new.to_dict())
    run_dir.write_plan(document)
