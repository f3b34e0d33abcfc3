"""The TLS context of health probes, built from the certificate files of the configuration.

Its own module, with nothing but ``ssl``: ``--run-once`` and ``-C`` check the files too (exit 2
before the kernel changes) without importing the prober's HTTP client.
"""

from __future__ import annotations

import ssl

from lvscare.config import HealthCheck, show
from lvscare.errors import UserError
from lvscare.files import read_bytes


def build_ssl_context(hc: HealthCheck) -> ssl.SSLContext:
    """Built once at start-up (reading certificates is blocking I/O); bad files exit 2."""
    for path, flag in ((hc.ca, "--health-ca"), (hc.cert, "--health-cert"), (hc.key, "--health-key")):
        if path:
            read_bytes(path, flag)  # a regular, small file: OpenSSL would block on a FIFO
    try:
        ctx = ssl.create_default_context(cafile=hc.ca) if hc.ca else ssl.create_default_context()
        if hc.insecure_skip_verify and not hc.ca:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if hc.cert and hc.key:
            # An encrypted key fails here instead of OpenSSL prompting on the terminal.
            ctx.load_cert_chain(hc.cert, hc.key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        which = "--health-ca" if hc.ca and "cafile" in str(exc).lower() else "health certificate"
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        paths = ", ".join(show(p) for p in (hc.ca, hc.cert, hc.key) if p)
        raise UserError(f"{which} ({paths}): {reason}") from None
    return ctx


def check_certificates(health_checks: list[HealthCheck]) -> None:
    """Read every certificate the probes would use; a bad one raises UserError."""
    for hc in health_checks:
        if hc.type == "http" and hc.scheme == "https":
            build_ssl_context(hc)
