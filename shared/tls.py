"""TLS for EdgeFleet's links, and the one rule that lets a link go without it: loopback.

Every link that leaves the machine is encrypted. The control plane's API is HTTPS, served by the
control plane itself (`tls_cert_file`) or by a proxy in front of it (`behind_tls_proxy`); agents
and operators reach it over https://, and agents reach the broker over mqtts://. Plain http://
and mqtt:// are accepted without being asked for only when the host is loopback (127.0.0.0/8,
::1, `localhost`): no network sees those bytes, which is where the local demo and the tests run.

The contexts are built once per process from PEM files and raise `TlsFileError`, naming the
file, when one cannot be used; each package translates it into its own settings error.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.errors import EdgeFleetError

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
# The plain schemes EdgeFleet speaks, and the scheme that encrypts each.
TLS_SCHEMES = {"http": "https", "mqtt": "mqtts"}


class TlsFileError(EdgeFleetError):
    """A certificate, key or CA file cannot be used; fix the file or the setting naming it."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, or an address with or without brackets) is this machine only.

    An empty host and the wildcard addresses (0.0.0.0, ::) mean every interface: not loopback.
    """
    host = host.strip().removeprefix("[").removesuffix("]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_plain_remote(url: str) -> bool:
    """Whether `url` is http:// or mqtt:// to a host that is not loopback: it needs TLS."""
    parts = urlsplit(url)
    return parts.scheme.lower() in TLS_SCHEMES and not is_loopback(parts.hostname or "")


def client_context(ca_file: Path | None = None, *, ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A client context, TLS 1.2 at least, that verifies the server's certificate and name.

    It trusts the CA certificates (PEM) of `ca_file` or `ca_pem` and those only; with neither,
    the system's trusted CAs.
    """
    where = f"{ca_file} as CA certificates" if ca_file is not None else "the CA certificates"
    try:
        if ca_pem is not None:
            if not ca_pem.strip():  # empty cadata would quietly mean the system's CAs
                raise ValueError("no certificate in it")
            context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
        else:
            context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise TlsFileError(f"cannot use {where}: {_reason(error)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class ServerTls:
    """What an HTTPS server needs: its own context, and the one of its loopback self-check."""

    context: ssl.SSLContext
    self_check: ssl.SSLContext

    @classmethod
    def load(cls, cert_file: Path, key_file: Path | None = None) -> ServerTls:
        """Load the certificate chain (PEM, leaf first) and its key (None: in `cert_file`).

        Blocking: it reads the files.
        """
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert_file, key_file)
        except OSError as error:
            key = key_file or "in the same file"
            raise TlsFileError(
                f"cannot load the TLS certificate {cert_file} (key {key}): {_reason(error)}"
            ) from None
        # The server asks itself for its liveness path (the systemd watchdog) through loopback,
        # an address its certificate rarely names: the certificate names the public host. So
        # the self-check does not compare names; instead it trusts nothing but the chain this
        # server serves (a leaf may be the anchor: partial chains), which still proves that the
        # answer came from this server over working TLS.
        try:
            self_check = ssl.create_default_context(cafile=cert_file)
        except OSError as error:
            raise TlsFileError(f"cannot read the certificates in {cert_file}: {error}") from None
        self_check.check_hostname = False
        self_check.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return cls(context, self_check)


def _reason(error: BaseException) -> str:
    """OpenSSL's reason ("key values mismatch", "no such file") rather than its whole tuple."""
    text = str(error)
    if isinstance(error, ssl.SSLError) and error.reason:
        text = error.reason
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text).removeprefix("[SSL] ")
    if text.upper() == "PEM LIB":
        return "not a PEM certificate, or not with its private key"
    return text.replace("_", " ").lower() if text.isupper() else text[:1].lower() + text[1:]
