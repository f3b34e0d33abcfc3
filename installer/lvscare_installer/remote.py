"""One SSH session to one node (fabric), with the installer's rules for secrets and host keys.

- Passwords go to paramiko (the SSH session) and to ``sudo -S`` on stdin; never into a command
  line, a log line or an error message (every message passes through :meth:`Remote.redact`).
- Host keys are checked against known_hosts; unknown keys are refused unless ``accept_new``
  (OpenSSH's ``StrictHostKeyChecking=accept-new``): a new key is recorded, a changed one refused.
"""

from __future__ import annotations

import secrets
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from lvscare_installer.plan import redact

_known_hosts_lock = threading.Lock()
MAX_READ = 1 << 20  # the node files the installer reads are small (manifests, hosts)


class RemoteError(Exception):
    """A step failed on the node; the message is one line and free of secrets."""


@dataclass(frozen=True)
class Auth:
    user: str
    password: str | None = None
    key_file: str | None = None
    known_hosts: str = str(Path("~/.ssh/known_hosts").expanduser())
    accept_new: bool = False
    connect_timeout: int = 10
    # Uploads are staged here on the node (root's own directory, not a world-writable /tmp).
    staging: str = "/var/lib/lvscare"


def split_host(address: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{address}: text after the ]")
        return host, int(rest[1:]) if rest else 22
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, 22


class _AcceptNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, path: str) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            p = Path(self.path)
            p.parent.mkdir(parents=True, exist_ok=True)
            with p.open("a", encoding="utf-8") as fh:
                fh.write(line)


class Remote:
    def __init__(self, address: str, auth: Auth) -> None:
        self.address = address
        self.auth = auth
        host, port = split_host(address)
        kwargs: dict[str, Any] = {"look_for_keys": False, "allow_agent": False}
        if auth.password is not None:
            kwargs["password"] = auth.password
        if auth.key_file:
            kwargs["key_filename"] = auth.key_file
        overrides: dict[str, Any] = {"run": {"in_stream": False, "hide": True, "warn": True}}
        if auth.password is not None:
            overrides["sudo"] = {"password": auth.password}
        self.conn = Connection(host, user=auth.user, port=port, connect_timeout=auth.connect_timeout,
                               connect_kwargs=kwargs, config=Config(overrides=overrides))
        client = self.conn.client
        if Path(auth.known_hosts).exists():
            client.load_host_keys(auth.known_hosts)
        client.set_missing_host_key_policy(
            _AcceptNew(auth.known_hosts) if auth.accept_new else paramiko.RejectPolicy())
        self.root = auth.user == "root"
        self._sftp_client: paramiko.SFTPClient | None = None
        self._staged = False

    def redact(self, text: str) -> str:
        return redact(text, [self.auth.password or ""])

    def open(self) -> None:
        host, port = split_host(self.address)
        try:
            self.conn.open()
        except paramiko.BadHostKeyException:
            raise RemoteError(f"host key of {self.address} does not match {self.auth.known_hosts}: "
                              f"refusing to connect") from None
        except paramiko.AuthenticationException:
            how = "password" if self.auth.password is not None else "key"
            raise RemoteError(f"authentication failed for {self.auth.user}@{self.address} ({how})") from None
        except paramiko.SSHException as exc:
            msg = str(exc)
            if "not found in known_hosts" in msg:
                raise RemoteError(f"host key of {self.address} is not in {self.auth.known_hosts}; "
                                  f"verify it and add it, or pass --accept-new-host-keys") from None
            raise RemoteError(f"ssh {self.address}: {self.redact(msg)}") from None
        except TimeoutError:
            raise RemoteError(f"cannot connect to {host}:{port}: timed out") from None
        except OSError as exc:
            reason = exc.strerror or str(exc).split(": ")[-1] or type(exc).__name__
            raise RemoteError(f"cannot connect to {host}:{port}: {self.redact(reason)}") from None

    def close(self) -> None:
        if self._sftp_client is not None:
            self._sftp_client.close()
        self.conn.close()

    def run(self, script: str, *, timeout: float = 300, check: bool = True) -> tuple[int, str, str]:
        """Run ``script`` with ``sh -c`` as root (through sudo for another user)."""
        cmd = "sh -c " + shlex.quote(script)
        try:
            r = self.conn.run(cmd, timeout=timeout) if self.root else self.conn.sudo(cmd, timeout=timeout)
        except CommandTimedOut:
            raise RemoteError(f"timed out after {timeout:.0f}s") from None
        except Exception as exc:  # invoke's AuthFailure for a wrong sudo password, paramiko errors
            raise RemoteError(self.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])) from None
        if check and r.exited != 0:
            last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
            raise RemoteError(self.redact(f"exit {r.exited}: {last}"))
        return r.exited, r.stdout, r.stderr

    def _sftp(self) -> paramiko.SFTPClient:
        if self._sftp_client is None:
            self._sftp_client = self.conn.sftp()
        return self._sftp_client

    def read(self, path: str) -> str | None:
        """A text file's content, or None if it does not exist. Root reads over SFTP (no process
        on the node); another user through sudo."""
        if self.root:
            try:
                with self._sftp().open(path, "r") as fh:
                    data = bytes(fh.read(MAX_READ + 1))
                if len(data) > MAX_READ:
                    raise RemoteError(f"cannot read {path}: larger than {MAX_READ >> 20} MiB")
                return data.decode()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise RemoteError(f"cannot read {path}: {exc.strerror or exc}") from None
        code, out, _ = self.run(f"if [ -e {shlex.quote(path)} ]; then cat {shlex.quote(path)}; "
                                f"else exit 3; fi", check=False)
        if code == 3:
            return None
        if code != 0:
            raise RemoteError(f"cannot read {path}: exit {code}")
        return out

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``path`` atomically: upload beside nothing that matters, then one command
        installs it under a temporary name in the target directory and renames it into place."""
        q = shlex.quote
        # Root stages in the installer's own 0700 directory; another user in its home, then sudo.
        staging = self.auth.staging if self.root else "."
        if self.root and not self._staged:
            try:
                self._sftp().stat(staging)
            except FileNotFoundError:
                self.run(f"mkdir -p -m 700 {q(staging)}")
            self._staged = True
        src = f"{staging}/.lvscare-upload-{secrets.token_hex(6)}"
        try:
            with self._sftp().open(src, "wb") as fh:
                # Private before the first byte: a join token never sits readable by others,
                # whatever the staging directory's mode or the account's umask.
                fh.chmod(0o600)
                fh.write(data)
        except OSError as exc:
            raise RemoteError(f"cannot upload to {src}: {exc.strerror or exc}") from None
        d, name = path.rsplit("/", 1)
        staged = f"{d}/.{name}.lvscare-new"
        # Every argument quoted once for its own place: the trap's command is itself a word.
        cleanup = q(f"rm -f -- {q(src)}")
        self.run(f"trap {cleanup} EXIT; mkdir -p -- {q(d)} && install -m {mode:o} -- {q(src)} {q(staged)} "
                 f"&& mv -f -- {q(staged)} {q(path)}")
