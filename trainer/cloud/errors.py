"""The error every trainer.cloud module raises for a request the user must change.

The commands turn it into one `error: ...` line and exit status 2 (effnet_common.flagutil.fail);
the message names the flag, what was wrong and how to fix it.
"""
from effnet_common import errors


class CloudError(errors.UserError):
    """A request the user must change; the message says what, where and how."""


def check(condition: bool, message: str) -> None:
    """Raises CloudError(message) unless `condition`: the one-line form of every check here."""
    if not condition:
        raise CloudError(message)
