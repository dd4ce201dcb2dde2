"""Credentials loading, authorization lists, PSK files, DNs and the cert-making command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from iochannel.crypto import (
    AuthzList,
    AuthzRule,
    CredentialsError,
    Endpoint,
    Policy,
    PSKCredentials,
    X509Credentials,
    distinguished_name,
)
from iochannel.crypto.authz import AuthzDeniedError, Format
from iochannel.crypto.certs import CertificateAuthority, main, make_credentials_dir, parse_dn
from iochannel.crypto.psk import parse_keys


def test_make_credentials_dir_and_load(tmp_path: object) -> None:
    d = str(tmp_path)
    make_credentials_dir(d, hostnames=["qemu.org"], client_dn="C=UK,O=Example,CN=qemu")
    assert sorted(os.listdir(d)) == [
        "ca-cert.pem",
        "client-cert.pem",
        "client-key.pem",
        "server-cert.pem",
        "server-key.pem",
    ]
    for key in ("server-key.pem", "client-key.pem"):
        assert stat.S_IMODE(os.stat(os.path.join(d, key)).st_mode) == 0o600
    assert X509Credentials(d, "server").endpoint is Endpoint.SERVER
    assert X509Credentials(d, Endpoint.CLIENT).verify_peer
    with pytest.raises(FileExistsError):
        make_credentials_dir(d)
    make_credentials_dir(d, force=True)


def test_certs_command(tmp_path: object) -> None:
    d = os.path.join(str(tmp_path), "creds")
    result = subprocess.run(
        [sys.executable, "-m", "iochannel.crypto.certs", d, "--hostname", "qemu.org",
         "--hostname", "192.168.122.1", "--client-dn", "C=UK,CN=qemu", "--days", "30"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    X509Credentials(d, "server")
    X509Credentials(d, "client")
    assert main([d]) == 1  # refuses to overwrite


def test_certs_command_bad_dn(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--client-dn", "XX=oops"]) == 1
    assert "bad distinguished name component 'XX=oops'" in capsys.readouterr().err


def test_distinguished_name_keeps_certificate_order() -> None:
    ca = CertificateAuthority.create("CN=ca")
    cert, _ = ca.issue("C=UK,ST=London,O=Red Hat,OU=Virt,CN=qemu", client=True)
    der = cert.public_bytes(Encoding.DER)
    # Certificate order, as QEMU prints it, not the reversed RFC 4514 order.
    assert distinguished_name(der) == "C=UK,ST=London,O=Red Hat,OU=Virt,CN=qemu"


def test_parse_dn_errors() -> None:
    for bad in ("CN", "ZZ=x", "CN=", ""):
        with pytest.raises(ValueError, match="bad distinguished name component"):
            parse_dn(bad)


@pytest.mark.parametrize(
    ("missing", "endpoint", "message"),
    [
        ("server-cert.pem", "server", "server-cert.pem"),
        ("server-key.pem", "server", "server-key.pem"),
        ("ca-cert.pem", "server", "ca-cert.pem"),
        ("client-cert.pem", "client", "client-cert.pem"),
        ("ca-cert.pem", "client", "ca-cert.pem"),
    ],
)
def test_missing_file_is_named(tmp_path: object, missing: str, endpoint: str, message: str) -> None:
    d = str(tmp_path)
    make_credentials_dir(d)
    os.unlink(os.path.join(d, missing))
    with pytest.raises(CredentialsError, match=message):
        X509Credentials(d, endpoint)


def test_garbage_pem_is_named(tmp_path: object) -> None:
    d = str(tmp_path)
    make_credentials_dir(d)
    with open(os.path.join(d, "ca-cert.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(CredentialsError, match=r"cannot\ load\ ca\-cert\.pem"):
        X509Credentials(d, "client")
    with open(os.path.join(d, "server-key.pem"), "w") as f:
        f.write("garbage")
    with pytest.raises(CredentialsError, match=r"server\-cert\.pem/server\-key\.pem"):
        X509Credentials(d, "server")


def test_mismatched_key_is_refused(tmp_path: object) -> None:
    d, other = os.path.join(str(tmp_path), "a"), os.path.join(str(tmp_path), "b")
    make_credentials_dir(d)
    make_credentials_dir(other)
    os.replace(os.path.join(other, "server-key.pem"), os.path.join(d, "server-key.pem"))
    with pytest.raises(CredentialsError, match=r"server\-key\.pem"):
        X509Credentials(d, "server")


def test_bad_dh_params_are_named(tmp_path: object) -> None:
    d = str(tmp_path)
    make_credentials_dir(d)
    with open(os.path.join(d, "dh-params.pem"), "w") as f:
        f.write("nonsense")
    with pytest.raises(CredentialsError, match=r"dh\-params\.pem"):
        X509Credentials(d, "server")


def test_client_without_verify_needs_no_files(tmp_path: object) -> None:
    creds = X509Credentials(str(tmp_path), "client", verify_peer=False)
    assert not creds.verifies_peer


def test_bad_directory_and_endpoint(tmp_path: object) -> None:
    with pytest.raises(CredentialsError, match="does not exist"):
        X509Credentials(os.path.join(str(tmp_path), "nope"), "server")
    with pytest.raises(CredentialsError, match="endpoint must be 'server' or 'client'"):
        X509Credentials(str(tmp_path), "both")


# ---- authz ----------------------------------------------------------------------


def test_authz_default_deny_and_first_match() -> None:
    acl = AuthzList(
        [AuthzRule("C=UK,CN=qemu-evil", Policy.DENY, Format.EXACT), "C=UK,CN=qemu*"],
        name="acl0",
    )
    assert acl.is_allowed("C=UK,CN=qemu")
    assert not acl.is_allowed("C=UK,CN=qemu-evil")
    assert not acl.is_allowed("C=FR,CN=qemu")
    assert not AuthzList().is_allowed("anything")
    assert AuthzList(policy=Policy.ALLOW).is_allowed("anything")
    with pytest.raises(AuthzDeniedError, match="acl0: access for 'C=FR,CN=qemu' is denied"):
        acl.check("C=FR,CN=qemu")


def test_authz_glob_is_whole_string_and_case_sensitive() -> None:
    acl = AuthzList(["CN=qemu"])
    assert not acl.is_allowed("C=UK,CN=qemu")
    assert not AuthzList(["c=uk,cn=qemu"]).is_allowed("C=UK,CN=qemu")
    assert AuthzList(["C=UK,CN=[pq]emu"]).is_allowed("C=UK,CN=qemu")
    exact = AuthzList([AuthzRule("C=UK,CN=qemu*", format=Format.EXACT)])
    assert not exact.is_allowed("C=UK,CN=qemu")
    assert exact.is_allowed("C=UK,CN=qemu*")


# ---- PSK --------------------------------------------------------------------------


def test_psk_file_parsing(tmp_path: object) -> None:
    assert parse_keys("qemu:00ff\n\nother:AbCd\nqemu:1111\n", "k") == {
        "qemu": b"\x00\xff",
        "other": b"\xab\xcd",
    }
    for text, message in (
        ("nocolon\n", "k:1: expected 'username:hexkey'"),
        (":00ff\n", "k:1: expected"),
        ("qemu:xyz\n", "k:1: key for 'qemu' is not hexadecimal"),
        ("qemu:abc\n", "not hexadecimal"),
        ("a:00\nqemu:\n", "k:2: key for 'qemu' is empty"),
    ):
        with pytest.raises(CredentialsError, match=message):
            parse_keys(text, "k")


def test_psk_credentials(tmp_path: object) -> None:
    d = str(tmp_path)
    with pytest.raises(CredentialsError, match=r"cannot\ load\ keys\.psk"):
        PSKCredentials(d, "client")
    with open(os.path.join(d, "keys.psk"), "w") as f:
        f.write("qemu:9d65dde6ad2ed7e6\n")
    assert PSKCredentials(d, "client").username == "qemu"
    with pytest.raises(CredentialsError, match="no key for PSK user 'alice'"):
        PSKCredentials(d, "client", username="alice")
    with pytest.raises(CredentialsError, match="only meaningful for a client"):
        PSKCredentials(d, "server", username="qemu")
