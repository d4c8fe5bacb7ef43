"""gRPC services bind to loopback by default and can require mutual TLS; the test makes its
own CA and certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate.config import SAMPLE_CONFIG, SERVICE_NAMES, load_config
from tests.conftest import RunningMesh


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    *,
    ca: bool,
    key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a certificate for the mesh, and one from a different CA (an outsider)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("meshgate test CA", ca_key, _name("meshgate test CA"), ca=True, key=ca_key)
    mesh_key = ec.generate_private_key(ec.SECP256R1())
    mesh = _issue("meshgate", ca_key, ca.subject, ca=False, key=mesh_key)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _issue("outsider", rogue_ca_key, _name("rogue CA"), ca=False, key=rogue_key)
    files = {
        "ca": (ca.public_bytes(serialization.Encoding.PEM)),
        "cert": mesh.public_bytes(serialization.Encoding.PEM),
        "key": mesh_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "rogue_cert": rogue.public_bytes(serialization.Encoding.PEM),
        "rogue_key": rogue_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def secured(
    start_mesh: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningMesh, dict[str, Path]]]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tls = {"ca_file": str(pki["ca"]), "cert_file": str(pki["cert"]), "key_file": str(pki["key"])}
    mesh = start_mesh(tls=tls)
    yield mesh, pki
    assert mesh.stop() == 0


def _check(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=3
        )
        return int(reply.status)


def test_the_mesh_works_over_mutual_tls(secured: tuple[RunningMesh, dict[str, Path]]) -> None:
    mesh, _ = secured
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="meshgate/reference-pro",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
        )
    assert reply.choices[0].message.content


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_services_refuse_callers_without_a_mesh_certificate(
    secured: tuple[RunningMesh, dict[str, Path]], service: str
) -> None:
    mesh, pki = secured
    target = mesh.config.services.get(service).dial_target()
    ca = pki["ca"].read_bytes()
    member = grpc.ssl_channel_credentials(ca, pki["key"].read_bytes(), pki["cert"].read_bytes())
    assert _check(target, member) == health_pb2.HealthCheckResponse.SERVING
    for outsider in (
        None,  # plaintext
        grpc.ssl_channel_credentials(ca),  # TLS, but no client certificate
        grpc.ssl_channel_credentials(
            ca, pki["rogue_key"].read_bytes(), pki["rogue_cert"].read_bytes()
        ),  # wrong CA
    ):
        with pytest.raises(grpc.RpcError) as info:
            _check(target, outsider)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_services_bind_to_loopback_by_default() -> None:
    config = load_config(SAMPLE_CONFIG, environ={})
    assert config.edge.host == "127.0.0.1"
    assert {config.services.get(name).host for name in SERVICE_NAMES} == {"127.0.0.1"}
    assert not config.tls.enabled  # plaintext only where nothing but loopback can reach it
