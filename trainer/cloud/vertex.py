"""The one Vertex AI REST client both commands use: credentials, POST/GET, polling.

Submission is a plain REST call through google-auth's AuthorizedSession (docs/cloud.md says why
not google-cloud-aiplatform); `api_endpoint` points it elsewhere, which is how the tests reach a
stub. Every failure a user can act on is a CloudError whose message is one line: what was
refused, by whom, how to fix it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Optional

from effnet_common import flagutil, google_api
from trainer.cloud.errors import CloudError

TERMINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
                   "JOB_STATE_PARTIALLY_SUCCEEDED")


class TransientError(Exception):
    """A GET that may succeed when repeated: HTTP 429/5xx or a dropped connection."""


def render(body: dict) -> str:
    """The exact request body: --dry_run prints these bytes and VertexClient.post sends them."""
    return json.dumps(body, indent=2) + "\n"


api_root = google_api.vertex_api_root
build_session = google_api.authorized_session


def error_message(error: dict) -> str:
    """The `message` of a Google API error object as one line ('' when it has none)."""
    message = str(error.get("message", ""))
    return flagutil.one_line(message) if message.strip() else ""


def api_error(response) -> str:
    """`HTTP 403 PERMISSION_DENIED: message` from a Google API error body (or its raw text)."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('status', '')}: {error_message(error)}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text or ""
        return f"HTTP {response.status_code}: {flagutil.one_line(text) if text.strip() else response.reason}"


def console_url(job_name: str) -> str:
    """The console page of a created job (projects/P/locations/R/customJobs|hyperparameterTuningJobs/ID)."""
    _, project, _, region, kind, job_id = job_name.split("/")
    page = "cpu" if kind == "customJobs" else "hyperparameter-tuning"
    return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/{job_id}/{page}"
            f"?project={project}")


@dataclasses.dataclass(frozen=True)
class VertexClient:
    """Vertex AI's REST API (v1) in one region, through an authorized session.

    Attributes:
      session: a google-auth AuthorizedSession (or anything with its post/get).
      project, region: where resources are created (the `parent` of every create call).
      root: the API root, `https://REGION-aiplatform.googleapis.com` or --api_endpoint.
      timeout: seconds per HTTP request.
    """
    session: object
    project: str
    region: str
    root: str
    timeout: float = 60.0

    @classmethod
    def build(cls, *, project: str, region: str, api_endpoint: Optional[str] = None,
              access_token_file: Optional[str] = None) -> "VertexClient":
        """A client with credentials (build_session) for the commands' shared flags."""
        return cls(session=build_session(access_token_file=access_token_file), project=project, region=region,
                   root=api_root(region, api_endpoint))

    @property
    def parent(self) -> str:
        """`ROOT/v1/projects/P/locations/R`: the collection URLs' common start."""
        return f"{self.root}/v1/projects/{self.project}/locations/{self.region}"

    def post(self, url: str, *, body: dict, what: str = "the request") -> dict:
        """POSTs render(body) to `url`; returns the answer, or CloudError naming `what` was refused."""
        import requests  # pylint: disable=import-outside-toplevel
        from google.auth import exceptions  # pylint: disable=import-outside-toplevel
        try:
            response = self.session.post(url, data=render(body).encode("utf-8"), timeout=self.timeout,
                                         headers={"Content-Type": "application/json; charset=utf-8"})
        except exceptions.RefreshError as e:
            raise CloudError(f"the Google credentials were refused ({flagutil.one_line(e)}): log in again") from None
        except requests.RequestException as e:
            raise CloudError(f"could not reach {self.root} ({type(e).__name__}): check the network and "
                             "--region") from None
        if response.status_code != 200:
            raise CloudError(f"Vertex AI refused {what}: {api_error(response)}")
        return response.json()

    def create(self, collection: str, *, body: dict) -> dict:
        """projects.locations.<collection>.create (customJobs, hyperparameterTuningJobs, endpoints)."""
        return self.post(f"{self.parent}/{collection}", body=body)

    def get(self, name: str) -> dict:
        """GETs a resource once; a transient failure raises TransientError, a refusal CloudError."""
        import requests  # pylint: disable=import-outside-toplevel
        try:
            response = self.session.get(f"{self.root}/v1/{name}", timeout=self.timeout)
        except requests.RequestException as e:
            raise TransientError(type(e).__name__) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(api_error(response))
        if response.status_code != 200:
            raise CloudError(f"reading {name} failed: {api_error(response)}")
        return response.json()

    def poll(self, name: str) -> dict:
        """get() through google.api_core's Retry: a 503 or a dropped connection while a job runs for
        hours must not end the wait (15 minutes of failures in a row do, with CloudError)."""
        from google.api_core import exceptions, retry as api_retry  # pylint: disable=import-outside-toplevel
        retried = api_retry.Retry(predicate=api_retry.if_exception_type(TransientError), initial=1.0, maximum=60.0,
                                  multiplier=2.0, timeout=900.0)(self.get)
        try:
            return retried(name)
        except exceptions.RetryError as e:
            raise CloudError(f"reading {name} kept failing for 15 minutes ({flagutil.one_line(e.cause)}): check "
                             "the network, then look the job up in the console") from None

    def wait_for_job(self, name: str, *, poll_interval: float, on_state: Callable[[str], None],
                     describe: Optional[Callable[[dict], str]] = None) -> dict:
        """Polls a job until it ends, calling `on_state` at each state change; returns the final resource.

        `describe` turns the polled job into the line `on_state` hears (default: its state), so a
        job that reports progress (a batch prediction's completionStats) is heard at each change.
        """
        last = None
        while True:
            job = self.poll(name)
            state = job.get("state", "JOB_STATE_UNSPECIFIED")
            line = describe(job) if describe else state
            if line != last:
                on_state(line)
                last = line
            if state in TERMINAL_STATES:
                return job
            time.sleep(poll_interval)

    def wait_operation(self, operation: dict, *, poll_interval: float) -> dict:
        """Polls a long-running operation until done; returns its response, or CloudError with its error."""
        while not operation.get("done"):
            time.sleep(poll_interval)
            operation = self.poll(operation["name"])
        if "error" in operation:
            raise CloudError(f"{operation['name']} failed: {error_message(operation['error'])}")
        return operation.get("response", {})
