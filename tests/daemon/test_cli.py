"""The daemon's command line and TOML file: parsing, references, errors, --check."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest

from iochannel.__main__ import main as entry
from iochannel.crypto import AuthzList
from iochannel.daemon import ConfigError, Daemon, parse_args
from iochannel.daemon.cli import split_host_port
from iochannel.daemon.default import default_config
from iochannel.daemon.objects import parse_object

BASE = ["-chardev", "ringbuf,id=dev", "-chardev", "null,id=n"]


def error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    return str(info.value)


def test_options_in_qemu_syntax() -> None:
    config = parse_args(
        [
            *("-chardev", "ringbuf,id=a,size=4K"),
            *("--chardev", "socket,id=s,path=/tmp/x,,y.sock,server=on,wait=off"),
            *("-chardev", "hub,id=h,chardevs.0=s"),
            *("--relay", "chardev=a,peer=h,id=r0"),
            *("-chardev", "null,id=q"),
            *("--monitor", "q"),
            "--web=127.0.0.1:0",
            *("--pidfile", "/tmp/p"),
        ]
    )
    assert list(config.chardevs) == ["a", "s", "h", "q"]
    assert config.chardevs["s"]["backend"]["data"]["addr"]["data"]["path"] == "/tmp/x,y.sock"
    assert config.relays["r0"].chardev == "a" and config.relays["r0"].peer == "h"
    assert config.monitors["monitor0"].chardev == "q"
    assert config.web is not None and (config.web.host, config.web.port) == ("127.0.0.1", 0)
    assert config.web_hub() == "h"
    assert config.pidfile == "/tmp/p"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-chardev", "socket,id=s,port=x,host=h"], "-chardev socket,id=s,port=x,host=h: "),
        (["-chardev", "null,id=n,bogus=1"], "Invalid parameter 'bogus'"),
        (["-chardev", "ringbuf,id=a", "-chardev", "null,id=a"], "-chardev null,id=a: id 'a'"),
        ([*BASE, "--relay", "chardev=dev"], "--relay chardev=dev: Parameter 'peer' is missing"),
        ([*BASE, "--relay", "chardev=dev,peer=dev"], "'peer' must differ"),
        ([*BASE, "--relay", "chardev=dev,peer=zz"], "'peer': no chardev with id 'zz'"),
        ([*BASE, "--relay", "chardev=dev,peer=n,x=1"], "Invalid parameter 'x'"),
        (
            [*BASE, "--relay", "chardev=dev,peer=n", "--monitor", "chardev=n"],
            "--monitor id=monitor0: 'chardev': chardev 'n' is already used by relay 'relay0'",
        ),
        ([*BASE, "--monitor", "chardev=n,mode=readline"], "'mode' must be 'control'"),
        ([*BASE, "--monitor", "mode=control"], "Parameter 'chardev' is missing"),
        ([*BASE, "--web", "localhost:http"], "--web localhost:http: Parameter 'addr'"),
        ([*BASE, "--web"], "--web: 'hub': there is no hub"),
        ([*BASE, "--web", "hub=dev"], "chardev 'dev' is not a hub"),
        (["-chardev", "hub,id=h,chardevs.0=zz"], "'chardevs.0': no chardev with id 'zz'"),
        (
            ["-chardev", "hub,id=h,chardevs.0=n", "-chardev", "null,id=n"],
            "-chardev hub,id=h,chardevs.0=n: 'chardevs.0': chardev 'n' must be defined before it",
        ),
        (
            [
                "-chardev",
                "null,id=n",
                "-chardev",
                "hub,id=h,chardevs.0=n",
                "--relay",
                "chardev=n,peer=h",
            ],
            "'chardev': chardev 'n' is already used by hub 'h'",
        ),
        (
            ["-chardev", "socket,id=s,host=h,port=1,tls-creds=t"],
            "'tls-creds': no object with id 't'",
        ),
        (["--object", "tls-creds-x509,id=t"], "--object tls-creds-x509,id=t: Parameter 'dir'"),
        (["--object", "secret,id=t,data=x"], "Invalid object type 'secret'"),
        (["--object", "authz-list,id=a,rules.0.match=x,rules.0.policy=maybe"], "rules.0.policy"),
        (["--object", "tls-creds-x509,id=t,dir=/d,verify-peer=maybe"], "'verify-peer'"),
        (["--object", "tls-creds-x509,dir=/d"], "Parameter 'id' is missing"),
        (["--object", "tls-creds-x509,id=t,dir=/d,priority=NORMAL"], "'priority'"),
        (["--blockdev", "driver=qcow2,node-name=f,file=x"], "Driver 'qcow2' is not supported"),
        (["--bogus"], "unknown option '--bogus'"),
        # Every closed set suggests the nearest names (QEMU's message, then the suggestion).
        (["--chardve", "null,id=n"], "unknown option '--chardve'; did you mean '--chardev'?"),
        (["-object", "iothread,id=i"], "unknown option '-object'; did you mean '--object'?"),
        (["--pidfle=p"], "unknown option '--pidfle'; did you mean '--pidfile'?"),
        (["consle", "vm.sock"], "unexpected argument 'consle'; did you mean 'console'?"),
        (["--object", "iothraed,id=i"], "; did you mean 'iothread'?"),
        (["--object", "authz-simple,id=a,identiy=CN=x"], "; did you mean 'identity'?"),
        (["--object", "iothread,id=i,poll-max-n=1"], "'poll-max-n' is unexpected; did you mean"),
        (["--blockdev", "driver=fiel,node-name=f"], "value 'fiel'; did you mean 'file'?"),
        (
            ["--blockdev", "driver=file,node-name=f,filename=x,cache.drect=on"],
            "Parameter 'cache.drect' is unexpected; did you mean 'cache.direct'?",
        ),
        (
            ["--blockdev", "driver=file,node-name=f,filname=x"],
            "Parameter 'filename' is missing; is 'filname' a misspelling of it?",
        ),
        (
            ["--blockdev", "driver=null-co,node-name=n", "--export", "type=nbb,id=e,node-name=n"],
            "Parameter 'type' does not accept value 'nbb'; did you mean 'nbd'?",
        ),
        (
            [
                "--blockdev",
                "driver=null-co,node-name=n",
                "--export",
                "nbd,id=e,node-name=n,writeable=on",
            ],
            "Parameter 'writeable' is unexpected; did you mean 'writable'?",
        ),
        (
            ["--nbd-server", "addr.type=unx,addr.path=s"],
            "Parameter 'addr.type' does not accept value 'unx'; did you mean 'unix'?",
        ),
        (
            ["--nbd-server", "addr.type=unix,addr.path=s,max-conections=1"],
            "did you mean 'max-connections'?",
        ),
        (
            ["--nbd-server", "adr.type=unix,addr.path=s"],
            "Parameter 'adr' is unexpected; did you mean 'addr'?",
        ),
        ([*BASE, "--relay", "chardev=dev,peer=n,notice=on"], "did you mean 'notices'?"),
        ([*BASE, "--monitor", "chardev=n,mdoe=control"], "did you mean 'mode'?"),
        ([*BASE, "--web", "hub=dev,rw-tokn=x"], "did you mean 'rw-token'"),
        (["-chardev"], "argument -chardev/--chardev: expected one argument"),
        (["-chardev", "command,id=c"], "Parameter 'cmd' is missing"),
        (["-chardev", "command,id=c,cmd='unclosed"], "'cmd' cannot be split"),
    ],
)
def test_errors_name_the_option_and_key(argv: list[str], message: str) -> None:
    assert message in error(argv)


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
pidfile = "/tmp/pid"
relay = "chardev=dev,peer=h"
web = true

[[chardev]]
backend = "ringbuf"
id = "dev"
size = 4096

[[monitor]]
chardev = "q"

[[chardev]]
backend = "socket"
id = "s"
path = "/tmp/a,b.sock"
server = true
wait = false

[[chardev]]
backend = "hub"
id = "h"
chardevs = ["s"]
"""
    )
    more = ["--config", str(path), "-chardev", "null,id=q"]
    config = parse_args(more)
    assert list(config.chardevs) == ["dev", "s", "h", "q"]
    assert config.chardevs["s"]["backend"]["data"]["addr"]["data"]["path"] == "/tmp/a,b.sock"
    assert config.chardevs["h"]["backend"]["data"]["chardevs"] == ["s"]
    assert config.pidfile == "/tmp/pid"
    assert config.web is not None and config.web_hub() == "h"
    assert config.config_file == str(path) and config.argv == more


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chardev = [1]", "c.toml: chardev[0]: expects a string or a table"),
        ("bogus = 1", "c.toml: unknown key 'bogus'"),
        ("chardevs = 'null,id=n'", "unknown key 'chardevs' (expected one of"),
        ("chardevs = 'null,id=n'", "; did you mean 'chardev'?"),
        ("pidfile = 3", "c.toml: 'pidfile' expects a str"),
        ("chardev = [{backend = 'null', id = 'n', x = 1.5}]", "chardev[0]: 'x' has an unsupported"),
        ("chardev = 'null,id=n,bad=1'", "c.toml: chardev: Invalid parameter 'bad'"),
        ("chardev = [", "--config "),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(text)
    assert message in error(["--config", str(tmp_path / "c.toml")])


def test_missing_config_file(tmp_path: Path) -> None:
    assert f"--config {tmp_path}/none.toml: No such file" in error(
        ["--config", str(tmp_path / "none.toml")]
    )


def test_check_prints_the_graph(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv, _ = default_config(str(tmp_path), web=True)
    assert entry([*argv, "--check"]) == 0
    out = capsys.readouterr().out
    assert "  shell    command " in out and "(pty, restart)" in out
    assert f"  unix     socket unix:{tmp_path}/console.sock server connections=64" in out
    assert "  telnet   socket tcp:127.0.0.1:5555-5600 server telnet connections=64" in out
    assert "  viewers  hub of unix, telnet, log" in out
    assert "relays:\n  relay0: shell <-> viewers\n" in out
    assert "monitors:\n  monitor0: QMP on qmp\n" in out
    assert "web: console of hub viewers at http://127.0.0.1:0/" in out


def test_check_prints_every_setting_that_takes_effect(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        *("-chardev", "socket,id=c,host=h,port=1,reconnect-ms=1000,reconnect-max-ms=8000"),
        *("-chardev", "file,id=log,path=/tmp/l,timestamp=on,append=on"),
        *("-chardev", "ringbuf,id=r,size=4k,closed-writes=drop"),
        *("-chardev", "hub,id=h,chardevs.0=log,chardevs.1=r,policy.0=drop,limit.0=4k"),
        *("-chardev", "socket,id=v,host=::1,port=7,ipv6=on,server=on,wait=off"),
        *("-chardev", "udp,id=u,port=5,localport=6"),
        "--check",
    ]
    assert entry(argv) == 0
    out = capsys.readouterr().out
    assert "  c    socket tcp:h:1 reconnect-ms=1000 reconnect-max-ms=8000\n" in out
    assert "  log  file /tmp/l append=on timestamp=on\n" in out
    assert "  r    ringbuf closed-writes=drop size=4096\n" in out
    assert "  h    hub of log, r policies.log.mode=drop policies.log.limit=4096\n" in out
    assert "  v    socket tcp:[::1]:7,ipv6=on server\n" in out
    assert "  u    udp remote=localhost:5 local=:6\n" in out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "socket,id=s,path={d}/none/s.sock,server=on,wait=off",
            "chardev 's': 'path': cannot create the socket {d}/none/s.sock: directory {d}/none "
            "does not exist (create it, or choose a path in an existing directory)",
        ),
        (
            "file,id=f,path={d}/none/f.log",
            "chardev 'f': 'path': cannot create the file {d}/none/f.log: directory {d}/none "
            "does not exist",
        ),
        (
            "file,id=f,path={d}/f.log,input-path={d}/in",
            "chardev 'f': 'input-path': {d}/in does not exist",
        ),
    ],
)
def test_check_reports_what_start_up_would_find_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    """--check and a real start fail alike, before anything is created."""
    argv = ["-chardev", option.format(d=tmp_path)]
    assert entry([*argv, "--check"]) == 1
    checked = capsys.readouterr().err
    assert message.format(d=tmp_path) in checked
    assert entry(argv) == 1
    assert capsys.readouterr().err == checked
    assert list(tmp_path.iterdir()) == []


def test_a_client_socket_needs_no_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(["-chardev", "socket,id=c,path=/none/s.sock,reconnect-ms=100", "--check"]) == 0


def test_chardev_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(["-chardev", "help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Available chardev backend types:\n")
    assert "\n  socket " in out and "\n  command " in out and "parallel" not in out
    assert entry(["-chardev", "null,id=n", "--chardev", "socket,help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("socket options:\n") and "  reconnect-ms=<num>\n" in out
    assert entry(["-chardev", "file,path=a,,help"]) == 1  # ",," escapes: a path, not help
    assert "Parameter 'id' is missing" in capsys.readouterr().err
    assert entry(["-chardev", "sockt,help"]) == 1
    assert "'sockt' is not a valid char driver name; did you mean 'socket'?" in (
        capsys.readouterr().err
    )


def test_bad_usage_exits_1_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry(["--relay", "chardev=a,peer=b"]) == 1
    assert "iochannel: --relay id=relay0: 'chardev': no chardev with id 'a'" in (
        capsys.readouterr().err
    )
    assert entry(["--help"]) == 0
    assert "--relay" in capsys.readouterr().out


def test_objects() -> None:
    authz = parse_object("authz-list,id=a,policy=allow,rules.0.match=CN=bad*,rules.0.policy=deny")
    built = authz.build()
    assert isinstance(built, AuthzList)
    assert not built.is_allowed("CN=badguy") and built.is_allowed("CN=alice")
    simple = parse_object("authz-simple,id=s,identity=CN=alice").build()
    assert isinstance(simple, AuthzList)
    assert simple.is_allowed("CN=alice") and not simple.is_allowed("CN=alice2")
    with pytest.raises(ValueError, match=r"object 't'.*does not exist"):
        parse_object("tls-creds-x509,id=t,dir=/nonexistent,endpoint=server").build()


def test_x509_object_from_a_directory(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    (tmp_path / "ca-cert.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "server-cert.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp_path / "server-key.pem").write_bytes(cert.private_key_pem.bytes())
    spec = parse_object(f"tls-creds-x509,id=t,dir={tmp_path},endpoint=server,verify-peer=off")
    creds = spec.build()
    assert creds.verify_peer is False
    assert spec.describe() == f"tls-creds-x509 dir={tmp_path},endpoint=server,verify-peer=off"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8080", ("127.0.0.1", 8080)), (":1", ("127.0.0.1", 1)), ("[::1]:5", ("::1", 5))],
)
def test_web_address(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, "addr") == expected


def _readme_default(directory: str) -> list[str]:
    """The README's written-out default, as a shell would split it."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    after = readme.split("Written out as options, that default is:", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    text = block.replace("\\\n", " ").replace("DIR", directory).replace("$SHELL", "/bin/sh")
    argv = shlex.split(text)
    assert argv[0] == "iochannel"
    return argv[1:]


def test_the_readme_writes_out_the_built_in_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHELL", "/bin/sh")
    assert entry([*_readme_default(str(tmp_path)), "--check"]) == 0
    written_out = capsys.readouterr().out
    argv, _ = default_config(str(tmp_path), web=True)
    assert entry([*argv, "--check"]) == 0
    assert written_out == capsys.readouterr().out


def test_check_of_the_default_leaves_nothing_behind(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # read TMPDIR again
    try:
        assert entry(["--check"]) == 0
    finally:
        tempfile.tempdir = None
    assert "console.sock" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_the_examples_in_help_are_valid_command_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    assert entry(["--help"]) == 0
    examples = capsys.readouterr().out.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    commands = [shlex.split(line) for line in _commands_in(examples)]
    assert len(commands) == 2
    for argv in commands:
        assert argv[0] == "iochannel"
        assert entry([*argv[1:], "--check"]) == 0, argv
        capsys.readouterr()


def _commands_in(text: str) -> list[str]:
    """The commands of a help text's examples, continuation lines joined, comments left out."""
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("iochannel ")]


@pytest.mark.parametrize("on_path", [True, False], ids=["venv-on-path", "venv-not-on-path"])
def test_startup_hints_are_commands_this_installation_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: bool
) -> None:
    """Pasted into a shell with the same PATH, a hint's command runs this installation."""
    scripts = sysconfig.get_path("scripts")
    assert Path(scripts, "iochannel").exists()  # the tests run from an installation
    path = f"{scripts}:/usr/bin:/bin" if on_path else "/usr/bin:/bin"
    monkeypatch.setenv("PATH", path)
    argv = ["-chardev", f"socket,id=u,path={tmp_path}/u.sock,server=on,wait=off"]

    async def endpoints() -> list[str]:
        daemon = Daemon(parse_args(argv))
        await daemon.start()
        try:
            return daemon.endpoints()
        finally:
            await daemon.stop()

    [hint] = asyncio.run(endpoints())
    command, _, target = hint.removeprefix("u: ").partition(" console ")
    assert target == f"{tmp_path}/u.sock"
    assert (command == "iochannel") == on_path, hint
    done = subprocess.run(
        f"{command} --version", shell=True, env={"PATH": path}, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("iochannel "), (hint, done.stderr)
