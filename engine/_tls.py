"""TLS the way Resoto's core does it: a certificate authority of the server's own.

``phasebus serve --tls`` creates, on first start, a CA (an RSA key and a
self-signed certificate valid ten years) and a server certificate signed by it
for ``127.0.0.1``, ``::1``, ``localhost`` and the host's name, and keeps them
beside the store (``<store>.tls/``); later starts reuse them, and renew the
server certificate when it is about to expire or no longer names this host.
Components fetch the CA certificate from ``GET /ca/cert`` (with a PSK, the
answer carries a JWT in its ``Authorization`` header whose claim
``sha256_fingerprint`` lets the client check it came from a server that knows
the key) and have their own certificate requests signed with ``POST /ca/sign``.

``phasebus serve --cert FILE --key FILE`` serves the user's certificate
instead; ``/ca/cert`` then answers the last certificate in FILE (the top of its
chain) and ``/ca/sign`` is not available.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._auth import make_token
from ._errors import TLSError as TLSError
from ._http import BadInput, read_body

logger = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 365
SIGNED_DAYS = 365
#: A server certificate closer than this to its end is renewed at start.
RENEW_BEFORE = timedelta(days=30)
PEM_TYPE = "application/x-pem-file"
FINGERPRINT_HEADER = "SHA256-Fingerprint"


def fingerprint(certificate: x509.Certificate) -> str:
    """Return a certificate's SHA-256 fingerprint as Resoto writes it (``AB:CD:...``)."""
    return ":".join(f"{byte:02X}" for byte in certificate.fingerprint(hashes.SHA256()))


def host_names() -> list[str]:
    """Return the DNS names a local server certificate covers."""
    names = ["localhost"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def host_addresses() -> list[str]:
    """Return the IP addresses a local server certificate covers."""
    return ["127.0.0.1", "::1"]


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> datetime:
    return datetime.now(UTC)


def _alt_names(names: Iterable[str], addresses: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    entries += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    return x509.SubjectAlternativeName(entries)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise TLSError(f"cannot read certificate {path}: {error.strerror}") from None
    except ValueError:
        raise TLSError(f"{path} holds no PEM certificate") from None


def _load_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise TLSError(f"cannot read key {path}: {error.strerror}") from None
    except (ValueError, TypeError):
        raise TLSError(f"{path} holds no unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TLSError(f"{path}: only RSA keys are supported")
    return key


@attrs.define
class Authority:
    """The server's TLS material: the CA (when it has its key) and the server certificate.

    Make one with :meth:`load_or_create` (``--tls``) or :meth:`from_files`
    (``--cert``/``--key``).
    """

    ca_certificate: x509.Certificate
    ca_key: rsa.RSAPrivateKey | None
    certificate_file: Path
    key_file: Path

    @classmethod
    def load_or_create(cls, directory: Path) -> Authority:
        """Load the CA and server certificate kept in ``directory``, creating what is missing.

        Raises:
            TLSError: a file there cannot be used.
        """
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise TLSError(f"cannot create {directory}: {error.strerror}") from None
        ca_file, ca_key_file = directory / "ca.crt", directory / "ca.key"
        if ca_file.exists() and ca_key_file.exists():
            ca_certificate = _load_certificates(ca_file)[0]
            ca_key = _load_key(ca_key_file)
            assert isinstance(ca_key, rsa.RSAPrivateKey)
        else:
            ca_key = _new_key()
            ca_certificate = _create_ca(ca_key)
            _write_private(ca_key_file, _key_pem(ca_key))
            ca_file.write_bytes(_pem(ca_certificate))
            logger.info(
                "created a CA in %s, fingerprint %s", directory, fingerprint(ca_certificate)
            )
        authority = cls(ca_certificate, ca_key, directory / "server.crt", directory / "server.key")
        if not authority._server_certificate_fits():
            key = _new_key()
            certificate = authority.issue(
                key.public_key(),
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phasebus")]),
                _alt_names(host_names(), host_addresses()),
                days=SERVER_DAYS,
            )
            _write_private(authority.key_file, _key_pem(key))
            authority.certificate_file.write_bytes(_pem(certificate) + _pem(ca_certificate))
            logger.info("created a server certificate in %s", directory)
        return authority

    @classmethod
    def from_files(cls, certificate_file: Path, key_file: Path) -> Authority:
        """Use the user's certificate (chain) and key; ``/ca/cert`` answers the chain's top.

        Raises:
            TLSError: a file cannot be read, or the key does not fit the certificate.
        """
        chain = _load_certificates(certificate_file)
        key = _load_key(key_file)
        if chain[0].public_key() != key.public_key():
            raise TLSError(f"the key in {key_file} does not belong to {certificate_file}")
        return cls(chain[-1], None, certificate_file, key_file)

    def _server_certificate_fits(self) -> bool:
        if not (self.certificate_file.exists() and self.key_file.exists()):
            return False
        try:
            certificate = _load_certificates(self.certificate_file)[0]
            _load_key(self.key_file)
        except TLSError as error:
            logger.warning("renewing the server certificate: %s", error)
            return False
        if certificate.not_valid_after_utc - RENEW_BEFORE < _now():
            return False
        if certificate.issuer != self.ca_certificate.subject:
            return False
        try:
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return False
        dns = set(names.value.get_values_for_type(x509.DNSName))
        addresses = {str(a) for a in names.value.get_values_for_type(x509.IPAddress)}
        return set(host_names()) <= dns and set(host_addresses()) <= addresses

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM-encoded."""
        return _pem(self.ca_certificate)

    def issue(
        self,
        public_key: rsa.RSAPublicKey | object,
        subject: x509.Name,
        alt_names: x509.SubjectAlternativeName | None,
        *,
        days: int = SIGNED_DAYS,
    ) -> x509.Certificate:
        """Return a certificate for ``public_key`` signed by the CA (server and client use).

        Raises:
            TLSError: the CA's key is not known (``--cert``/``--key``).
        """
        if self.ca_key is None:
            raise TLSError("this server has no CA key: it serves a certificate given with --cert")
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if alt_names is not None:
            builder = builder.add_extension(alt_names, critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def sign_request(self, pem: bytes) -> x509.Certificate:
        """Sign a PEM certificate signing request: its subject and alternative names.

        Raises:
            ValueError: not a PEM request, or its signature does not verify.
            TLSError: the CA's key is not known.
        """
        request = x509.load_pem_x509_csr(pem)
        try:
            valid = request.is_signature_valid
        except InvalidSignature:
            valid = False
        if not valid:
            raise ValueError("the request's signature does not verify")
        try:
            alt_names: x509.SubjectAlternativeName | None = (
                request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            )
        except x509.ExtensionNotFound:
            alt_names = None
        return self.issue(request.public_key(), request.subject, alt_names)

    def server_context(self) -> ssl.SSLContext:
        """Return the server-side TLS context of the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certificate_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            raise TLSError(
                f"cannot use {self.certificate_file} with {self.key_file}: {error}"
            ) from None
        return context


def _create_ca(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "phasebus"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"phasebus CA {socket.gethostname()}"),
        ]
    )
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


class CertificateRoutes:
    """``GET /ca/cert`` and ``POST /ca/sign``.

    Args:
        authority: the server's TLS material, or None when it serves plain HTTP.
        psk: the pre-shared key that signs the CA certificate's answer, if any.
        max_body_size: largest certificate request, in bytes.
    """

    def __init__(self, authority: Authority | None, psk: str | None, *, max_body_size: int) -> None:
        self.authority = authority
        self.psk = psk
        self.max_body_size = max_body_size

    def routes(self) -> list[BaseRoute]:
        """Return the routes."""
        return [
            Route("/ca/cert", self.ca_certificate, methods=["GET"]),
            Route("/ca/sign", self.sign, methods=["POST"]),
        ]

    def _authority(self) -> Authority:
        if self.authority is None:
            raise BadInput(404, "this server runs without TLS: start it with --tls for a CA")
        return self.authority

    async def ca_certificate(self, request: Request) -> Response:
        authority = self._authority()
        digest = fingerprint(authority.ca_certificate)
        headers = {
            FINGERPRINT_HEADER: digest,
            "Content-Disposition": 'attachment; filename="phasebus_ca.pem"',
        }
        if self.psk:
            # deriving the key takes tens of milliseconds: not on the event loop
            token = await trio.to_thread.run_sync(
                functools.partial(make_token, self.psk, claims={"sha256_fingerprint": digest})
            )
            headers["Authorization"] = f"Bearer {token}"
        return Response(authority.ca_pem, media_type=PEM_TYPE, headers=headers)

    async def sign(self, request: Request) -> Response:
        authority = self._authority()
        body = await read_body(request, self.max_body_size)
        try:
            certificate = authority.sign_request(body)
        except ValueError as error:
            raise BadInput(
                400, "invalid certificate request", [f"body: {str(error).splitlines()[0]}"]
            ) from None
        except TLSError as error:
            raise BadInput(501, str(error)) from None
        return Response(
            _pem(certificate),
            media_type=PEM_TYPE,
            headers={FINGERPRINT_HEADER: fingerprint(certificate)},
        )
