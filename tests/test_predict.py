"""Batch prediction and features through the tiny export (the conftest fixtures `export_base` and
`loaded`): what the CLI (`python -m trainer.predict`) writes is what the signatures answer, row for
row, and a bad image is listed and skipped."""
import csv
import io
import os
import shutil

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tests.testing.cli import assert_one_error_line, run_module
from trainer import predict
from trainer.data import synthetic
from trainer.inference import exported, prediction

TOP_K = 3


def run_cli(*argv):
    """`python -m trainer.predict argv...`; returns (exit code, stdout, stderr)."""
    result = run_module("trainer.predict", *argv)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def inputs(demo_images, tmp_path_factory):
    """2 JPEGs per class, a PNG elsewhere, and a broken .jpg matched by the same glob."""
    root = tmp_path_factory.mktemp("inputs")
    for name in synthetic.TASKS["shapes"]:
        (root / name).mkdir()
        for src in sorted(os.listdir(os.path.join(demo_images, name)))[:2]:
            shutil.copy(os.path.join(demo_images, name, src), root / name / src)
    (root / "cross" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "extra").mkdir()
    square = os.path.join(demo_images, "square")
    with Image.open(os.path.join(square, sorted(os.listdir(square))[-1])) as im:
        im.save(root / "extra" / "one.png")
    return root


@pytest.fixture(scope="module")
def cli_run(export_base, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict")
    code, stdout, stderr = run_cli(
        f"--export_dir={export_base}", f"--input={inputs}/*/*.jpg,{inputs}/extra", f"--output={out}/preds.csv",
        f"--features_output={out}/feats.npy", f"--top_k={TOP_K}", "--batch_size=4")
    assert code == 0, stderr
    with open(out / "preds.csv", newline="") as f:
        rows = list(csv.reader(f))
    return rows, np.load(out / "feats.npy"), stdout, stderr


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow
def test_csv_rows_match_serving_default(cli_run, inputs, loaded):
    rows, _, _, _ = cli_run
    assert rows[0] == ["path", "class_1", "score_1", "class_2", "score_2", "class_3", "score_3"]
    paths = [r[0] for r in rows[1:]]
    expected_paths = sorted(str(p) for p in inputs.glob("*/*.jpg") if p.name != "broken.jpg")
    assert paths == expected_paths + [str(inputs / "extra" / "one.png")]
    served = loaded.serve(image_bytes=tf.constant([read(p) for p in paths]))
    classes = served["classes"].numpy()[:, :TOP_K].astype(str)
    scores = served["scores"].numpy()[:, :TOP_K]
    np.testing.assert_array_equal(np.array([r[1::2] for r in rows[1:]]), classes)
    np.testing.assert_allclose(np.array([r[2::2] for r in rows[1:]], float), scores, atol=1e-5)


@pytest.mark.slow
def test_features_rows_match_features_signature(cli_run, loaded):
    rows, feats, _, _ = cli_run
    paths = [r[0] for r in rows[1:]]
    expected = loaded.features(image_bytes=tf.constant([read(p) for p in paths]))["features"].numpy()
    assert feats.dtype == np.float32 and feats.shape == (len(paths), expected.shape[1])
    # Batches of another size run other oneDNN kernels: float32 noise of a few 1e-6 on features
    # whose elements reach several units.
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
    assert len({f.tobytes() for f in feats}) == len(paths)  # row i is image i's, not a copy


def test_bad_image_listed_on_stderr_and_skipped(cli_run, inputs):
    rows, _, stdout, stderr = cli_run
    bad = str(inputs / "cross" / "broken.jpg")
    assert bad not in [r[0] for r in rows]
    assert "skipped 1 image(s)" in stderr and f"  {bad}: " in stderr
    assert bad not in stdout


def test_stdout_shows_top_k_per_image(cli_run):
    rows, _, stdout, _ = cli_run
    lines = stdout.splitlines()
    for row in rows[1:]:
        shown = [line for line in lines if line.startswith(row[0] + " ")]
        assert len(shown) == 1, row[0]
        assert f"{row[1]} {float(row[2]):.3f} | {row[3]} {float(row[4]):.3f} | {row[5]}" in shown[0]
    assert f"wrote {len(rows) - 1} row(s)" in stdout


@pytest.mark.slow
def test_errors_are_one_line(export_base, inputs, tmp_path):
    result = run_module("trainer.predict", f"--export_dir={export_base}", f"--input={inputs}/nothing-*.jpg",
                        f"--output={tmp_path}/p.csv")
    assert_one_error_line(result, "matches no image file")
    result = run_module("trainer.predict", f"--export_dir={tmp_path}/none", f"--input={inputs}/extra",
                        f"--output={tmp_path}/p.csv")
    assert_one_error_line(result, "does not exist")
    assert not os.path.exists(tmp_path / "p.csv")
    # A flag renamed so that --model means one thing per command: the hint names the new flag.
    result = run_module("trainer.predict", f"--model={export_base}", f"--input={inputs}/extra",
                        f"--output={tmp_path}/p.csv")
    assert_one_error_line(result, "unknown flag --model: renamed to --export_dir")


def test_list_inputs_expands_folders_and_globs_once(inputs):
    (inputs / "extra" / "notes.txt").write_text("not an image")
    paths = prediction.list_inputs([str(inputs / "extra"), f"{inputs}/extra/*.png", str(inputs / "square")])
    assert paths == [str(inputs / "extra" / "one.png")] + sorted(str(p) for p in (inputs / "square").glob("*.jpg"))


def test_every_reader_of_a_folder_lists_the_same_images(tmp_path):
    """The trainer's reader, prepare, predict and the serving client share fileio.list_files:
    hidden files and hidden folders are left out by all of them (the client used to keep them)."""
    from serving import client  # pylint: disable=import-outside-toplevel  # gRPC: only here
    from effnet_common import fileio
    from trainer.data import discovery
    from trainer.data import preparing
    for name in ("a/1.jpg", "a/deep/2.PNG", "b/3.bmp", "a/._1.jpg", "a/.thumbnails/4.jpg", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    expected = [str(tmp_path / n) for n in ("a/1.jpg", "a/deep/2.PNG", "b/3.bmp")]
    assert fileio.list_images(str(tmp_path)) == expected
    assert prediction.list_inputs([str(tmp_path)]) == expected
    assert client.expand_inputs([str(tmp_path)]) == (expected, [])
    assert discovery.list_image_files(str(tmp_path), class_names=("a", "b")) == (expected, [0, 0, 1])
    sources, _, classes = preparing.list_folder(str(tmp_path))  # every visible file: its content decides
    assert [s.path for s in sources] == expected[:2] + [str(tmp_path / "b/3.bmp"), str(tmp_path / "b/notes.txt")]
    assert classes == ["a", "b"]


def test_model_dir_resolves_to_newest_numeric_version(tmp_path):
    for version in ("1", "2", "10", ".tmp-11-abc"):
        (tmp_path / "export" / version).mkdir(parents=True)
        (tmp_path / "export" / version / "saved_model.pb").write_bytes(b"")
    assert exported.resolve_export_dir(str(tmp_path)) == str(tmp_path / "export" / "10")
    assert exported.resolve_export_dir(str(tmp_path / "export" / "2")) == str(tmp_path / "export" / "2")


def test_gcs_inputs_and_outputs(gcs_bucket, inputs, loaded, capsys):
    """gs:// folders in, CSV and features out, through TensorFlow's own gs:// client."""
    for name in ("circle", "square"):
        for path in sorted((inputs / name).glob("*.jpg")):
            tf.io.gfile.copy(str(path), f"{gcs_bucket}/in/{name}/{path.name}")
    tf.io.gfile.copy(str(inputs / "cross" / "broken.jpg"), f"{gcs_bucket}/in/cross/broken.jpg")
    result = predict.run(model=loaded, specs=[f"{gcs_bucket}/in"], output=f"{gcs_bucket}/out/preds.csv",
                         features_output=f"{gcs_bucket}/out/feats.npy", top_k=2, batch_size=2)
    assert result.skipped and result.skipped[0][0] == f"{gcs_bucket}/in/cross/broken.jpg"
    with tf.io.gfile.GFile(f"{gcs_bucket}/out/preds.csv") as f:
        rows = list(csv.reader(io.StringIO(f.read())))
    assert [r[0] for r in rows[1:]] == sorted(f"{gcs_bucket}/in/{n}/{p.name}" for n in ("circle", "square")
                                              for p in (inputs / n).glob("*.jpg"))
    with tf.io.gfile.GFile(f"{gcs_bucket}/out/feats.npy", "rb") as f:
        feats = np.load(io.BytesIO(f.read()))
    np.testing.assert_array_equal(feats, result.features)
    assert "broken.jpg" in capsys.readouterr().err
