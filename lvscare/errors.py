"""The two kinds of failure a user sees, each with its own exit code."""


class UserError(Exception):
    """Bad input: flags, environment, YAML, addresses. Exit code 2, nothing in the kernel changed."""

    exit_code = 2


class KernelError(Exception):
    """The kernel refused or could not do what we asked. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
