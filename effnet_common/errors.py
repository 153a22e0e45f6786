"""Errors the libraries raise for a user to fix; each message names what, where and how to fix it.

Every one derives from `UserError`, which is what a command (effnet_common.flagutil.run) turns
into one `error: ...` line and exit status 2; anything else is a bug and keeps its traceback.
Each module keeps its own subclass beside the code that raises it (DataError in
trainer.data.discovery, ConfigError in trainer.configs.config, GcsError in effnet_common.gcs, ...), so a caller
can catch one kind.
"""


class UserError(ValueError):
    """Something the user must change: a flag, a path, the data, the weights. A ValueError, so
    code that catches ValueError for bad arguments keeps working."""


class WeightsError(UserError):
    """Backbone weights that cannot be had or do not fit; the message says how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with where the command stopped and how to go on. A KeyboardInterrupt, so that
    nothing that catches Exception swallows it; a command ends it in one line, exit status 130."""
