"""prepare and predict on Apache Beam (trainer.beam): the same records, dataset.json, rows and
features as the local path on the same small folder (a corrupt file included), the refusals in one
line, and the Dataflow job graphs built offline (a DirectRunner in two processes runs the
pipelines; DataflowRunner's dry run translates them without the network)."""
import csv
import glob
import hashlib
import json
import os

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.testing.cli import assert_one_error_line, run_module  # noqa: E402
from trainer.beam import options as beam_options  # noqa: E402
from trainer.data import preparing, synthetic  # noqa: E402
from trainer.evaluation import prediction_rows  # noqa: E402
from trainer.inference import feature_shards, prediction  # noqa: E402

pytest.importorskip("apache_beam")

from trainer.beam import predicting, records  # noqa: E402

# Two SDK worker processes: records, work lists and the export handler cross process boundaries
# (pickled), as on Dataflow.
DIRECT = "--direct_running_mode=multi_processing --direct_num_workers=2"
DATAFLOW = "--project=my-project --region=us-central1 --temp_location=gs://my-bucket/tmp"
TOP_K = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """4 shape classes of 6 JPEGs at 48 px, one corrupt .jpg and one PNG named .jpg."""
    root = tmp_path_factory.mktemp("beam_images")
    synthetic.write_images(str(root), task="shapes", per_class=6, size=48, seed=3)
    (root / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    png = tf.io.encode_png(tf.zeros([40, 30, 3], tf.uint8)).numpy()
    (root / "circle" / "really_png.jpg").write_bytes(png)
    return root


def _records(folder):
    """{shard file name: [(sorted feature items, encoded bytes hashed), ...] in file order}."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.tfrecord"))):
        rows = []
        for record in tf.data.TFRecordDataset(path):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            rows.append(tuple(
                (key, hashlib.sha1(value.bytes_list.value[0]).hexdigest() if key == "image/encoded"
                 else (tuple(value.bytes_list.value), tuple(value.int64_list.value)))
                for key, value in sorted(feature.items())))
        found[os.path.basename(path)] = rows
    return found


@pytest.fixture(scope="module")
def prepared(images, tmp_path_factory):
    """The folder prepared locally and on DirectRunner, same flags and seed."""
    out = tmp_path_factory.mktemp("beam_prepared")
    kwargs = dict(input_dir=str(images), validation_fraction=0.25, test_fraction=0.2, num_shards=2, seed=5)
    local = preparing.prepare(output_dir=str(out / "local"), **kwargs)
    settings = beam_options.from_flags(runner="DirectRunner", beam_options=DIRECT)
    beam = preparing.prepare(output_dir=str(out / "beam"), workers=records.BeamWorkers(settings), **kwargs)
    return out, local, beam


@pytest.mark.slow
def test_direct_runner_writes_the_local_paths_records(prepared):
    out, _, _ = prepared
    local, beam = _records(str(out / "local")), _records(str(out / "beam"))
    assert sorted(local) == ["test-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord",
                             "train-00001-of-00002.tfrecord", "validation-00000-of-00001.tfrecord"]
    assert beam == local  # same shards, same records in the same order
    for name in local:  # and byte for byte (records serialized deterministically)
        assert (out / "beam" / name).read_bytes() == (out / "local" / name).read_bytes(), name
    assert sum(len(r) for r in local.values()) == 25  # 24 JPEGs + the PNG named .jpg; the corrupt file skipped
    assert (out / "beam" / "labels.txt").read_text() == (out / "local" / "labels.txt").read_text()


@pytest.mark.slow
def test_direct_runner_writes_the_local_paths_dataset_json(prepared):
    out, local, beam = prepared
    assert beam == local
    assert json.loads((out / "beam" / "dataset.json").read_text()) == local
    assert [s["path"] for s in local["skipped"]] == ["square/broken.jpg"]
    assert [n["path"] for n in local["notes"]] == ["circle/really_png.jpg"]


def test_checked_survives_its_json_line(images):
    from trainer.data import shards
    from trainer.data.importfile import Source
    checked = shards.check_image(Source(path=str(images / "circle" / "really_png.jpg"), name="circle/really_png.jpg",
                                        labels=("circle",)))
    assert records.from_json(json.loads(json.dumps(records.to_json(checked)))) == checked


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The tiny network's export, its head spread so that the top-k order means something."""
    from testbed import exports
    return exports.build_export(str(tmp_path_factory.mktemp("beam_export") / "export"), num_classes=4,
                                head="spread").path


@pytest.fixture(scope="module")
def predicted(images, export_dir, tmp_path_factory):
    """The folder predicted locally and on DirectRunner, features included."""
    out = tmp_path_factory.mktemp("beam_predicted")
    local = prediction.predict_files(export_dir, prediction.list_inputs([str(images)]), batch_size=4,
                                     with_features=True)
    settings = beam_options.from_flags(runner="DirectRunner", beam_options=DIRECT)
    request = predicting.Request(export_dir=export_dir, output=str(out / "preds.csv"),
                                 features_output=str(out / "features"), top_k=TOP_K, batch_size=4, max_image_side=0)
    summary = predicting.predict(settings, request, specs=[str(images)])
    return out, local, summary


@pytest.mark.slow
def test_direct_runner_predicts_the_local_paths_rows(predicted, export_dir):
    out, local, summary = predicted
    with open(out / "preds.csv", newline="") as f:
        beam_rows = list(csv.reader(f))
    class_names = ("cat", "dog", "fox", "owl")
    assert beam_rows[0] == prediction_rows.csv_header(TOP_K)
    local_rows = {r[0]: r for r in prediction_rows.top_k_rows(local, class_names=class_names, top_k=TOP_K)}
    beam_by_path = {r[0]: r for r in beam_rows[1:]}
    assert len(beam_rows) - 1 == summary.rows == len(local_rows) == 25
    assert sorted(beam_by_path) == sorted(local_rows)
    for path, row in beam_by_path.items():
        assert row[1::2] == local_rows[path][1::2], path  # the same top-k classes, in order
        np.testing.assert_allclose(np.array(row[2::2], float), np.array(local_rows[path][2::2], float), atol=1e-5)


@pytest.mark.slow
def test_direct_runner_skips_the_local_paths_bad_images(predicted, images):
    out, local, summary = predicted
    assert [p for p, _ in summary.skipped] == [p for p, _ in local.skipped] == [str(images / "square" / "broken.jpg")]
    assert (out / "preds.skipped.csv").read_text().splitlines()[0] == "path,reason"


@pytest.mark.slow
def test_feature_shards_read_back_as_the_local_features(predicted):
    out, local, _ = predicted
    paths, features = feature_shards.read_features(str(out / "features"))
    row = {p: i for i, p in enumerate(local.paths)}
    assert sorted(paths) == sorted(local.paths) and features.dtype == np.float32
    np.testing.assert_allclose(features, local.features[[row[p] for p in paths]], rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no feature shard"):
        feature_shards.read_features(str(out / "featurez"))


@pytest.mark.parametrize("runner, options, words", [
    ("NoSuchRunner", "", ["not a runner Apache Beam knows", "DirectRunner"]),
    ("DirectRunner", "--no_such_option=1", ["--no_such_option", "does not know"]),
    ("DirectRunner", "--direct_num_workers=two", ["rejected by Apache Beam", "invalid int value"]),
    ("DirectRunner", "--runner=DataflowRunner", ["command's own --runner"]),
    ("DirectRunner", "--project='unclosed", ["does not split"]),
    ("DirectRunner", "--dry_run=true", ["only DataflowRunner"]),
    ("local", "--num_workers=4", ["--runner=local runs no pipeline"]),
    ("DataflowRunner", "--project=p --region=r", ["needs --temp_location"]),
    ("DataflowRunner", "--temp_location=gs://my-bucket/tmp", ["needs --project, --region"]),
    ("DataflowRunner", "--project=p --region=r --temp_location=/tmp/x", ["not a Cloud Storage folder"]),
    ("DataflowRunner", "--project=p --region=r --temp_location=gs://b/tmp", ["not a Cloud Storage folder", "bucket"]),
])
def test_bad_runner_or_options_refused(runner, options, words):
    with pytest.raises(beam_options.BeamError) as refused:
        beam_options.from_flags(runner=runner, beam_options=options)
    message = str(refused.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_beams_own_validation_ends_in_one_line():
    settings = beam_options.from_flags(runner="DataflowRunner", beam_options="--project=p --region=r "
                                       "--temp_location=gs://my-bucket/tmp --dry_run=true")
    with pytest.raises(beam_options.BeamError, match="rejected by DataflowRunner: .*Invalid Project ID"):
        beam_options.new_pipeline(settings)


def test_options_a_runner_takes_pass():
    assert beam_options.from_flags(runner="local", beam_options="") is None
    settings = beam_options.from_flags(runner="dataflow", beam_options=f"{DATAFLOW} --num_workers 4 --setup_file=./s.py")
    assert settings.runner == "DataflowRunner" and not settings.dry_run
    assert beam_options.job_file_for(settings, "check") is None


def test_commands_refuse_in_one_line(images, tmp_path):
    result = run_module("trainer.prepare", f"--input_dir={images}", f"--output_dir={tmp_path}/out",
                        "--runner=DataflowRunner", "--beam_options=--project=p --region=r")
    assert_one_error_line(result, "needs --temp_location")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_dataflow_dry_run_writes_prepares_job_graphs_offline(tmp_path):
    job = tmp_path / "job.json"
    settings = beam_options.from_flags(runner="DataflowRunner",
                                       beam_options=f"{DATAFLOW} --dry_run=true --dataflow_job_file={job}")
    steps = records.BeamWorkers(settings).dry_run(output_dir="gs://my-bucket/data", max_image_side=1024)
    assert steps == {"check": ["ReadWorkList", "Spread", "CheckImages", "WriteChecked"],
                     "write": ["ReadLayout", "Spread", "SerializeRecords", "GroupByShard", "WriteShards"]}
    for what in ("check", "write"):
        graph = json.loads((tmp_path / f"job-{what}.json").read_text())
        assert graph["type"] == "JOB_TYPE_BATCH" and graph["name"]
        assert beam_options.step_names(graph) == steps[what]


@pytest.mark.slow
def test_predict_dry_run_stages_the_package_and_writes_its_job_graph(export_dir, tmp_path):
    job = tmp_path / "predict.json"
    result = run_module("trainer.predict", f"--export_dir={export_dir}", "--input=gs://my-bucket/images",
                        "--output=gs://my-bucket/preds.csv", "--features_output=gs://my-bucket/features",
                        "--runner=DataflowRunner",
                        f"--beam_options={DATAFLOW} --dry_run=true --dataflow_job_file={job} --setup_file=./setup.py")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = beam_options.step_names(json.loads(job.read_text()))
    assert steps == ["ReadPaths", "Spread", "ReadImages", "RunInference", "Answers", "Scored", "CsvRows", "WriteCsv",
                     "Skipped", "SkippedRows", "WriteSkipped", "FeatureRecords", "WriteFeatures"]
    assert f"dry run: the predict job's steps {', '.join(steps)}" in result.stdout


def test_predict_refuses_an_npy_features_output_on_beam(export_dir, images, tmp_path):
    result = run_module("trainer.predict", f"--export_dir={export_dir}", f"--input={images}",
                        f"--output={tmp_path}/p.csv", f"--features_output={tmp_path}/f.npy", "--runner=DirectRunner")
    assert_one_error_line(result, "TFRecord shards", "pass a prefix")
