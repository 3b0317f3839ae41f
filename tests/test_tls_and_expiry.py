"""wss:// through an ssl: endpoint, and a session closed when its token expires."""

from __future__ import annotations

import datetime
import json
import ssl
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from daemons import start_daemon


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_wss_from_an_ssl_endpoint(tmp_path) -> None:
    key_path, cert_path = self_signed(tmp_path)
    from daemons import free_port

    port = free_port()
    # start_daemon waits on plain-HTTP /health; here the port speaks TLS, so poll with TLS ourselves.
    import subprocess

    from daemons import TWISTD, source_env

    log = tmp_path / "tls.log"
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "txvoice", "--pipeline", "echo",
         "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"],
        env=source_env(), cwd=tmp_path)
    context = ssl.create_default_context(cafile=str(cert_path))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with connect(f"wss://localhost:{port}/", ssl=context, open_timeout=2) as ws:
                    greeting = json.loads(ws.recv(timeout=5))
                    ws.send(json.dumps({"type": "ping", "message_id": "tls"}))
                    assert json.loads(ws.recv(timeout=5))["data"]["reply_to"] == "tls"
                break
            except (OSError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert greeting["data"]["status"] == "connected"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_session_is_told_and_closed_when_its_token_expires(tmp_path) -> None:
    secret = "expiry-secret-0123456789abcdefghijklmn"
    d = start_daemon(tmp_path, "--jwt-secret", secret, "--jwt-leeway", "0")
    try:
        token = jwt.encode({"sub": "frank", "exp": int(time.time()) + 2}, secret, algorithm="HS256")
        with connect(f"ws://127.0.0.1:{d.port}/?token={token}", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["data"]["authenticated"] is True
            err = json.loads(ws.recv(timeout=6))
            assert err["type"] == "error" and err["data"]["code"] == "token_expired"
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd.code == 4003
    finally:
        d.stop()
