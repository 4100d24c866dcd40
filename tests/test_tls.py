"""TLS the Resoto way: the server's own CA, /ca/cert signed with the PSK, /ca/sign."""

from __future__ import annotations

import functools
import json
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from engine._auth import TokenVerifier, make_token
from engine._errors import PhasebusError
from engine._serve import serve
from engine._tls import Authority, TLSError, fingerprint, host_names
from machines import BUILTIN_WORKFLOWS

PSK = "tls-secret"


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca_pem.decode())
    return context


@asynccontextmanager
async def tls_server(tmp_path: Path, **options: object) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve,
                port=0,
                store=str(tmp_path / "store.sqlite3"),
                announce=False,
                builtins=BUILTIN_WORKFLOWS.values(),
                **options,  # type: ignore[arg-type]
            )
        )
        yield url
        nursery.cancel_scope.cancel()


def csr(common_name: str, *, names: list[str]) -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, request.public_bytes(serialization.Encoding.PEM)


def test_the_ca_and_server_certificate_are_created_once_and_reused(tmp_path: Path) -> None:
    first = Authority.load_or_create(tmp_path / "tls")
    server_pem = first.certificate_file.read_bytes()
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(first.key_file.stat().st_mode) == 0o600
    again = Authority.load_or_create(tmp_path / "tls")
    assert fingerprint(again.ca_certificate) == fingerprint(first.ca_certificate)
    assert again.certificate_file.read_bytes() == server_pem
    server = x509.load_pem_x509_certificates(server_pem)[0]
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", *host_names()} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    # signed by the CA
    ca_key = first.ca_certificate.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert server.signature_hash_algorithm is not None
    ca_key.verify(
        server.signature,
        server.tbs_certificate_bytes,
        padding.PKCS1v15(),
        server.signature_hash_algorithm,
    )
    # a damaged server certificate is replaced, the CA stays
    first.certificate_file.write_text("garbage")
    third = Authority.load_or_create(tmp_path / "tls")
    assert fingerprint(third.ca_certificate) == fingerprint(first.ca_certificate)
    assert third.certificate_file.read_bytes() != b"garbage"


async def test_https_and_wss_with_the_ca_from_ca_cert_signed_with_the_psk(tmp_path: Path) -> None:
    async with tls_server(tmp_path, tls=True, psk=PSK) as url:
        assert url.startswith("https://127.0.0.1:")
        # the CA certificate needs no token and no trust yet
        async with httpx.AsyncClient(base_url=url, verify=False) as insecure:
            answer = await insecure.get("/ca/cert")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-pem-file"
        ca = x509.load_pem_x509_certificate(answer.content)
        assert answer.headers["sha256-fingerprint"] == fingerprint(ca)
        scheme, _, token = answer.headers["authorization"].partition(" ")
        assert scheme == "Bearer"
        claims = await TokenVerifier(PSK).verify(token)
        assert claims["sha256_fingerprint"] == fingerprint(ca)

        context = client_context(answer.content)
        async with httpx.AsyncClient(base_url=url, verify=context) as http:
            assert (await http.get("/system/ping")).text == "pong"
            # signing needs a token
            _, request = csr("resoto.worker", names=["worker.local"])
            assert (await http.post("/ca/sign", content=request)).status_code == 401
            auth = {"authorization": f"Bearer {make_token(PSK)}"}
            signed = await http.post("/ca/sign", content=request, headers=auth)
            assert signed.status_code == 200, signed.text
            certificate = x509.load_pem_x509_certificate(signed.content)
            assert certificate.issuer == ca.subject
            assert certificate.subject.rfc4514_string() == "CN=resoto.worker"
            alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert alt.value.get_values_for_type(x509.DNSName) == ["worker.local"]
            assert signed.headers["sha256-fingerprint"] == fingerprint(certificate)
            bad = await http.post("/ca/sign", content=b"not a request", headers=auth)
            assert bad.status_code == 400
            assert bad.json()["error"] == "invalid certificate request"

        # WSS with the same CA
        async with trio_websocket.open_websocket_url(
            url.replace("https", "wss") + "/events?show=config-updated",
            ssl_context=context,
            extra_headers=[(b"authorization", f"Bearer {make_token(PSK)}".encode())],
        ) as ws:
            async with httpx.AsyncClient(base_url=url, verify=context) as http:
                await http.put("/config/x", json={"a": 1}, headers=auth)
            with trio.fail_after(5):
                event = json.loads(await ws.get_message())
            assert event["message_type"] == "config-updated"
            assert event["data"]["id"] == "x"


async def test_a_restart_serves_the_same_ca(tmp_path: Path) -> None:
    fingerprints = []
    for _ in range(2):
        async with (
            tls_server(tmp_path, tls=True) as url,
            httpx.AsyncClient(base_url=url, verify=False) as http,
        ):
            answer = await http.get("/ca/cert")
            assert "authorization" not in answer.headers  # no PSK, no signature
            fingerprints.append(answer.headers["sha256-fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    assert (tmp_path / "store.sqlite3.tls" / "ca.crt").exists()


async def test_a_certificate_of_the_users_own(tmp_path: Path) -> None:
    own = Authority.load_or_create(tmp_path / "own")
    async with (
        tls_server(tmp_path, cert=own.certificate_file, key=own.key_file) as url,
        httpx.AsyncClient(base_url=url, verify=client_context(own.ca_pem)) as http,
    ):
        # the top of the chain in the file is what /ca/cert answers
        assert (await http.get("/ca/cert")).content == own.ca_pem
        _, request = csr("c", names=["c"])
        refused = await http.post("/ca/sign", content=request)
        assert refused.status_code == 501
        assert "no CA key" in refused.json()["error"]
    with pytest.raises(PhasebusError, match=r"^--cert and --key: give both or neither$"):
        await serve(port=0, store="memory", cert=own.certificate_file, announce=False)


async def test_without_tls_there_is_no_ca_and_metrics_can_be_turned_off(tmp_path: Path) -> None:
    async with (
        tls_server(tmp_path, psk=PSK, metrics=False) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        metrics = await http.get("/metrics")
        assert metrics.status_code == 404
        assert metrics.json()["error"] == "metrics are turned off (phasebus serve --no-metrics)"
        answer = await http.get("/ca/cert")
        assert answer.status_code == 404
        assert (
            answer.json()["error"] == "this server runs without TLS: start it with --tls for a CA"
        )


async def test_files_that_are_not_certificates_or_keys_are_refused_by_name(tmp_path: Path) -> None:
    own = Authority.load_or_create(tmp_path / "own")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(TLSError, match=rf"^{text} holds no PEM certificate$"):
        await serve(port=0, store="memory", cert=text, key=own.key_file, announce=False)
    with pytest.raises(TLSError, match=rf"^{text} holds no unencrypted PEM private key$"):
        await serve(port=0, store="memory", cert=own.certificate_file, key=text, announce=False)
    other = Authority.load_or_create(tmp_path / "other")
    with pytest.raises(TLSError, match=r"does not belong to"):
        await serve(
            port=0, store="memory", cert=own.certificate_file, key=other.key_file, announce=False
        )
