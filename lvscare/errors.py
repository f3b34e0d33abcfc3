"""The kinds of failure a user sees: bad input (exit 2), and everything else (exit 1)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: flags, environment, YAML, addresses. Exit code 2, nothing in the kernel changed."""

    exit_code = 2


class KernelError(Exception):
    """The kernel refused or could not do what we asked. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RuntimeFailure(Exception):
    """Not the kernel and not the input: the environment stopped us (an address already in use,
    no daemon answering ``lvscare status``). Exit code 1."""

    exit_code = 1
