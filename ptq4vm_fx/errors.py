"""The project's one user-facing error type.

``InputError`` means: the caller gave something the project cannot use (a wrong shape, an unknown
model, a corrupt file, an image size the scales were not calibrated for). Its message names the
problem in one line. It subclasses ``ValueError`` so that ``except ValueError`` keeps working.
The CLI turns it, and only it, into a one-line message and exit code 2; every other exception is
a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message says what is wrong, in one line."""
