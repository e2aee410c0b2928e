"""The local CA and server certificate: files, extensions, and that real verification agrees."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.authority import (
    CA_CERT_NAME,
    SERVER_CERT_NAME,
    SERVER_VALIDITY,
    CertificatePaths,
    certificate_warnings,
    ensure_certificates,
)
from certs.trust import trust_instructions
from gateway.errors import CertificateError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HOSTS = ["localhost", "127.0.0.1", "::1", "10.8.0.5", "gpu-pc.lan"]
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ca_key(paths: CertificatePaths) -> ec.EllipticCurvePrivateKey:
    assert paths.ca_key is not None
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _verify(
    ca: x509.Certificate, leaf: x509.Certificate, subject: x509.DNSName | x509.IPAddress
) -> None:
    verifier = PolicyBuilder().store(Store([ca])).time(NOW).build_server_verifier(subject)
    verifier.verify(leaf, [])


def _sign_leaf(paths: CertificatePaths, san: x509.GeneralName) -> x509.Certificate:
    """A leaf the attacker with the CA key would make: otherwise exactly like ours."""
    assert paths.ca_cert is not None
    ca = _cert(paths.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(_ca_key(paths), hashes.SHA256())
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    # Made once: key generation is cheap, but the tests only read these files.
    return ensure_certificates(tmp_path_factory.mktemp("certs") / "certs", HOSTS, now=NOW)


def test_creates_all_four_files(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    assert made.ca_key is not None
    assert set(made.created) == {made.ca_cert, made.ca_key, made.server_cert, made.server_key}
    assert [p.name for p in sorted(made.server_cert.parent.iterdir())] == [
        "rootCA-key.pem",
        "rootCA.pem",
        "server-key.pem",
        "server.pem",
    ]


@POSIX
def test_file_and_directory_modes(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    assert made.ca_key is not None

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(made.server_cert.parent) == 0o700
    assert mode(made.ca_key) == 0o400
    assert mode(made.server_key) == 0o600
    assert mode(made.ca_cert) == 0o644
    assert mode(made.server_cert) == 0o644


@POSIX
def test_modes_hold_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        paths = ensure_certificates(tmp_path / "c", ["localhost"], now=NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE(paths.server_cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600


def test_ca_extensions(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    ca = _cert(made.ca_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert str(common_name).startswith("Local AI Gateway CA ")
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)

    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.excluded_subtrees is None
    assert set(constraints.value.permitted_subtrees or []) == {
        x509.DNSName("localhost"),
        x509.DNSName("gpu-pc.lan"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
        x509.IPAddress(ipaddress.ip_network("10.8.0.0/24")),
    }


def test_server_certificate_extensions(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    ca = _cert(made.ca_cert)
    leaf = _cert(made.server_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gpu-pc.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.8.0.5"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.issuer == ca.subject
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=825)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == SERVER_VALIDITY
    assert leaf.not_valid_before_utc < NOW  # backdated for clock skew


def test_server_key_matches_certificate(made: CertificatePaths) -> None:
    key = serialization.load_pem_private_key(made.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == _cert(made.server_cert).public_key()


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.DNSName("gpu-pc.lan"),
        x509.IPAddress(ipaddress.ip_address("10.8.0.5")),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_chain_verifies(made: CertificatePaths, subject: x509.DNSName | x509.IPAddress) -> None:
    assert made.ca_cert is not None
    _verify(_cert(made.ca_cert), _cert(made.server_cert), subject)


def test_chain_rejects_a_name_not_in_the_certificate(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    with pytest.raises(VerificationError):
        _verify(_cert(made.ca_cert), _cert(made.server_cert), x509.DNSName("other.lan"))


@pytest.mark.parametrize(
    "san",
    [
        x509.DNSName("example.com"),
        x509.DNSName("lan"),
        x509.IPAddress(ipaddress.ip_address("8.8.8.8")),
        x509.IPAddress(ipaddress.ip_address("10.8.1.5")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ],
)
def test_name_constraints_are_enforced(
    made: CertificatePaths, san: x509.DNSName | x509.IPAddress
) -> None:
    """A stolen CA key cannot make a certificate the verifier accepts for another site."""
    assert made.ca_cert is not None
    with pytest.raises(VerificationError):
        _verify(_cert(made.ca_cert), _sign_leaf(made, san), san)


def test_name_constraints_permit_the_ca_networks(made: CertificatePaths) -> None:
    # Control for the test above: the same hand-made leaf passes inside the constraints.
    assert made.ca_cert is not None
    san = x509.IPAddress(ipaddress.ip_address("10.8.0.77"))
    _verify(_cert(made.ca_cert), _sign_leaf(made, san), san)


def test_ipv6_host_gets_a_64(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, ["fd00:8::5"], now=NOW)
    assert paths.ca_cert is not None
    constraints = _cert(paths.ca_cert).extensions.get_extension_for_class(x509.NameConstraints)
    assert x509.IPAddress(ipaddress.ip_network("fd00:8::/64")) in (
        constraints.value.permitted_subtrees or []
    )


def test_reuses_ca_and_remakes_missing_server_certificate(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, HOSTS, now=NOW)
    assert first.ca_cert is not None
    ca_serial = _cert(first.ca_cert).serial_number
    server_serial = _cert(first.server_cert).serial_number

    again = ensure_certificates(tmp_path, HOSTS, now=NOW)
    assert again.created == ()
    assert _cert(first.server_cert).serial_number == server_serial

    first.server_cert.unlink()
    first.server_key.unlink()
    later = NOW + timedelta(days=800)
    remade = ensure_certificates(tmp_path, [*HOSTS, "10.8.0.6"], now=later)
    assert remade.created == (first.server_cert, first.server_key)
    assert remade.ca_cert is not None
    ca = _cert(remade.ca_cert)
    assert ca.serial_number == ca_serial
    leaf = _cert(remade.server_cert)
    assert leaf.serial_number != server_serial
    assert leaf.not_valid_before_utc > later - timedelta(hours=1)
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(later)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.8.0.6")))
    )
    verifier.verify(leaf, [])


def test_existing_server_certificate_is_kept_even_for_new_hosts(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, ["localhost"], now=NOW)
    pem = first.server_cert.read_bytes()
    again = ensure_certificates(tmp_path, ["localhost", "10.8.0.5"], now=NOW)
    assert again.created == ()
    assert again.server_cert.read_bytes() == pem
    assert certificate_warnings(again.server_cert, "10.8.0.5", now=NOW)


def test_host_outside_the_existing_ca_constraints_is_refused(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, ["localhost", "10.8.0.5"], now=NOW)
    first.server_cert.unlink()
    with pytest.raises(CertificateError, match=r"192\.168\.1\.9"):
        ensure_certificates(tmp_path, ["localhost", "192.168.1.9"], now=NOW)
    assert not first.server_cert.exists()


def test_unspecified_bind_address_is_left_out(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, ["localhost", "0.0.0.0", "[::]"], now=NOW)
    san = _cert(paths.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.DNSName("localhost")]
    with pytest.raises(CertificateError):
        ensure_certificates(tmp_path / "none", ["0.0.0.0"], now=NOW)


def test_warnings_for_host_not_covered(made: CertificatePaths) -> None:
    assert certificate_warnings(made.server_cert, "10.8.0.5", now=NOW) == []
    assert certificate_warnings(made.server_cert, "GPU-PC.lan.", now=NOW) == []
    assert certificate_warnings(made.server_cert, "0.0.0.0", now=NOW) == []
    assert certificate_warnings(made.server_cert, "::", now=NOW) == []
    (warning,) = certificate_warnings(made.server_cert, "192.168.1.20", now=NOW)
    assert "does not cover 192.168.1.20" in warning
    (warning,) = certificate_warnings(made.server_cert, "other.lan", now=NOW)
    assert "does not cover other.lan" in warning


def test_warnings_for_expiry(made: CertificatePaths) -> None:
    not_after = _cert(made.server_cert).not_valid_after_utc
    assert certificate_warnings(made.server_cert, "localhost", now=not_after - timedelta(31)) == []
    (soon,) = certificate_warnings(made.server_cert, "localhost", now=not_after - timedelta(10))
    assert "expires on" in soon
    assert "in 10 days" in soon
    (gone,) = certificate_warnings(made.server_cert, "localhost", now=not_after + timedelta(1))
    assert "expired on" in gone
    (early,) = certificate_warnings(made.server_cert, "localhost", now=NOW - timedelta(days=1))
    assert "not valid until" in early


def test_corrupt_ca_certificate(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, ["localhost"], now=NOW)
    assert paths.ca_cert is not None
    paths.ca_cert.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(CertificateError, match=r"rootCA\.pem"):
        ensure_certificates(tmp_path, ["localhost"], now=NOW)
    paths.server_cert.unlink()
    paths.server_key.unlink()
    with pytest.raises(CertificateError, match=r"rootCA\.pem"):
        ensure_certificates(tmp_path, ["localhost"], now=NOW)


def test_corrupt_server_key(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, ["localhost"], now=NOW)
    paths.server_key.chmod(0o600)
    paths.server_key.write_bytes(b"garbage")
    with pytest.raises(CertificateError, match=r"server-key\.pem"):
        ensure_certificates(tmp_path, ["localhost"], now=NOW)


def test_half_pairs_are_refused_not_overwritten(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, ["localhost"], now=NOW)
    paths.server_key.unlink()
    with pytest.raises(CertificateError, match="missing"):
        ensure_certificates(tmp_path, ["localhost"], now=NOW)

    # A key without its certificate is an interrupted run's leftover: replaced.
    paths.server_cert.unlink()
    paths.server_key.write_bytes(b"leftover")
    again = ensure_certificates(tmp_path, ["localhost"], now=NOW)
    assert again.created == (paths.server_cert, paths.server_key)
    assert paths.server_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")

    # Without the CA key an existing server certificate still serves; a new one cannot be made.
    assert paths.ca_key is not None
    paths.ca_key.chmod(0o600)
    paths.ca_key.unlink()
    assert ensure_certificates(tmp_path, ["localhost"], now=NOW).ca_key is None
    paths.server_cert.unlink()
    with pytest.raises(CertificateError, match="missing"):
        ensure_certificates(tmp_path, ["localhost"], now=NOW)


def test_directory_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CertificateError, match="cannot create"):
        ensure_certificates(blocker / "certs", ["localhost"], now=NOW)


def test_trust_instructions_name_the_file(made: CertificatePaths) -> None:
    assert made.ca_cert is not None
    text = trust_instructions(made.ca_cert)
    path = str(made.ca_cert.resolve())
    assert f'-k /Library/Keychains/System.keychain "{path}"' in text
    assert f'certutil -addstore -f ROOT "{path}"' in text
    assert "update-ca-certificates" in text
    assert "sql:$HOME/.pki/nssdb" in text
    assert "Certificate Trust Settings" in text
    assert "Install a certificate > CA certificate" in text


def test_tls_handshake_with_python_ssl(tmp_path: Path) -> None:
    """OpenSSL, as the gateway's ssl context uses it, accepts the pair for an IP address."""
    paths = ensure_certificates(tmp_path, ["localhost", "10.8.0.5"])  # real clock
    assert paths.ca_cert is not None
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname="10.8.0.5")
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    done: set[str] = set()
    for _ in range(10):  # a TLS 1.3 handshake takes two round trips
        for name, side in (("client", client), ("server", server)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if done == {"client", "server"}:
            break
    assert done == {"client", "server"}
    assert client.getpeercert() is not None


def test_certs_command_renews_the_server_certificate_with_the_same_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.ops.cli import main

    assert main(["certs", "--cert-dir", str(tmp_path), "--host", "10.8.0.5"]) == 0
    ca_before = (tmp_path / CA_CERT_NAME).read_bytes()
    assert main(["certs", "--cert-dir", str(tmp_path), "--host", "10.8.0.6"]) == 0
    out = capsys.readouterr().out
    assert "covers: localhost, 127.0.0.1, ::1, 10.8.0.6" in out
    assert "update-ca-certificates" in out  # the trust steps are printed
    assert (tmp_path / CA_CERT_NAME).read_bytes() == ca_before
    leaf = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT_NAME).read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.8.0.6") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.8.0.5") not in sans.get_values_for_type(x509.IPAddress)
    # Outside the CA's name constraints: refused, one line, nothing replaced.
    assert main(["certs", "--cert-dir", str(tmp_path), "--host", "192.168.1.4"]) == 1
    assert "outside what the CA" in capsys.readouterr().err
