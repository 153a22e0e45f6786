"""Google Cloud's REST APIs as both sides call them: Vertex AI's regional root and an
authorized HTTP session. trainer.cloud (submit, deploy) and serving.rest_client (predictions
on an endpoint) share these, so a credential problem reads the same from every command.
"""
from __future__ import annotations

from typing import Optional

from effnet_common import errors

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class CredentialsError(errors.UserError):
    """No usable Google credentials; the message says how to get them."""


def vertex_api_root(region: str, api_endpoint: Optional[str] = None) -> str:
    """The REST root: Vertex AI's regional endpoint, or `api_endpoint` (a proxy, the tests' stub)."""
    return (api_endpoint or f"https://{region}-aiplatform.googleapis.com").rstrip("/")


def authorized_session(*, access_token_file: Optional[str] = None):
    """An authorized `requests` session: Application Default Credentials, or a token read from a file.

    ADC covers a laptop (`gcloud auth application-default login`), Cloud Build and Vertex AI's
    own machines; a token file (`gcloud auth print-access-token > F`) suits anything else.
    google-auth is imported only here, so commands that never call Google (--dry_run) need none.

    Raises:
      CredentialsError: no ADC, or an unreadable or empty token file.
    """
    import google.auth  # pylint: disable=import-outside-toplevel
    from google.auth import exceptions  # pylint: disable=import-outside-toplevel
    from google.auth.transport.requests import AuthorizedSession  # pylint: disable=import-outside-toplevel
    if access_token_file:
        from google.oauth2.credentials import Credentials  # pylint: disable=import-outside-toplevel
        try:
            with open(access_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise CredentialsError(f"--access_token_file={access_token_file}: {e.strerror}") from None
        if not token:
            raise CredentialsError(f"--access_token_file={access_token_file} is empty: write a token into it")
        return AuthorizedSession(Credentials(token=token))
    try:
        credentials, _ = google.auth.default(scopes=[SCOPE])
    except exceptions.DefaultCredentialsError:
        raise CredentialsError("no Google credentials found: run `gcloud auth application-default login` or set "
                               "GOOGLE_APPLICATION_CREDENTIALS (effnet-submit and effnet-deploy also take "
                               "--access_token_file)") from None
    return AuthorizedSession(credentials)
