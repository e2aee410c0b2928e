"""The gateway's own certificate authority (what mkcert does) and the server certificate.

Browsers only allow the microphone on a secure origin, so a LAN or WireGuard address needs
HTTPS with a certificate the user's devices trust. The gateway makes a local CA once, the
user trusts it on each device (see ``certs.trust``), and server certificates signed by it
follow. The CA is name-constrained to the names and networks it was made for, so that its
key, if stolen, cannot be used to impersonate other sites to those devices.

Keys are EC P-256: fast to generate, small, and accepted by every current browser and OS
(Apple, Android, Windows, NSS).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertificateError

logger = logging.getLogger(__name__)

CA_CERT_NAME = "rootCA.pem"
CA_KEY_NAME = "rootCA-key.pem"
SERVER_CERT_NAME = "server.pem"
SERVER_KEY_NAME = "server-key.pem"

CA_VALIDITY = timedelta(days=3650)
# Apple rejects TLS server certificates valid for longer than 825 days, even from
# user-trusted roots.
SERVER_VALIDITY = timedelta(days=825)
# Backdated so that a device whose clock runs a little behind still accepts a fresh cert.
CLOCK_SKEW = timedelta(minutes=5)
EXPIRY_WARNING = timedelta(days=30)

_ORGANIZATION = "Local AI Gateway"
_IPV4_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_IPV6_LOOPBACK = ipaddress.IPv6Network("::1/128")

_SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Host: TypeAlias = str | _IP  # a DNS name (lower-case A-label) or an address


@dataclass(frozen=True)
class CertificatePaths:
    """Where the certificates are, and which files this call created.

    ``ca_cert``/``ca_key`` are None when that file does not exist: the user supplied their
    own server certificate (no local CA needed), or removed the CA key after issuing.
    """

    ca_cert: Path | None
    ca_key: Path | None
    server_cert: Path
    server_key: Path
    created: tuple[Path, ...] = ()


def ensure_certificates(
    cert_dir: Path,
    hosts: Sequence[str],
    *,
    now: datetime | None = None,
    renew_server: bool = False,
) -> CertificatePaths:
    """Make whatever of the CA and server certificate is missing in ``cert_dir``.

    An existing CA is reused (devices already trust it). An existing server certificate is
    kept (``certificate_warnings`` says if it no longer fits) unless ``renew_server`` asks
    for a new one for ``hosts``; nothing else is ever overwritten, bar a server key left
    without its certificate. Raises CertificateError when a file is unreadable, corrupt or
    half of a pair, when the directory cannot be written, or when a host lies outside the
    existing CA's name constraints.
    """
    now = _utc(now)
    names = _parse_hosts([hosts] if isinstance(hosts, str) else hosts)
    ca_cert_path = cert_dir / CA_CERT_NAME
    ca_key_path = cert_dir / CA_KEY_NAME
    server_cert_path = cert_dir / SERVER_CERT_NAME
    server_key_path = cert_dir / SERVER_KEY_NAME
    try:
        cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create certificate directory {cert_dir}: {exc}") from exc

    # Read whatever exists first, so corruption is reported even when nothing is made.
    ca_cert = _load_ca_cert(ca_cert_path) if ca_cert_path.exists() else None
    ca_key = _load_signing_key(ca_key_path) if ca_key_path.exists() else None
    if ca_cert is not None and ca_key is not None:
        _check_key_matches(ca_cert, ca_key, ca_cert_path, ca_key_path)

    created: list[Path] = []
    if server_cert_path.exists() and not renew_server:
        if not server_key_path.exists():
            raise CertificateError(
                f"{server_cert_path} exists but its key {server_key_path} is missing: "
                "restore the key, or delete the certificate to have a new pair made"
            )
        server_cert = _load_cert(server_cert_path)
        server_key = _load_private_key(server_key_path)
        _check_key_matches(server_cert, server_key, server_cert_path, server_key_path)
        logger.debug("keeping existing server certificate %s", server_cert_path)
    else:
        if server_key_path.exists() and not server_cert_path.exists():
            # A key without its certificate is left over from an interrupted run.
            logger.warning("replacing %s, which has no certificate", server_key_path)
        if ca_cert is None and ca_key is None:
            ca_cert, ca_key = _create_ca(names, now)
            _write(ca_key_path, _key_pem(ca_key), 0o400)
            _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
            created += [ca_cert_path, ca_key_path]
            logger.info(
                "created local certificate authority %s (%s); trust it on each device",
                ca_cert_path,
                _common_name(ca_cert),
            )
        elif ca_cert is None or ca_key is None:
            present, missing = (
                (ca_key_path, ca_cert_path) if ca_cert is None else (ca_cert_path, ca_key_path)
            )
            raise CertificateError(
                f"cannot sign a server certificate: {present} exists but {missing} is "
                "missing. Restore it, or delete both to make a new CA (every device must "
                "then trust the new one)"
            )
        _check_within_constraints(ca_cert, ca_cert_path, names)
        server_cert, server_key = _create_server_cert(ca_cert, ca_key, names, now)
        _write(server_key_path, _key_pem(server_key), 0o600)
        _write(server_cert_path, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        created += [server_cert_path, server_key_path]
        logger.info(
            "created server certificate %s for %s, valid until %s",
            server_cert_path,
            ", ".join(str(name) for name in names),
            server_cert.not_valid_after_utc.date().isoformat(),
        )

    return CertificatePaths(
        ca_cert=ca_cert_path if ca_cert_path.exists() else None,
        ca_key=ca_key_path if ca_key_path.exists() else None,
        server_cert=server_cert_path,
        server_key=server_key_path,
        created=tuple(created),
    )


def certificate_warnings(server_cert: Path, host: str, *, now: datetime) -> list[str]:
    """Say what is wrong with serving ``server_cert`` on ``host`` at ``now``, if anything.

    A wildcard bind address (0.0.0.0, ::) gets no coverage warning: which address a
    client uses is not known here.
    """
    now = _utc(now)
    cert = _load_cert(server_cert)
    warnings: list[str] = []
    parsed = _parse_host(host)
    if parsed is not None and not _covers(cert, parsed):
        warnings.append(
            f"the certificate {server_cert} does not cover {host}, so browsers will "
            "reject it there; delete it and its key to have a new one made at the next start"
        )
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        warnings.append(
            f"the certificate {server_cert} is not valid until {not_before.isoformat()}; "
            "check this machine's clock"
        )
    if now >= not_after:
        warnings.append(
            f"the certificate {server_cert} expired on {not_after.date().isoformat()}; "
            "delete it and its key to have a new one made at the next start"
        )
    elif not_after - now <= EXPIRY_WARNING:
        warnings.append(
            f"the certificate {server_cert} expires on {not_after.date().isoformat()} "
            f"(in {(not_after - now).days} days); delete it and its key to have a new one "
            "made at the next start"
        )
    return warnings


# --- hosts -------------------------------------------------------------------------------


def _parse_hosts(hosts: Sequence[str]) -> tuple[_Host, ...]:
    names: dict[_Host, None] = {}  # ordered, deduplicated
    for host in hosts:
        parsed = _parse_host(host)
        if parsed is not None:
            names[parsed] = None
    if not names:
        raise CertificateError(
            f"no host name or address to put in a certificate (given {list(hosts)!r})"
        )
    return tuple(names)


def _parse_host(host: str) -> _Host | None:
    """A DNS name or IP address, or None for an unspecified (wildcard) address."""
    text = host.strip().removeprefix("[").removesuffix("]")
    with contextlib.suppress(ValueError):
        # An IPv6 zone (fe80::1%wg0) is local to this machine and has no place in a cert.
        address = ipaddress.ip_address(text.split("%", 1)[0])
        return None if address.is_unspecified else address
    name = text.rstrip(".").lower()
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise CertificateError(f"{host!r} is not a valid host name") from exc
    if not ascii_name or any(c.isspace() or c in "/:@" for c in ascii_name):
        raise CertificateError(f"{host!r} is not a valid host name")
    return ascii_name


def _general_name(host: _Host) -> x509.GeneralName:
    return x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host)


def _covers(cert: x509.Certificate, host: _Host) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False  # browsers ignore the subject CN
    if not isinstance(host, str):
        return host in san.get_values_for_type(x509.IPAddress)
    for pattern in san.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern == host:
            return True
        # A wildcard matches exactly one leftmost label.
        if pattern.startswith("*.") and host.partition(".")[2] == pattern[2:]:
            return True
    return False


def _permitted_subtrees(names: Sequence[_Host]) -> list[x509.GeneralName]:
    # Both address families and DNS always get an entry: a name type with no permitted
    # subtree would be unconstrained (RFC 5280 §4.2.1.10).
    dns = {"localhost"}
    networks: set[_Network] = {_IPV4_LOOPBACK, _IPV6_LOOPBACK}
    for host in names:
        if isinstance(host, str):
            dns.add(host.removeprefix("*."))
        elif host.is_loopback:
            networks.add(_IPV4_LOOPBACK if host.version == 4 else _IPV6_LOOPBACK)
        else:
            prefix = 24 if host.version == 4 else 64
            networks.add(ipaddress.ip_network(f"{host}/{prefix}", strict=False))
    subtrees: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(dns)]
    subtrees += [
        x509.IPAddress(network)
        for network in sorted(networks, key=lambda n: (n.version, int(n.network_address)))
    ]
    return subtrees


def _check_within_constraints(
    ca_cert: x509.Certificate, ca_path: Path, names: Sequence[_Host]
) -> None:
    """Refuse to sign what the CA's devices would reject, with a message that says why."""
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    permitted = constraints.permitted_subtrees or []
    permitted_dns = [n.value.lower() for n in permitted if isinstance(n, x509.DNSName)]
    permitted_ip = [n.value for n in permitted if isinstance(n, x509.IPAddress)]
    outside: list[str] = []
    for host in names:
        if isinstance(host, str):
            base = host.removeprefix("*.")
            ok = not permitted_dns or any(
                base == d or base.endswith("." + d) for d in permitted_dns
            )
        else:
            ok = not permitted_ip or any(
                isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and host in net
                for net in permitted_ip
            )
        if not ok:
            outside.append(str(host))
    if outside:
        allowed = ", ".join(str(n.value) for n in permitted)
        raise CertificateError(
            f"{', '.join(outside)} lies outside what the CA {ca_path} may certify ({allowed}). "
            "Delete the CA files and server certificate to make a new CA for the new "
            "address, then trust the new CA on every device"
        )


# --- making certificates -----------------------------------------------------------------


def _create_ca(
    names: Sequence[_Host], now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The machine's name and a random suffix tell this CA apart in a device's trust list.
    common_name = f"{_ORGANIZATION} CA {socket.gethostname()[:32]} {secrets.token_hex(3)}"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    not_before = now - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=_permitted_subtrees(names), excluded_subtrees=None
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _create_server_cert(
    ca_cert: x509.Certificate, ca_key: _SigningKey, names: Sequence[_Host], now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    # No CN: browsers match only the SAN, and some libraries would test a CN against the
    # CA's DNS name constraints.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "server certificate"),
        ]
    )
    not_before = now - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        # Never past the CA: a chain is only as valid as its shortest link.
        .not_valid_after(min(not_before + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in names]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,  # only RSA key exchange needs it; this key is EC
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- files -------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc}") from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a PEM file.

    The mode is set when the file is created, before any secret is in it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, mode)
        try:
            with open(fd, "wb") as file:
                if hasattr(os, "fchmod"):  # the umask may have narrowed a certificate's mode
                    os.fchmod(file.fileno(), mode)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc}") from exc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


def _load_ca_cert(path: Path) -> x509.Certificate:
    cert = _load_cert(path)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    except ValueError as exc:  # a malformed extension is only parsed when asked for
        raise CertificateError(f"{path} has a malformed extension: {exc}") from exc
    if not is_ca:
        raise CertificateError(f"{path} is not a CA certificate")
    return cert


def _load_private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{path} is not an unencrypted PEM private key: {exc}") from exc


def _load_signing_key(path: Path) -> _SigningKey:
    key = _load_private_key(path)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError(f"{path} holds a {type(key).__name__}; an EC or RSA key is needed")
    return key


def _check_key_matches(
    cert: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path
) -> None:
    def spki(public_key: PublicKeyTypes) -> bytes:
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    if spki(key.public_key()) != spki(cert.public_key()):
        raise CertificateError(f"{key_path} is not the key of {cert_path}")


def _key_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
