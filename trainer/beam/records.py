"""`trainer.prepare --runner=...`: prepare's per-image work as two Apache Beam pipelines.

`trainer.data.preparing.prepare` lists the input, splits, checks coverage, counts shards, writes
labels.txt and dataset.json and swaps the folder into place whoever does the per-image work;
`BeamWorkers` does that work on a Beam runner, as `preparing.LocalWorkers` does on threads:

1. **check**: every listed file is read and decoded once, in parallel (`shards.check_image`, the
   local path's own check); only the small result (format, size, why skipped) comes back to the
   launching machine, which splits the valid images exactly as the local path does
   (`preparing.split_examples`, same seed, same split);
2. **write**: every record is serialized in parallel (`shards.serialize_record`, the one producer
   of a record), grouped by the shard `shards.shard_layout` assigns it, ordered as the local
   writer orders it, and written as `train-/validation-/test-NNNNN-of-NNNNN.tfrecord`.

So for the same input and seed the shards hold the same records, in the same order, as the local
path's. The listing and the split stay on the launching machine: they need every file's metadata
at once, and errors there (an empty class, a class without training images) end in one line
before anything is written. Between the two the work list travels as JSON lines under the
pipeline's `--temp_location` (local temp where none is given, as for DirectRunner), not inside
the job graph, whose size Dataflow limits.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Sequence, Tuple

from absl import logging
import tensorflow as tf

from effnet_common import fileio
from trainer.beam import options as beam_options
from trainer.data import shards
from trainer.data.importfile import Source
from trainer.data.shards import Checked

_LINES = ".jsonl"


def to_json(checked: Checked) -> dict:
    """A Checked as plain JSON values (its Source nested)."""
    return dataclasses.asdict(checked)


def from_json(value: dict) -> Checked:
    """The Checked `to_json` wrote."""
    return Checked(**{**_tuples(value), "source": _source(value["source"])})


def _source(value: dict) -> Source:
    return Source(**_tuples(value))


def _tuples(value: dict) -> dict:
    """JSON's lists back to the dataclasses' tuples (labels, original_size)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def check_line(line: str, *, max_image_side: int) -> str:
    """One work line {"i", "source"} -> {"i", "checked"}: the local path's check of one file."""
    item = json.loads(line)
    checked = shards.check_image(_source(item["source"]), max_image_side=max_image_side)
    return json.dumps({"i": item["i"], "checked": to_json(checked)})


def record_of(line: str, *, class_index: Dict[str, int]) -> Tuple[str, Tuple[int, bytes]]:
    """One layout line {"shard", "pos", "checked"} -> (shard file name, (position, record bytes))."""
    item = json.loads(line)
    return item["shard"], (item["pos"], shards.serialize_record(from_json(item["checked"]), class_index=class_index))


def write_shard(group: Tuple[str, Sequence[Tuple[int, bytes]]], *, folder: str) -> str:
    """Writes one shard's records in the local writer's order; returns its file name."""
    name, records = group
    with tf.io.TFRecordWriter(os.path.join(folder, name)) as writer:
        for _, record in sorted(records, key=lambda r: r[0]):
            writer.write(record)
    return name


@dataclasses.dataclass(frozen=True)
class BeamWorkers:
    """prepare's per-image work on a Beam runner (`preparing.Workers`)."""
    settings: beam_options.BeamSettings

    def check_all(self, sources: Sequence[Source], *, max_image_side: int) -> List[Checked]:
        """`shards.check_image` of every source as a Beam pipeline, in the sources' order."""
        with beam_options.WorkDir(self.settings, prefix="effnet-prepare") as work:
            lines = (json.dumps({"i": i, "source": dataclasses.asdict(s)}) for i, s in enumerate(sources))
            fileio.write_text_atomic(work.path("sources" + _LINES), "\n".join(lines) + "\n")
            logging.info("checking %d files on %s", len(sources), self.settings.runner)
            pipeline = build_check_pipeline(self.settings, sources_file=work.path("sources" + _LINES),
                                            checked_prefix=work.path("checked"), max_image_side=max_image_side)
            beam_options.run(pipeline, settings=self.settings, what="check")
            found = sorted((json.loads(line) for line in work.read_lines("checked")), key=lambda item: item["i"])
        if [item["i"] for item in found] != list(range(len(sources))):
            raise beam_options.BeamError(f"the check pipeline on {self.settings.runner} returned {len(found)} results "
                                         f"for {len(sources)} files: run again; the runner's log says what was lost")
        return [from_json(item["checked"]) for item in found]

    def write_all(self, folder: str, splits: Dict[str, List[Checked]], counts: Dict[str, int], *,
                  class_index: Dict[str, int]) -> Dict[str, List[str]]:
        """The shards `shards.shard_layout` says, written by a Beam pipeline under `folder`."""
        layout = shards.shard_layout(splits, counts)
        with beam_options.WorkDir(self.settings, prefix="effnet-prepare") as work:
            lines = (json.dumps({"shard": name, "pos": pos, "checked": to_json(c)})
                     for shards_of in layout.values() for name, members in shards_of for pos, c in enumerate(members))
            fileio.write_text_atomic(work.path("layout" + _LINES), "\n".join(lines) + "\n")
            logging.info("writing %d shards on %s", sum(len(s) for s in layout.values()), self.settings.runner)
            pipeline = build_write_pipeline(self.settings, layout_file=work.path("layout" + _LINES), folder=folder,
                                            class_index=class_index)
            beam_options.run(pipeline, settings=self.settings, what="write")
        return {split: [name for name, _ in shards_of] for split, shards_of in layout.items()}

    def dry_run(self, *, output_dir: str, max_image_side: int) -> Dict[str, List[str]]:
        """Both pipelines' job graphs (DataflowRunner, `--dry_run=true`), their files as
        --dataflow_job_file says with -check and -write added; nothing is listed, read or submitted.
        Returns the step names of each."""
        work = fileio.join(beam_options.work_root(self.settings), "effnet-prepare-dry-run")
        steps = {}
        for what, pipeline in (
                ("check", build_check_pipeline(self.settings, sources_file=fileio.join(work, "sources" + _LINES),
                                               checked_prefix=fileio.join(work, "checked"),
                                               max_image_side=max_image_side)),
                ("write", build_write_pipeline(self.settings, layout_file=fileio.join(work, "layout" + _LINES),
                                               folder=output_dir, class_index={}))):
            result = beam_options.run(pipeline, settings=self.settings, what=what,
                                      job_file=beam_options.job_file_for(self.settings, what))
            steps[what] = beam_options.step_names(beam_options.job_graph(result))
        return steps


def build_check_pipeline(settings: beam_options.BeamSettings, *, sources_file: str, checked_prefix: str,
                         max_image_side: int):
    """sources (JSON lines) -> every file checked in parallel -> results (JSON lines)."""
    import apache_beam as beam
    pipeline = beam_options.new_pipeline(settings, *_job_file_option(settings, "check"))
    _ = (pipeline
         | "ReadWorkList" >> beam.io.ReadFromText(sources_file, validate=False)
         | "Spread" >> beam.Reshuffle()
         | "CheckImages" >> beam.Map(check_line, max_image_side=max_image_side)
         | "WriteChecked" >> beam.io.WriteToText(checked_prefix, file_name_suffix=_LINES))
    return pipeline


def build_write_pipeline(settings: beam_options.BeamSettings, *, layout_file: str, folder: str,
                         class_index: Dict[str, int]):
    """layout (JSON lines) -> records serialized in parallel -> grouped by shard -> shards."""
    import apache_beam as beam
    pipeline = beam_options.new_pipeline(settings, *_job_file_option(settings, "write"))
    _ = (pipeline
         | "ReadLayout" >> beam.io.ReadFromText(layout_file, validate=False)
         | "Spread" >> beam.Reshuffle()
         | "SerializeRecords" >> beam.Map(record_of, class_index=class_index)
         | "GroupByShard" >> beam.GroupByKey()
         | "WriteShards" >> beam.Map(write_shard, folder=folder))
    return pipeline


def _job_file_option(settings: beam_options.BeamSettings, what: str) -> List[str]:
    """Each of prepare's two Dataflow jobs writes its own --dataflow_job_file (NAME-check.json...)."""
    path = beam_options.job_file_for(settings, what)
    return [f"--dataflow_job_file={path}"] if path else []
