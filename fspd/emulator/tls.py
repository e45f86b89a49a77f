"""``fspd emulator --tls``: a throw-away certificate authority and server certificate, made at
start, so the emulator can serve HTTPS as AWS's endpoints do.

The CA's certificate is written as PEM for clients to trust (``AWS_CA_BUNDLE``, as botocore
reads it); the server certificate is signed by it and names the bound address (and
``localhost``, 127.0.0.1, ::1). A separate CA, rather than one self-signed leaf, passes strict
X.509 checks (a CA certificate is not accepted as a server's own).

The keys live in memory and in a private temporary file only while the server loads them.
The ``cryptography`` package makes them: Python's standard library cannot, and a test tool must
not depend on an ``openssl`` binary. It comes with the ``test`` and ``tls`` extras; without it
``--tls`` is refused with a message saying so.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path


class TlsUnavailable(RuntimeError):
    """The ``cryptography`` package is not installed."""


def _names(host: str) -> list[object]:
    from cryptography import x509

    names: list[object] = [x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    try:
        addresses.add(str(ipaddress.ip_address(host)))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    return names


def make_server_context(host: str, ca_out: Path) -> ssl.SSLContext:
    """Make a CA and a server certificate for ``host``; write the CA's PEM to ``ca_out``
    (atomically, mode 0644) and return a server-side SSL context holding the certificate."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise TlsUnavailable("--tls needs the 'cryptography' package "
                             "(pip install 'fspd[tls]')") from None

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=30)

    def builder(subject: x509.Name, issuer: x509.Name, public: object) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fspd emulator test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (builder(ca_name, ca_name, ca_key.public_key())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=False, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fspd emulator")])
    cert = (builder(name, ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))

    pem = serialization.Encoding.PEM
    ca_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = ca_out.with_name(ca_out.name + ".tmp")
    tmp.write_bytes(ca_cert.public_bytes(pem))
    os.chmod(tmp, 0o644)
    os.replace(tmp, ca_out)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only: the key goes to a private file that is removed at once.
    with tempfile.NamedTemporaryFile(prefix="fspd-emulator-key-", suffix=".pem") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(pem))
        f.flush()
        context.load_cert_chain(f.name)
    return context
