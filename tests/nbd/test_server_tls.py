"""NBD over TLS (x509 and PSK): our daemon and qemu-storage-daemon, the same real clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iochannel.crypto.certs import make_credentials_dir
from iochannel.crypto.psk import psk_supported
from tests.nbd.test_server_peers import Served, run, same, serving

PSK_KEY = "9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"


def tls_uri(s: Served, creds: str, user: str = "") -> str:
    return f"nbds+unix://{user}/disk?socket={s.sock}&{creds}"


@pytest.mark.parametrize("kind", ["x509", "psk"])
def test_tls_required_and_working(tmp_path: Path, kind: str) -> None:
    pki = tmp_path / "pki"
    if kind == "x509":
        make_credentials_dir(pki, hostnames=["localhost"])
        obj = f"tls-creds-x509,id=tls0,endpoint=server,dir={pki}"
        creds = f"tls-certificates={pki}"
        user = ""
    else:
        if not psk_supported():
            pytest.skip("TLS-PSK needs Python 3.13 (ssl.SSLContext.set_psk_server_callback)")
        pki.mkdir()
        (pki / "keys.psk").write_text(f"alice:{PSK_KEY}\n")
        obj = f"tls-creds-psk,id=tls0,endpoint=server,dir={pki}"
        # libnbd takes the PSK identity from the URI's user part.
        creds = f"tls-psk-file={pki / 'keys.psk'}"
        user = "alice@"
    tls = {"objects": ("--object", obj), "server": ",tls-creds=tls0"}
    with (
        serving("qsd", tmp_path / "qsd", **tls) as qsd,
        serving("ours", tmp_path / "ours", **tls) as ours,
    ):
        both = {"qsd": qsd, "ours": ours}
        out = same(both, lambda s: run("nbdinfo", tls_uri(s, creds, user)).stdout)
        assert "with TLS" in out

        def refused(s: Served) -> str:
            proc = run("nbdinfo", s.uri(), check=False)
            assert proc.returncode != 0
            return proc.stderr

        assert "server replied with error" in same(both, refused)
        for s in both.values():
            copy = s.dir / "copy.img"
            run("nbdcopy", tls_uri(s, creds, user), str(copy))
            assert copy.read_bytes() == s.image.read_bytes()
        if kind == "x509":
            client = f"tls-creds-x509,id=c0,endpoint=client,dir={pki}"
            opts = "driver=nbd,server.type=unix,server.path={},export=disk,tls-creds=c0"
            opts += ",tls-hostname=localhost"
            same(
                both,
                lambda s: (
                    run(
                        "qemu-img", "info", "--object", client, "--image-opts", opts.format(s.sock)
                    ).stdout
                ),
            )


def test_tls_authz_checks_the_client_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_credentials_dir(pki, hostnames=["localhost"], client_dn="CN=alice")
    creds = f"tls-certificates={pki}"
    for identity, allowed in (("CN=alice", True), ("CN=mallory", False)):
        d = tmp_path / identity[3:]
        d.mkdir()
        tls = {
            "objects": (
                *("--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={pki}"),
                *("--object", f"authz-simple,id=auth0,identity={identity}"),
            ),
            "server": ",tls-creds=tls0,tls-authz=auth0",
        }
        with serving("qsd", d / "qsd", **tls) as qsd, serving("ours", d / "ours", **tls) as ours:

            def attempt(s: Served) -> str:
                proc = run("nbdinfo", "--size", tls_uri(s, creds, ""), check=False)
                return "ok" if proc.returncode == 0 else "refused"

            assert same({"qsd": qsd, "ours": ours}, attempt) == ("ok" if allowed else "refused")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--nbd-server=addr.type=unix,addr.path=s.sock,tls-creds=nope",
            "No TLS credentials with id 'nope'",
        ),
        (
            "--nbd-server=addr.type=unix,addr.path=s.sock,tls-creds=a0",
            "Object with id 'a0' is not TLS credentials",
        ),
        (
            "--nbd-server=addr.type=unix,addr.path=s.sock,tls-creds=cli",
            "Expecting TLS credentials with a server endpoint: set endpoint=server on 'cli'",
        ),
        (
            "--nbd-server=addr.type=unix,addr.path=s.sock,tls-creds=srv,tls-authz=nope",
            "No authorization object with id 'nope'",
        ),
        (
            "--blockdev=driver=nbd,node-name=n1,server.type=unix,server.path=s.sock,tls-creds=srv",
            "Expecting TLS credentials with a client endpoint: set endpoint=client on 'srv'",
        ),
        (
            "--blockdev=driver=nbd,node-name=n1,server.type=unix,server.path=s.sock,tls-creds=cli",
            "Parameter 'tls-hostname' is missing",
        ),
    ],
)
def test_check_reports_tls_creds_as_start_up_does(
    tmp_path: Path, option: str, message: str
) -> None:
    make_credentials_dir(tmp_path / "pki")
    argv = [
        *("--object", f"tls-creds-x509,id=srv,endpoint=server,dir={tmp_path / 'pki'}"),
        *("--object", f"tls-creds-x509,id=cli,endpoint=client,dir={tmp_path / 'pki'}"),
        *("--object", "authz-simple,id=a0,identity=CN=x"),
        "--blockdev=driver=null-co,node-name=n0",
        option,
    ]

    def daemon(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "iochannel", *args, *argv]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    checked, started = daemon("--check"), daemon()
    assert (checked.returncode, started.returncode) == (1, 1)
    assert message in started.stderr
    assert checked.stderr == started.stderr
