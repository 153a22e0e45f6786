"""The cloud side: the sdist, the container recipe, Cloud Build and Vertex AI job submission.

Nothing here reaches the network: submissions go to a stub HTTP server on 127.0.0.1 through
scripts/submit_job.py's --api_endpoint (trainer.cloud.submit), the sdist is installed into a fresh
venv that borrows this environment's already-installed dependencies, and the Dockerfile/cloudbuild.yaml
are checked statically plus by running the parts of them that need no Docker daemon; the
trainer.cloud library is tested directly where no process is needed.
"""
import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml
from google.cloud.aiplatform_v1 import types as aip
from google.protobuf import json_format

from tests.testing import json_stub
from tests.testing.presets import REPO
from trainer.cloud import endpoints, jobs, machines, packaging
from trainer.cloud.errors import CloudError

SUBMIT = REPO / "scripts" / "submit_job.py"
TRAIN_DATA = "--train_data=gs://data-bucket/shapes/train-*.tfrecord"
BASE = ("--project=my-proj", "--region=us-central1", "--staging_bucket=gs://my-staging")
IMAGE = "us-central1-docker.pkg.dev/my-proj/ml/effnet-trainer:abc1234"


def _env(**extra):
    """This environment without proxies (the stub is local) plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def run_submit(*flags, trainer_args=(TRAIN_DATA,)):
    cmd = [sys.executable, str(SUBMIT), *flags, "--", *trainer_args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)


def validate(job, message_type=aip.CustomJob):
    """Vertex AI's own type for the body, parsed strictly: unknown fields and bad enum values fail."""
    json_format.ParseDict(job, message_type.pb(message_type()), ignore_unknown_fields=False)


class _Stub(json_stub.JsonHandler):
    """Answers POSTs with the server's next (status, body) and records every request."""

    def _record(self, body):
        self.server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "body": body})

    def do_POST(self):  # noqa: N802 (http.server's name)
        self._record(self.body())
        status, payload = self.server.reply
        self.reply(payload, status)

    def do_GET(self):  # noqa: N802 (http.server's name): the job's next state, as --wait polls it
        self._record(None)
        status, payload = self.server.gets.pop(0) if self.server.gets else (404, {"error": {"message": "none"}})
        self.reply(payload, status)


@pytest.fixture
def vertex_stub(tmp_path):
    """(server, extra submit flags): a fake Vertex AI endpoint and a token file for it."""
    with json_stub.serving(_Stub, tmp_path, gets=[], reply=(
            200, {"name": "projects/123/locations/us-central1/customJobs/987", "state": "JOB_STATE_PENDING"})) as stub:
        yield stub


# --- Vertex AI job bodies. ---

@pytest.mark.parametrize("preset", ["cpu", "gpu", "multi-gpu", "multi-worker", "tpu"])
@pytest.mark.parametrize("route", ["container", "package"])
def test_each_preset_dry_run_is_a_valid_custom_job(preset, route):
    route_flags = (f"--image_uri={IMAGE}",) if route == "container" else (
        "--package", *(() if preset == "cpu" else ("--executor_image_uri=us-docker.pkg.dev/my-proj/ml/tf221:1",)))
    result = run_submit(f"--preset={preset}", *BASE, *route_flags, "--display_name=t1", "--dry_run", "--spot")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)  # stdout is the body and nothing else
    validate(job)
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert pools[0]["replicaCount"] == 1  # the chief pool comes first, with one replica
    assert len(pools) == (2 if preset == "multi-worker" else 1)
    task = pools[0]["containerSpec"] if route == "container" else pools[0]["pythonPackageSpec"]
    assert task["args"][-1] == TRAIN_DATA  # the user's trainer flags come last, so they win
    if route == "package":
        assert task["pythonModule"] == "trainer.task"
        assert task["packageUris"] == ["gs://my-staging/packages/t1/effnet_trainer-0.1.0.tar.gz"]
    assert job["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://my-staging/runs/t1"}
    assert job["jobSpec"]["scheduling"] == {"strategy": "SPOT", "restartJobOnWorkerRestart": True}
    machine = pools[0]["machineSpec"]
    expected = {"cpu": (None, "--strategy"), "gpu": ("NVIDIA_TESLA_T4", "--strategy"),
                "multi-gpu": ("NVIDIA_TESLA_T4", "--strategy=mirrored"),
                "multi-worker": ("NVIDIA_TESLA_T4", "--strategy=multi_worker"), "tpu": (None, "--strategy=tpu")}
    accelerator, strategy = expected[preset]
    assert machine.get("acceleratorType") == accelerator
    assert any(a.startswith(strategy) for a in task["args"]) == (preset not in ("cpu", "gpu"))
    if preset == "tpu":
        assert machine["tpuTopology"] == "2x2" and "--tpu=local" in task["args"]


def test_multi_worker_replica_count_sizes_the_second_pool():
    result = run_submit("--preset=multi-worker", *BASE, f"--image_uri={IMAGE}", "--replica_count=3", "--dry_run",
                        "--service_account=trainer@my-proj.iam.gserviceaccount.com")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    validate(job)
    chief, workers = job["jobSpec"]["workerPoolSpecs"]
    assert (chief["replicaCount"], workers["replicaCount"]) == (1, 3)
    assert chief["machineSpec"] == workers["machineSpec"]
    assert job["jobSpec"]["serviceAccount"] == "trainer@my-proj.iam.gserviceaccount.com"


def test_overrides_fill_in_what_a_machine_implies():
    a2 = jobs.build_job_spec(preset="gpu", project="my-proj", region="us-central1",
                             staging_bucket="gs://bkt", image_uri=IMAGE, machine_type="a2-highgpu-2g",
                             trainer_args=[TRAIN_DATA])
    assert (a2.machine.accelerator_type, a2.machine.accelerator_count) == ("NVIDIA_TESLA_A100", 2)
    v5e = jobs.build_job_spec(preset="tpu", project="my-proj", region="us-central1",
                              staging_bucket="gs://bkt", image_uri=IMAGE, machine_type="ct5lp-hightpu-8t",
                              trainer_args=[TRAIN_DATA])
    assert (v5e.machine.tpu_topology, v5e.machine.accelerator_type) == ("2x4", "")
    n1 = jobs.build_job_spec(preset="gpu", project="my-proj", region="us-central1",
                             staging_bucket="gs://bkt", image_uri=IMAGE, machine_type="n1-standard-4",
                             trainer_args=[TRAIN_DATA])
    assert (n1.machine.accelerator_type, n1.machine.accelerator_count) == ("NVIDIA_TESLA_T4", 1)  # another n1 keeps the GPU
    cpu = jobs.build_job_spec(preset="cpu", project="my-proj", region="europe-west4",
                              staging_bucket="gs://bkt", package=True, machine_type="n2-standard-16",
                              trainer_args=[TRAIN_DATA])
    assert (cpu.machine.accelerator_type, cpu.machine.accelerator_count) == ("", 0)
    assert cpu.executor_image_uri.startswith("europe-docker.pkg.dev/vertex-ai/training/tf-cpu.")
    validate(jobs.build_custom_job(cpu))


@pytest.mark.parametrize("mutate", [
    lambda j: j["jobSpec"].update(workerPoolSpec=j["jobSpec"].pop("workerPoolSpecs")),
    lambda j: j["jobSpec"]["workerPoolSpecs"][0].update(pythonPackageSpec={
        "executorImageUri": "x", "packageUris": ["gs://b/p.tar.gz"], "pythonModule": "trainer.task"}),
    lambda j: j["jobSpec"]["workerPoolSpecs"][0]["machineSpec"].update(acceleratorType="T4"),
    lambda j: j["jobSpec"].update(scheduling={"strategy": "PREEMPTIBLE"}),
    lambda j: j["jobSpec"]["workerPoolSpecs"][0].update(replicaCount="two"),
], ids=["misspelt_field", "two_tasks", "bad_accelerator", "bad_strategy", "wrong_type"])
def test_vertex_types_refuse_bodies_vertex_would_refuse(mutate):
    spec = jobs.build_job_spec(preset="gpu", project="my-proj", region="us-central1",
                               staging_bucket="gs://bkt", image_uri=IMAGE, trainer_args=[TRAIN_DATA])
    job = jobs.build_custom_job(spec)
    validate(job)
    mutate(job)
    with pytest.raises(json_format.ParseError):
        validate(job)


def _changed_fields(a, b) -> set:
    """The fields of two presets that differ, `machine.` fields spelt out."""
    flat = [{**dataclasses.asdict(p.machine), **{k: v for k, v in dataclasses.asdict(p).items() if k != "machine"}}
            for p in (a, b)]
    return {name for name in flat[0] if flat[0][name] != flat[1][name]}


def test_presets_are_data_derived_from_one_another():
    presets = machines.PRESETS
    assert _changed_fields(presets["cpu"], presets["gpu"]) == {"accelerator_type", "accelerator_count"}
    assert _changed_fields(presets["gpu"], presets["multi-gpu"]) == {"machine_type", "accelerator_count",
                                                                     "trainer_args"}
    assert _changed_fields(presets["gpu"], presets["multi-worker"]) == {"workers", "trainer_args"}
    for preset in presets.values():  # every preset is a machine Vertex AI accepts
        machines.check_machine(preset.machine)
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets["gpu"].machine.accelerator_count = 2


@pytest.mark.parametrize("region, registry", [
    ("us-central1", "us"), ("northamerica-northeast1", "us"), ("southamerica-east1", "us"),
    ("europe-west4", "europe"), ("asia-northeast1", "asia"), ("australia-southeast1", "asia"),
    ("me-west1", "asia"), ("me-central1", "asia"), ("me-central2", "asia")])
def test_prebuilt_images_come_from_the_registry_nearest_the_region(region, registry):
    """Training (--package) and prediction (deploy) images follow one rule, so they never disagree."""
    from google.cloud.aiplatform.constants import prediction  # the client library's list of prebuilt images
    spec = jobs.build_job_spec(preset="cpu", project="my-proj", region=region, staging_bucket="gs://bkt",
                               package=True, trainer_args=[TRAIN_DATA])
    model = endpoints.build_model(display_name="m", export="gs://bkt/run/model/export/1", region=region)
    assert spec.executor_image_uri.startswith(f"{registry}-docker.pkg.dev/vertex-ai/training/tf-cpu.")
    assert model["containerSpec"]["imageUri"].startswith(f"{registry}-docker.pkg.dev/vertex-ai/prediction/")
    assert model["containerSpec"]["imageUri"] in prediction.TF_CONTAINER_URIS


def _module_imports(path: Path):
    """(module, imported names) of every import statement in a source file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.module or "", [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)


def test_the_cloud_package_keeps_its_boundaries():
    """Public names across modules, no sys.path edits, HTTP and credentials in trainer.cloud.vertex alone."""
    files = sorted((REPO / "trainer" / "cloud").glob("*.py")) + [SUBMIT, REPO / "scripts" / "deploy_vertex.py"]
    for path in files:
        text = path.read_text()
        assert "sys.path" not in text, path
        for module, names in _module_imports(path):
            assert not [n for n in names if n.startswith("_") and not n.endswith("__")], (path, module, names)
            if module.startswith(("requests", "google.auth")):
                assert path.name == "vertex.py", (path, module)
    for wrapper in (SUBMIT, REPO / "scripts" / "deploy_vertex.py"):
        assert len([line for line in wrapper.read_text().splitlines() if line and not line.startswith("#")]) < 20


# --- Refusals happen before anything is sent; submissions send exactly the dry-run body. ---

@pytest.mark.parametrize("flags,trainer_args,says", [
    (("--preset=gpu", "--machine_type=n1-standard-8", "--accelerator_type=TPU_V3", "--accelerator_count=8"),
     (TRAIN_DATA,), "machine_type=cloud-tpu"),
    (("--preset=gpu", "--accelerator_type=NVIDIA_TESLA_V100", "--accelerator_count=3"),
     (TRAIN_DATA,), "takes 1, 2, 4 or 8 NVIDIA_TESLA_V100"),
    (("--preset=multi-gpu", "--accelerator_count=3"), (TRAIN_DATA,), "takes 1, 2 or 4 NVIDIA_TESLA_T4"),
    (("--preset=gpu", "--machine_type=a2-highgpu-1g", "--accelerator_type=NVIDIA_TESLA_T4"),
     (TRAIN_DATA,), "comes with exactly 1 NVIDIA_TESLA_A100"),
    (("--preset=cpu", "--machine_type=e2-standard-8", "--accelerator_type=NVIDIA_L4"), (TRAIN_DATA,),
     "takes no GPUs"),
    (("--preset=tpu", "--tpu_topology=4x4"), (TRAIN_DATA,), "multi-host"),
    (("--preset=tpu", "--machine_type=cloud-tpu", "--accelerator_type=TPU_V3", "--accelerator_count=32"),
     (TRAIN_DATA,), "--accelerator_count=8"),
    (("--preset=tpu", "--replica_count=2"), (TRAIN_DATA,), "--replica_count"),
    (("--preset=multi-worker", "--replica_count=0"), (TRAIN_DATA,), "1 or more machines"),
    (("--preset=gpu", "--machine_type=n1-superfast-8"), (TRAIN_DATA,), "not a Vertex AI training machine type"),
    (("--preset=gpu",), ("--train_data=/home/me/train",), "local path"),
    (("--preset=gpu",), ("--eval_data=gs://b/v",), "lack --train_data"),
    (("--preset=gpu", "--package"), (TRAIN_DATA,), "TF 2.17"),
    (("--preset=tpu", "--machine_type=n1-standard-8"), (TRAIN_DATA,), "--preset=tpu trains on a TPU"),
    (("--preset=multi-gpu", "--machine_type=n2-standard-16"), (TRAIN_DATA,), "--preset=multi-gpu trains on GPUs"),
    (("--preset=gpu", "--accelerator_type="), (TRAIN_DATA,), "carries none"),
    (("--preset=cpu", "--tensorboard=projects/p/locations/us-central1/tensorboards/1"), (TRAIN_DATA,),
     "--tensorboard needs --service_account"),
    (("--preset=cpu", "--tensorboard=my-board"), (TRAIN_DATA,), "resource name"),
])
def test_impossible_requests_are_refused_before_anything_is_sent(vertex_stub, flags, trainer_args, says):
    server, connect = vertex_stub
    image = () if "--package" in flags else (f"--image_uri={IMAGE}",)
    result = run_submit(*flags, *BASE, *image, *connect, trainer_args=trainer_args)
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert server.requests == []


def test_flag_mistakes_are_one_line():
    result = subprocess.run([sys.executable, str(SUBMIT), "--preset=gpu", *BASE, TRAIN_DATA],
                            capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: Unknown command line flag 'train_data' "
                                      "(trainer flags go after `--`)")


def test_submission_posts_the_dry_run_body_with_credentials(vertex_stub):
    server, connect = vertex_stub
    flags = ("--preset=multi-worker", *BASE, f"--image_uri={IMAGE}", "--display_name=run-7", "--spot")
    dry = run_submit(*flags, "--dry_run")
    sent = run_submit(*flags, *connect)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "projects/123/locations/us-central1/customJobs/987"
    [request] = server.requests
    assert request["path"] == "/v1/projects/my-proj/locations/us-central1/customJobs"
    assert request["headers"]["authorization"] == "Bearer test-token"
    assert request["headers"]["content-type"].startswith("application/json")
    assert request["body"] == dry.stdout  # --dry_run printed exactly what is sent


def test_api_refusals_are_one_line(vertex_stub):
    server, connect = vertex_stub
    server.reply = (403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                    "message": "Permission 'aiplatform.customJobs.create' denied\non project"}})
    result = run_submit("--preset=cpu", *BASE, f"--image_uri={IMAGE}", *connect)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Vertex AI refused the request: HTTP 403 PERMISSION_DENIED: "
        "Permission 'aiplatform.customJobs.create' denied on project"]
    assert len(server.requests) == 1


# --- Hyperparameter tuning, TensorBoard, web access, gcloud configs and --wait. ---

STUDY = """
metric: val_accuracy
goal: maximize
max_trial_count: 12
parallel_trial_count: 3
parameters:
  finetune_learning_rate: {type: double, min: 1.0e-5, max: 1.0e-3, scale: log}
  finetune_epochs: {type: integer, min: 2, max: 8}
  unfreeze: {type: categorical, values: [all, "top:2", "top:4"]}
  dropout: {type: discrete, values: [0.3, 0.1, 0.2]}
"""
EVAL_DATA = "--eval_data=gs://data-bucket/shapes/validation-*.tfrecord"


@pytest.mark.parametrize("preset", ["gpu", "multi-worker", "tpu"])
def test_tuning_dry_run_is_a_valid_hyperparameter_tuning_job(tmp_path, preset):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    config = tmp_path / "hp.json"
    result = run_submit(f"--preset={preset}", *BASE, f"--image_uri={IMAGE}", "--display_name=hp1",
                        f"--hptune_config={study}", f"--write_config={config}", "--dry_run",
                        trainer_args=(TRAIN_DATA, EVAL_DATA))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    validate(job, aip.HyperparameterTuningJob)
    assert job["studySpec"]["metrics"] == [{"metricId": "val_accuracy", "goal": "MAXIMIZE"}]
    by_id = {p["parameterId"]: p for p in job["studySpec"]["parameters"]}
    assert by_id["finetune_learning_rate"]["scaleType"] == "UNIT_LOG_SCALE"
    assert by_id["dropout"]["discreteValueSpec"]["values"] == [0.1, 0.2, 0.3]
    assert (job["maxTrialCount"], job["parallelTrialCount"]) == (12, 3)
    pools = job["trialJobSpec"]["workerPoolSpecs"]
    assert len(pools) == (2 if preset == "multi-worker" else 1)
    assert not any(a.startswith("--model_dir") for a in pools[0]["containerSpec"]["args"])  # per trial: AIP_MODEL_DIR
    gcloud = json.loads(config.read_text())  # gcloud ai hp-tuning-jobs create --config
    assert set(gcloud) == {"studySpec", "maxTrialCount", "parallelTrialCount", "trialJobSpec"}


def test_a_number_yaml_reads_as_text_is_still_a_number(tmp_path):
    """YAML 1.1 reads 1e-5 (no dot) as a string: the study takes it as the number it means."""
    specs = []
    for text in (STUDY, STUDY.replace("min: 1.0e-5", "min: 1e-5")):
        path = tmp_path / "study.yaml"
        path.write_text(text)
        result = run_submit("--preset=gpu", *BASE, f"--image_uri={IMAGE}", f"--hptune_config={path}", "--dry_run",
                            trainer_args=(TRAIN_DATA, EVAL_DATA))
        assert result.returncode == 0, result.stderr
        specs.append(json.loads(result.stdout)["studySpec"]["parameters"])
    assert specs[0] == specs[1]


@pytest.mark.parametrize("study, trainer_args, says", [
    (STUDY.replace("goal: maximize", "goal: up"), (TRAIN_DATA, EVAL_DATA), "goal must be maximize or minimize"),
    (STUDY + "algorithm: grid\n", (TRAIN_DATA, EVAL_DATA), "unknown key(s) algorithm"),
    (STUDY.replace("min: 1.0e-5", "min: 0"), (TRAIN_DATA, EVAL_DATA), "scale: log needs values above 0"),
    (STUDY.replace("type: integer", "type: int"), (TRAIN_DATA, EVAL_DATA), "finetune_epochs needs type"),
    (STUDY, (TRAIN_DATA,), "add --eval_data"),
    (STUDY, (TRAIN_DATA, EVAL_DATA, "--model_dir=gs://b/m"), "every trial write to one folder"),
    (STUDY, (TRAIN_DATA, EVAL_DATA, "--dropout=0.5"), "--dropout is tuned by the study"),
    (STUDY.replace("metric: val_accuracy", "metric: val_loss"), (TRAIN_DATA, EVAL_DATA), "--hptune_metric=val_loss"),
])
def test_study_mistakes_are_one_line(tmp_path, study, trainer_args, says):
    path = tmp_path / "study.yaml"
    path.write_text(study)
    result = run_submit("--preset=gpu", *BASE, f"--image_uri={IMAGE}", f"--hptune_config={path}", "--dry_run",
                        trainer_args=trainer_args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr


def test_tensorboard_web_access_and_the_gcloud_config(tmp_path):
    config = tmp_path / "job.json"
    board = "projects/my-proj/locations/us-central1/tensorboards/123"
    result = run_submit("--preset=gpu", *BASE, f"--image_uri={IMAGE}", f"--tensorboard={board}",
                        "--service_account=trainer@my-proj.iam.gserviceaccount.com", "--enable_web_access",
                        f"--write_config={config}", "--dry_run")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    validate(job)
    assert (job["jobSpec"]["tensorboard"], job["jobSpec"]["enableWebAccess"]) == (board, True)
    spec = json.loads(config.read_text())  # gcloud ai custom-jobs create --config: a CustomJobSpec
    assert spec == job["jobSpec"]
    validate(spec, aip.CustomJobSpec)


def test_wait_prints_each_state_change_and_fails_with_the_job(vertex_stub):
    server, connect = vertex_stub
    name = "projects/123/locations/us-central1/customJobs/987"
    server.gets = [(200, {"name": name, "state": "JOB_STATE_PENDING"}), (503, {"error": {"message": "busy"}}),
                   (200, {"name": name, "state": "JOB_STATE_RUNNING"}), (200, {"name": name, "state": "JOB_STATE_RUNNING"}),
                   (200, {"name": name, "state": "JOB_STATE_FAILED", "error": {"message": "OOM in\nworker 0"}})]
    result = run_submit("--preset=cpu", *BASE, f"--image_uri={IMAGE}", *connect, "--wait", "--poll_interval=0.01")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [name, "state: JOB_STATE_PENDING", "state: JOB_STATE_RUNNING",
                                          "state: JOB_STATE_FAILED"]
    assert result.stderr.strip().splitlines()[-1] == f"error: {name} ended JOB_STATE_FAILED: OOM in worker 0"
    assert [r["path"] for r in server.requests[1:]] == [f"/v1/{name}"] * 5  # the 503 was retried
    server.requests.clear()
    server.gets = [(200, {"name": name, "state": "JOB_STATE_SUCCEEDED"})]
    ok = run_submit("--preset=cpu", *BASE, f"--image_uri={IMAGE}", *connect, "--wait", "--poll_interval=0.01")
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "state: JOB_STATE_SUCCEEDED", ok.stderr


# --- The package: builds, installs into a fresh venv, runs the entry point. ---

def _checkout_copy(dest: Path) -> Path:
    """The files a clean checkout would have (tracked or not ignored), so builds leave REPO alone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv_and_the_trainer_runs(tmp_path):
    source = _checkout_copy(tmp_path / "src")
    sdist = Path(packaging.build_sdist(source_dir=str(source), out_dir=str(tmp_path / "dist")))  # --package's
    assert sdist.name.endswith("-0.1.0.tar.gz")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies (TensorFlow...) come from this environment's site-packages, already installed:
    # plain path lines, so its .pth files (our own editable install among them) stay inactive.
    Path(fresh_site, "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    str(sdist)], check=True, cwd=tmp_path, env=_env(), timeout=300)
    where = subprocess.run([str(python), "-c", "import trainer, serving; print(trainer.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(fresh_site)
    for cmd in ([str(python), "-m", "trainer.task", "--helpfull"], [str(venv / "bin" / "effnet-train"), "--helpfull"]):
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]  # help is an answer, not a mistake
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "--train_data" in result.stdout and "--[no]plan_only" in result.stdout


def test_console_scripts_are_the_scripts():
    """effnet-submit and effnet-deploy (setup.py's entry points) print what the scripts print."""
    bin_dir = Path(sys.executable).parent
    submit = ("--preset=cpu", *BASE, "--package", "--display_name=t1", "--dry_run", "--", TRAIN_DATA)
    deploy = ("--project=my-proj", "--export=gs://bkt/run/model/export/3", "--display_name=m", "--dry_run")
    for script, entry, flags in ((SUBMIT, "effnet-submit", submit),
                                 (REPO / "scripts" / "deploy_vertex.py", "effnet-deploy", deploy)):
        outputs = [subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
                   for cmd in ([sys.executable, str(script), *flags], [str(bin_dir / entry), *flags])]
        assert [r.returncode for r in outputs] == [0, 0], [r.stderr for r in outputs]
        assert outputs[0].stdout == outputs[1].stdout and json.loads(outputs[0].stdout)


def test_the_sdist_is_built_from_a_checkout():
    assert packaging.installed_checkout() == str(REPO)  # the editable install: effnet-submit --package works
    assert packaging.read_version(str(REPO)) == "0.1.0"
    with pytest.raises(CloudError, match="--package builds the sdist from a source checkout"):
        packaging.stage_package(source_dir=None, package_uri="gs://bkt/p/effnet_trainer-0.1.0.tar.gz")


@pytest.fixture(scope="module")
def gcs_front():
    """The GCS test front (testbed/gcs_front.py), used only through subprocess environments."""
    from testbed.gcs_front import GcsFront  # pylint: disable=import-outside-toplevel
    front = GcsFront().start()
    yield front
    front.stop()


def _read_object(front, url: str) -> bytes:
    from google.auth.credentials import AnonymousCredentials  # pylint: disable=import-outside-toplevel
    from google.cloud import storage  # pylint: disable=import-outside-toplevel
    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": f"http://127.0.0.1:{front.emulator_port}"})
    bucket, name = url[len("gs://"):].split("/", 1)
    return client.bucket(bucket).blob(name).download_as_bytes()


@pytest.mark.slow
def test_package_mode_stages_the_sdist_then_submits_it(tmp_path, vertex_stub, gcs_front):
    server, connect = vertex_stub
    bucket = gcs_front.create_bucket(f"staging-{uuid.uuid4().hex[:8]}")
    script = _checkout_copy(tmp_path / "src") / "scripts" / "submit_job.py"  # builds there, not in REPO
    env = {**_env(), **gcs_front.env}
    command = [sys.executable, str(script), "--preset=cpu", *BASE[:2], "--package", "--display_name=pkg-1", *connect]
    missing = subprocess.run([*command, "--staging_bucket=gs://no-such-bucket", "--", TRAIN_DATA],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "gs://no-such-bucket" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and server.requests == []
    staged = subprocess.run([*command, f"--staging_bucket={bucket}", "--", TRAIN_DATA], capture_output=True,
                            text=True, env=env, timeout=300)
    assert staged.returncode == 0, staged.stderr[-2000:]
    [request] = server.requests
    spec = json.loads(request["body"])["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]
    assert spec["packageUris"] == [f"{bucket}/packages/pkg-1/effnet_trainer-0.1.0.tar.gz"]
    archive = tmp_path / "staged.tar.gz"
    archive.write_bytes(_read_object(gcs_front, spec["packageUris"][0]))
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "trainer/__init__.py", "trainer/task.py", "serving/__init__.py"} <= names


# --- The trainer reads what Vertex AI sets. ---

_BUILD_CONFIGS = """
import dataclasses, json, os, sys
import trainer.task as task
getattr(task, "define_flags", lambda: None)()  # flags are defined on demand since the CLI split
runtimes = []
for argv in json.loads(sys.argv[1]):  # one process, one TensorFlow import, several configs
    task.FLAGS(["task"] + argv)
    runtimes.append(dataclasses.asdict(task.build_config(env=os.environ).runtime))
print(json.dumps(runtimes))
"""


@pytest.mark.slow
def test_aip_variables_reach_the_config_unless_flags_override(tmp_path):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (i * 90, 30, 200)).save(tmp_path / "images" / name / f"{i}.jpg")
    aip = {"AIP_MODEL_DIR": "gs://out/run/model/", "AIP_CHECKPOINT_DIR": "gs://out/run/checkpoints/",
           "AIP_TENSORBOARD_LOG_DIR": "gs://out/run/logs/"}
    common = [f"--train_data={tmp_path / 'images'}", "--weights=none", "--image_size=32"]
    flagged = [f"--model_dir={tmp_path}/m", f"--checkpoint_dir={tmp_path}/c", f"--tensorboard_dir={tmp_path}/t"]
    result = subprocess.run([sys.executable, "-c", _BUILD_CONFIGS, json.dumps([common, common + flagged])],
                            capture_output=True, text=True, env=_env(**aip), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from_env, from_flags = json.loads(result.stdout.strip().splitlines()[-1])
    assert (from_env["model_dir"], from_env["checkpoint_dir"], from_env["tensorboard_dir"]) == (
        aip["AIP_MODEL_DIR"], aip["AIP_CHECKPOINT_DIR"], aip["AIP_TENSORBOARD_LOG_DIR"])
    assert (from_flags["model_dir"], from_flags["checkpoint_dir"], from_flags["tensorboard_dir"]) == (
        f"{tmp_path}/m", f"{tmp_path}/c", f"{tmp_path}/t")


def test_train_local_sh_sets_up_the_vertex_layout(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, os, sys; print(json.dumps("
                           "{\"argv\": sys.argv[1:], \"env\": {k: os.environ.get(k) for k in (\"AIP_MODEL_DIR\", "
                           "\"AIP_CHECKPOINT_DIR\", \"AIP_TENSORBOARD_LOG_DIR\", \"CUDA_VISIBLE_DEVICES\")}}))' \"$@\"\n")
    fake_python.chmod(0o755)
    script = str(REPO / "scripts" / "train_local.sh")
    env = _env(PYTHON=str(fake_python))
    ok = subprocess.run([script, f"--output_dir={tmp_path}/out/", "--cpu", "--", TRAIN_DATA, "--plan_only"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    seen = json.loads(ok.stdout)
    assert seen["argv"] == ["-m", "trainer.task", TRAIN_DATA, "--plan_only"]
    assert seen["env"] == {"AIP_MODEL_DIR": f"{tmp_path}/out/model/", "AIP_CHECKPOINT_DIR": f"{tmp_path}/out/checkpoints/",
                           "AIP_TENSORBOARD_LOG_DIR": f"{tmp_path}/out/logs/", "CUDA_VISIBLE_DEVICES": "-1"}
    bad = subprocess.run([script, "--gpus=2", "--", TRAIN_DATA], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "unknown option --gpus=2" in bad.stderr


# --- Cloud Build. ---

def _cloudbuild():
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _named_files(step) -> set:
    """Repository files a step's command line names (outputs under dist/ excluded)."""
    words = []
    for arg in step.get("args", []):
        words += shlex.split(arg) if " " in arg else [arg]
    names = set()
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if "$" in value or "://" in value or value.startswith("-") or value.startswith("dist/"):
            continue
        if value == "Dockerfile" or re.fullmatch(r"[\w.-]+(/[\w.-]+)*\.(py|sh|yaml|toml|cfg|txt)", value):
            names.add(value)
    return names


def test_cloudbuild_parses_and_names_only_files_that_exist():
    build = _cloudbuild()
    text = (REPO / "cloudbuild.yaml").read_text()
    ids = [step["id"] for step in build["steps"]]
    assert len(set(ids)) == len(ids)
    for i, step in enumerate(build["steps"]):
        assert set(step.get("waitFor", [])) <= set(ids[:i]) | {"-"}, step["id"]
    named = set().union(*(_named_files(step) for step in build["steps"]))
    assert {"scripts/test.sh", "Dockerfile"} <= named  # the sdist: python -m build
    assert sorted(n for n in named if not (REPO / n).is_file()) == []
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", text))
    assert {"_REGION", "_REPOSITORY", "_IMAGE"} <= used and used == set(build["substitutions"])
    image = "${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}/${_IMAGE}"
    assert f"{image}:$SHORT_SHA" in build["images"]
    assert f"--tag={image}:$SHORT_SHA" in next(s for s in build["steps"] if s["id"] == "build")["args"]
    lines = text.splitlines()
    for n, line in enumerate(lines):  # every step is commented
        if line.startswith("- id:"):
            assert lines[n - 1].startswith("#"), line


def test_cloudbuild_submit_step_makes_a_valid_job():
    step = next(s for s in _cloudbuild()["steps"] if s["id"] == "submit")
    values = {"${_SUBMIT_PRESET}": "multi-gpu", "$PROJECT_ID": "my-proj", "${_REGION}": "us-central1",
              "${_STAGING_BUCKET}": "gs://my-staging", "${_REPOSITORY}": "ml", "${_IMAGE}": "effnet-trainer",
              "$SHORT_SHA": "abc1234", "$BUILD_ID": "b-1", "${_TRAINER_ARGS}": TRAIN_DATA}
    script = step["args"][-1]
    for key, value in values.items():
        script = script.replace(key, value)
    command = shlex.split(script[script.index("python -m trainer.cloud.submit"):])
    split = command.index("--")
    command = [sys.executable, *command[1:split], "--dry_run", *command[split:]]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    validate(job)
    assert job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == (
        "us-central1-docker.pkg.dev/my-proj/ml/effnet-trainer:abc1234")


# --- The container recipe. ---

def _docker_ignored(path: str, patterns) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent folder wins."""
    prefixes = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerfile_installs_the_package_cache_friendly(tmp_path):
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    entry = next(line for line in instructions if line.startswith("ENTRYPOINT"))
    assert json.loads(entry.split(" ", 1)[1]) == ["python", "-m", "trainer.task"]
    tf_pin = re.search(r'"tensorflow==(\d+\.\d+)\.\*"', (REPO / "setup.py").read_text()).group(1)
    assert re.search(rf"ARG BASE_IMAGE=tensorflow/tensorflow:{re.escape(tf_pin)}\.\d+-gpu", text)
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    copies = [line.split()[1:-1] for line in instructions if line.startswith("COPY")]
    sources = [src.rstrip("/") for srcs in copies for src in srcs]
    for src in sources:
        assert (REPO / src).exists(), src
        assert not _docker_ignored(src, patterns), f"{src} is excluded by .dockerignore"
    assert _docker_ignored("tests/test_cloud.py", patterns) and _docker_ignored(".venv/bin/python", patterns)
    assert _docker_ignored("trainer/__pycache__/task.cpython-311.pyc", patterns)
    # The dependency layer comes before the code, and setup.py works with only what it copies.
    first_run = next(i for i, line in enumerate(instructions) if line.startswith("RUN"))
    early = [src for line in instructions[:first_run] if line.startswith("COPY") for src in line.split()[1:-1]]
    assert "trainer/" not in early and any(line.startswith("COPY trainer/ ") for line in instructions[first_run:])
    for src in early:
        (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / src, tmp_path / src)
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    requires = (tmp_path / "effnet_trainer.egg-info" / "requires.txt").read_text()
    assert f"tensorflow=={tf_pin}.*" in requires
