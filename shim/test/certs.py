"""
Test certificates: a small PKI written into a directory, for TLS tests against a real
etcd.

L{make_pki} makes two independent certificate authorities.  The first (C{ca}) signs a
server certificate for C{127.0.0.1}/C{localhost} and a client certificate; the second
(C{other_ca}) signs a server certificate of its own, which a client trusting only the
first CA must refuse.  Keys are ECDSA P-256: quick to make, and accepted by every etcd
the tests run.  Everything is PEM, keys unencrypted (etcd reads them so).
"""

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class PKI:
    """
    The paths of the files L{make_pki} wrote.

    @ivar ca: the trusted CA's certificate.
    @ivar server_cert: etcd's certificate, signed by C{ca}, for 127.0.0.1 and localhost.
    @ivar client_cert: a client certificate signed by C{ca} (common name
        C{client_name}).
    @ivar anonymous_cert: a client certificate signed by C{ca} without a common
        name: the kind etcd's gateway accepts when authentication is on.
    @ivar other_ca: a second CA nobody is told to trust.
    @ivar other_server_cert: a server certificate for the same names, signed by
        C{other_ca}.
    @ivar misnamed_server_cert: a server certificate signed by C{ca} for another
        host only (C{etcd.example.com}).
    """

    directory: str
    ca: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_name: str
    anonymous_cert: str
    anonymous_key: str
    other_ca: str
    other_server_cert: str
    other_server_key: str
    misnamed_server_cert: str
    misnamed_server_key: str


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name=None):
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shim tests")]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _certificate(subject, key, issuer, issuer_key, ca=False, usages=(), names=()):
    """
    A certificate for C{key} named C{subject}, signed by C{issuer_key}; a CA when
    C{ca}, else a leaf with the extended key C{usages} and the alternative C{names}.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=True, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)),
                                        critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)),
                                            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory, name, data, mode=0o644):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _write_pair(directory, stem, cert, key):
    cert_path = _write(directory, stem + ".pem",
                       cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write(directory, stem + "-key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), mode=0o600)
    return cert_path, key_path


#: The names etcd's test server certificates are valid for.
SERVER_NAMES = (
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.DNSName("localhost"),
)


def _server(directory, stem, ca_name, ca_key, names=SERVER_NAMES,
            common_name="etcd server"):
    key = _key()
    # etcd's gateway dials etcd's own gRPC port presenting the server certificate as
    # a client certificate, so it carries both usages.
    cert = _certificate(_name(common_name), key, ca_name, ca_key,
                        usages=(ExtendedKeyUsageOID.SERVER_AUTH,
                                ExtendedKeyUsageOID.CLIENT_AUTH),
                        names=names)
    return _write_pair(directory, stem, cert, key)


def make_pki(directory, client_name="shim", server_name="etcd server"):
    """
    Write the test PKI into C{directory} (made if missing).

    @param client_name: the common name of the client certificate.
    @param server_name: the common name of the (trusted) server certificate.
    @return: a L{PKI}.
    """
    os.makedirs(directory, exist_ok=True)

    ca_key = _key()
    ca_name = _name("shim test CA")
    ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_path, ca_key_path = _write_pair(directory, "ca", ca_cert, ca_key)

    server_cert, server_key = _server(directory, "server", ca_name, ca_key,
                                      common_name=server_name)

    client_key = _key()
    client_cert = _certificate(_name(client_name), client_key, ca_name, ca_key,
                               usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    client_path, client_key_path = _write_pair(directory, "client", client_cert,
                                               client_key)

    anonymous_key = _key()
    anonymous_cert = _certificate(_name(), anonymous_key, ca_name, ca_key,
                                  usages=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    anonymous_path, anonymous_key_path = _write_pair(directory, "anonymous",
                                                     anonymous_cert, anonymous_key)

    other_key = _key()
    other_name = _name("untrusted test CA")
    other_cert = _certificate(other_name, other_key, other_name, other_key, ca=True)
    other_path, _ = _write_pair(directory, "other-ca", other_cert, other_key)
    other_server_cert, other_server_key = _server(directory, "other-server",
                                                  other_name, other_key)

    misnamed_cert, misnamed_key = _server(directory, "misnamed-server", ca_name, ca_key,
                                          names=(x509.DNSName("etcd.example.com"),))

    return PKI(directory=directory, ca=ca_path, ca_key=ca_key_path,
               server_cert=server_cert, server_key=server_key,
               client_cert=client_path, client_key=client_key_path,
               client_name=client_name, anonymous_cert=anonymous_path,
               anonymous_key=anonymous_key_path, other_ca=other_path,
               other_server_cert=other_server_cert, other_server_key=other_server_key,
               misnamed_server_cert=misnamed_cert, misnamed_server_key=misnamed_key)
