"""Errors that describe a problem with what the user asked for (a config, a file, a dataset, a checkpoint).

The command line reports these in one line, ``auxssl: error: …``, and exits with status 2 (the traceback only with
``--debug``); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class of the errors the command line reports in one line."""


class InputError(UserError, ValueError):
    """A value, dataset or file that cannot be used as given."""
