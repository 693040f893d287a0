"""The mqtt.tls options against a real mosquitto TLS listener: CA trust, host name check, mutual TLS, end to end.

Certificates are made once per session in a temp dir with the ``openssl`` command (or the ``cryptography``
package if that is already importable); nothing is installed for these tests.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Collector, agent_config, device_for, run_agent

from agent.config import MqttConfig, TlsConfig
from agent.devbroker import LocalBroker, TlsFiles
from agent.mqtt import Publisher, Topics

BOTH_NAMES = ("IP:127.0.0.1", "DNS:localhost")
# name -> (issuer or None for a self-signed CA, purpose, subjectAltNames)
CERTIFICATES = {
    "ca": (None, "ca", ()),
    "rogue-ca": (None, "ca", ()),
    "server": ("ca", "serverAuth", BOTH_NAMES),
    "rogue-server": ("rogue-ca", "serverAuth", BOTH_NAMES),  # right names, wrong CA
    "localhost-only": ("ca", "serverAuth", ("DNS:localhost",)),  # right CA, lacks IP:127.0.0.1
    "client": ("ca", "clientAuth", ()),
}
FAIL_WITHIN_S = 5.0  # a refused TLS handshake on loopback takes milliseconds; this only bounds a broken test


# -- a throw-away PKI -----------------------------------------------------------------------------------------------

def _openssl_extensions(purpose: str, names: tuple[str, ...]) -> str:
    if purpose == "ca":
        return ("basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier = hash\n")
    text = (f"basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
            f"extendedKeyUsage = {purpose}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    return text + (f"subjectAltName = {','.join(names)}\n" if names else "")


def issue_with_openssl(folder: Path, name: str, issuer: str | None, purpose: str, names: tuple[str, ...]) -> None:
    cnf = folder / f"{name}.cnf"
    cnf.write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n[ext]\n"
                   + _openssl_extensions(purpose, names))
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
           "-subj", f"/CN=catdog test {name}", "-config", cnf.name]
    if issuer is None:
        steps = [["req", "-x509", *key, "-extensions", "ext", "-days", "2", "-out", f"{name}.crt"]]
    else:
        steps = [["req", "-new", *key, "-out", f"{name}.csr"],
                 ["x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey", f"{issuer}.key",
                  "-set_serial", str(secrets.randbits(63)), "-days", "2", "-extfile", cnf.name, "-extensions", "ext",
                  "-out", f"{name}.crt"]]
    for step in steps:
        proc = subprocess.run(["openssl", *step], cwd=folder, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"openssl {' '.join(step)}: {proc.stderr}"


def issue_with_cryptography(folder: Path, name: str, issuer: str | None, purpose: str,
                            names: tuple[str, ...]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"catdog test {name}")])
    issuer_name, signer = subject, key
    if issuer is not None:
        issuer_name = x509.load_pem_x509_certificate((folder / f"{issuer}.crt").read_bytes()).subject
        signer = serialization.load_pem_private_key((folder / f"{issuer}.key").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    usage.update({"key_cert_sign": True, "crl_sign": True} if purpose == "ca" else {"digital_signature": True})
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=purpose == "ca", path_length=None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if purpose != "ca":
        eku = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "serverAuth" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                                  critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(n[3:])) if n.startswith("IP:") else x509.DNSName(n[4:])
             for n in names]), critical=False)
    pem = serialization.Encoding.PEM
    (folder / f"{name}.crt").write_bytes(builder.sign(signer, hashes.SHA256()).public_bytes(pem))
    (folder / f"{name}.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


@dataclass(frozen=True)
class Pki:
    folder: Path

    def crt(self, name: str) -> str:
        return str(self.folder / f"{name}.crt")

    def key(self, name: str) -> str:
        return str(self.folder / f"{name}.key")

    def listener(self, server: str, ca: str = "ca", require_certificate: bool = False) -> TlsFiles:
        return TlsFiles(self.crt(ca), self.crt(server), self.key(server), require_certificate=require_certificate)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl"):
        issue = issue_with_openssl
    elif importlib.util.find_spec("cryptography") is not None:
        issue = issue_with_cryptography
    else:
        pytest.skip("no way to make test certificates: the openssl command is missing and the cryptography package "
                    "is not importable (these tests install nothing)")
    folder = tmp_path_factory.mktemp("pki")
    for name, (issuer, purpose, names) in CERTIFICATES.items():
        issue(folder, name, issuer, purpose, names)
    return Pki(folder)


# -- brokers, clients -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> LocalBroker:
    """TLS on ``tls_port`` with a certificate for 127.0.0.1 and localhost, signed by the CA ``ca``."""
    with LocalBroker(tls=pki.listener("server")) as running:
        yield running


@pytest.fixture(scope="module")
def rogue_broker(pki: Pki) -> LocalBroker:
    """Right names (127.0.0.1, localhost), but signed by ``rogue-ca``, which no client trusts."""
    with LocalBroker(tls=pki.listener("rogue-server", ca="rogue-ca")) as running:
        yield running


@pytest.fixture(scope="module")
def localhost_only_broker(pki: Pki) -> LocalBroker:
    """Signed by the trusted ``ca``, but its certificate names only DNS:localhost, not IP:127.0.0.1."""
    with LocalBroker(tls=pki.listener("localhost-only")) as running:
        yield running


@pytest.fixture(scope="module")
def mutual_tls_broker(pki: Pki) -> LocalBroker:
    """Like ``tls_broker`` but every client must present a certificate signed by ``ca``."""
    with LocalBroker(tls=pki.listener("server", require_certificate=True)) as running:
        yield running


@dataclass
class TlsCollector(Collector):
    """The conftest Collector over TLS, host name checked (it connects to 127.0.0.1)."""

    ca_certs: str = ""
    certfile: str | None = None
    keyfile: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.client.tls_set(ca_certs=self.ca_certs, certfile=self.certfile, keyfile=self.keyfile)


def tls_publisher(port: int, device: str, **tls: object) -> Publisher:
    cfg = MqttConfig(host="127.0.0.1", port=port, qos=1, tls=TlsConfig(**tls))  # type: ignore[arg-type]
    return Publisher(cfg, Topics.for_device("catdog", device), f"catdog-{device}")


class Attempts:
    """Watches a Publisher: ``failed`` is set when a connection attempt ends without a CONNACK, ``connected``
    on any successful connect, ``log`` holds paho's log lines. A refused certificate fails the handshake (paho's
    on_connect_fail); a client certificate missing under TLS 1.3 is only refused after the client's side of the
    handshake, so the broker drops the connection before CONNACK (on_disconnect)."""

    def __init__(self, publisher: Publisher):
        self.failed, self.connected = threading.Event(), threading.Event()
        self.log: list[str] = []
        client, inner = publisher.client, publisher.client.on_disconnect
        assert inner is not None
        client.on_log = lambda _client, _userdata, _level, message: self.log.append(message)

        def on_disconnect(*args: Any) -> None:
            inner(*args)
            if not self.connected.is_set():
                self.failed.set()

        client.on_connect_fail = lambda *_: self.failed.set()
        client.on_disconnect = on_disconnect
        publisher.on_connect_hooks.append(self.connected.set)


def assert_delivers_over_tls(publisher: Publisher, ca: str, collector_cert: tuple[str, str] | None = None,
                             collector_insecure: bool = False) -> None:
    """Start ``publisher``: it connects over TLS, its QoS 1 result is acknowledged and a TLS subscriber gets it."""
    certfile, keyfile = collector_cert or (None, None)
    collector = TlsCollector(publisher.cfg.port, topic=publisher.topics.result, ca_certs=ca, certfile=certfile,
                             keyfile=keyfile)
    collector.client.tls_insecure_set(collector_insecure)
    collector.start()
    try:
        publisher.start()
        assert publisher.wait_connected(5), "the publisher did not connect over TLS"
        assert isinstance(publisher.client.socket(), ssl.SSLSocket)
        publisher.publish_result({"frame": 1})
        assert publisher.wait_delivered(timeout=5), "the QoS 1 result was not acknowledged (PUBACK)"
        assert publisher.pending() == 0
        assert collector.wait_for(lambda: collector.results() == [{"frame": 1}], timeout=5)
    finally:
        publisher.stop(timeout=1)
        collector.stop()


def assert_never_connects(publisher: Publisher) -> Attempts:
    """Start ``publisher``: its first attempt fails, it is not connected, and stopping it does not hang."""
    attempts = Attempts(publisher)
    publisher.start()
    try:
        assert attempts.failed.wait(FAIL_WITHIN_S), "no failed connection attempt was reported"
        assert not attempts.connected.is_set() and not publisher.connected
        assert publisher.pending() == 0  # the "online" availability is only published after a CONNACK
    finally:
        began = time.monotonic()
        publisher.stop(timeout=0.5)
        # paho re-checks its reconnect wait once a second; a hang would be its 5 s connect timeout or forever
        assert time.monotonic() - began < 3.0, "stopping a publisher that never connected hung"
    assert not attempts.connected.is_set()
    return attempts


def refusal_reason(publisher: Publisher) -> str:
    """Why the Publisher's own paho client refuses the broker's certificate, from one blocking connect."""
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        publisher.client.connect(publisher.cfg.host, publisher.cfg.port)
    # paho leaves the SSLSocket of a failed handshake to the garbage collector; close it now, not in a later test.
    frames = failure.value.__traceback__
    while frames is not None:
        for value in frames.tb_frame.f_locals.values():
            if isinstance(value, ssl.SSLSocket):
                value.close()
        frames = frames.tb_next
    return str(failure.value.verify_message)


# paho does not close the socket of a failed TLS handshake (CPython does when it drops it): a ResourceWarning in
# paho's network thread, which this project's filterwarnings = error would turn into a test error.
PAHO_DROPS_FAILED_TLS_SOCKETS = pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")


# -- tests ----------------------------------------------------------------------------------------------------------

def test_publisher_delivers_a_qos1_result_over_tls_trusting_the_configured_ca(pki, tls_broker, tmp_path):
    publisher = tls_publisher(tls_broker.tls_port, device_for(tmp_path), ca_certs=pki.crt("ca"))
    assert publisher.cfg.qos == 1
    assert_delivers_over_tls(publisher, ca=pki.crt("ca"))


@PAHO_DROPS_FAILED_TLS_SOCKETS
def test_a_broker_certificate_not_signed_by_the_configured_ca_is_refused(pki, rogue_broker, tmp_path):
    assert_never_connects(tls_publisher(rogue_broker.tls_port, device_for(tmp_path), ca_certs=pki.crt("ca")))
    reason = refusal_reason(tls_publisher(rogue_broker.tls_port, "reason", ca_certs=pki.crt("ca")))
    # mosquitto sends its CA along (self-signed in chain); a broker sending only its own cert gives the other one
    assert reason in ("self-signed certificate in certificate chain", "unable to get local issuer certificate")


@PAHO_DROPS_FAILED_TLS_SOCKETS
def test_a_broker_certificate_without_the_connected_ip_is_refused_by_the_host_name_check(
        pki, localhost_only_broker, tmp_path):
    port = localhost_only_broker.tls_port
    assert_never_connects(tls_publisher(port, device_for(tmp_path), ca_certs=pki.crt("ca")))
    reason = refusal_reason(tls_publisher(port, "reason", ca_certs=pki.crt("ca")))
    assert reason == "IP address mismatch, certificate is not valid for '127.0.0.1'."


@PAHO_DROPS_FAILED_TLS_SOCKETS
def test_tls_insecure_skips_only_the_host_name_check(pki, localhost_only_broker, rogue_broker, tmp_path):
    device = device_for(tmp_path)
    # the same broker as above, now accepted; the subscriber needs the same leniency
    publisher = tls_publisher(localhost_only_broker.tls_port, device, ca_certs=pki.crt("ca"), insecure=True)
    assert_delivers_over_tls(publisher, ca=pki.crt("ca"), collector_insecure=True)
    # the chain is still verified: a certificate from another CA stays refused
    assert_never_connects(tls_publisher(rogue_broker.tls_port, device, ca_certs=pki.crt("ca"), insecure=True))


def test_mutual_tls_admits_a_publisher_with_a_client_certificate(pki, mutual_tls_broker, tmp_path):
    client = (pki.crt("client"), pki.key("client"))
    publisher = tls_publisher(mutual_tls_broker.tls_port, device_for(tmp_path), ca_certs=pki.crt("ca"),
                              certfile=client[0], keyfile=client[1])
    assert_delivers_over_tls(publisher, ca=pki.crt("ca"), collector_cert=client)


def test_mutual_tls_refuses_a_publisher_without_a_client_certificate(pki, mutual_tls_broker, tmp_path):
    publisher = tls_publisher(mutual_tls_broker.tls_port, device_for(tmp_path), ca_certs=pki.crt("ca"))
    attempts = assert_never_connects(publisher)
    # Under TLS 1.3 the client finishes its side of the handshake and sends CONNECT; the broker then rejects the
    # missing certificate and drops the connection ("alert certificate required", or a bare EOF when its close
    # overtakes the alert). The test above, the same broker with a client certificate, is the control.
    assert any(line.startswith("failed to receive on socket") for line in attempts.log), attempts.log


def test_agent_run_delivers_every_photo_over_tls_with_a_ca_path_relative_to_the_config(
        pki, tls_broker, tmp_path, photos, devserver):
    (tmp_path / "certs").mkdir()
    shutil.copy(pki.crt("ca"), tmp_path / "certs" / "ca.crt")
    assert not (Path.cwd() / "certs" / "ca.crt").exists()  # the path only resolves next to the config file
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=tls_broker.tls_port,
                          mqtt={"tls": {"ca_certs": "certs/ca.crt"}})
    collector = TlsCollector(tls_broker.tls_port, topic=f"catdog/{device_for(tmp_path)}/#",
                             ca_certs=pki.crt("ca")).start()
    try:
        proc = run_agent(config, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert f"mqtt connected host=127.0.0.1 port={tls_broker.tls_port}" in proc.stderr
        assert collector.wait_for(lambda: len(collector.on("result")) == 4, timeout=5)
        offline = [b"offline"]
        assert collector.wait_for(lambda: [m.payload for m in collector.on("availability")][-1:] == offline, timeout=5)
    finally:
        collector.stop()
    assert [r["frame"] for r in collector.results()] == [1, 2, 3, 4]
    assert [r["source"] for r in collector.results()] == sorted(p.name for p in photos.iterdir())
