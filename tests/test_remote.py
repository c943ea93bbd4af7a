"""`bench --host`: against a real sshd on 127.0.0.1 started by the test (temp host key, temp authorized key,
known_hosts written by the test). Skipped with the reason when OpenSSH's server is not installed
(`apt-get install -y openssh-server openssh-client`)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.remote import SshTarget, parse_host, run_remote_bench, safe_name

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
HAVE_CLIENT = all(shutil.which(x) for x in ("ssh", "scp", "ssh-keygen"))
REMOTE_EDGECONV = str(Path(sys.executable).parent / "edgeconv")
FAST = ["--warmup", "1", "--iters", "3", "--limit", "40", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "bad",
    ["-oProxyCommand=touch_x", "user@host;rm", "a b@host", "user@$(id)", "user@", "@host", "user@host:22", "", "user@-host"],
)
def test_host_names_that_could_inject_are_refused(bad):
    with pytest.raises(EdgeconvError, match="USER@ADDR"):
        parse_host(bad)


def test_host_forms_accepted():
    assert parse_host("nvidia@192.168.55.1") == ("nvidia", "192.168.55.1")
    assert parse_host("jetson.local") == (None, "jetson.local")
    assert parse_host("me@[fe80::1]") == ("me", "[fe80::1]")


def test_remote_names_are_shell_safe():
    assert safe_name(0, Path("/x/$(touch P); m.int8.onnx")) == "0___touch_P___m.int8.onnx"
    assert safe_name(3, Path("-rf.pt")) == "3_rf.pt"


@pytest.mark.skipif(not HAVE_CLIENT, reason="OpenSSH client (ssh, scp, ssh-keygen) not installed")
def test_unreachable_host_is_one_readable_line(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    target = SshTarget(f"{getpass.getuser()}@127.0.0.1", port=free_port(), known_hosts=tmp_path / "kh", connect_timeout=5)
    with pytest.raises(EdgeconvError, match=r"cannot reach .*127\.0\.0\.1.*(refused|Connection)") as e:
        run_remote_bench(target, [ckpt], [])
    assert "\n" not in str(e.value)


def test_missing_local_file_before_connecting(tmp_path):
    target = SshTarget("nobody@127.0.0.1", port=1)
    with pytest.raises(EdgeconvError, match="no such file"):
        run_remote_bench(target, [tmp_path / "nope.onnx"], [])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port> accepting one temp key for the current user."""
    if SSHD is None:
        pytest.skip("sshd not installed: apt-get install -y openssh-server openssh-client")
    if not HAVE_CLIENT:
        pytest.skip("OpenSSH client not installed: apt-get install -y openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    port = free_port()
    user = getpass.getuser()
    cfg = d / "sshd_config"
    cfg.write_text(
        f"ListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\nSubsystem sftp internal-sftp\n"
    )
    log = (d / "sshd.log").open("w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg), "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 15 s")
    host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "empty_known_hosts").write_text("")
    yield {
        "port": port,
        "user": user,
        "key": d / "client_key",
        "known_hosts": d / "known_hosts",
        "empty_known_hosts": d / "empty_known_hosts",
        "log": d / "sshd.log",
    }
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _target(sshd, known_hosts=None):
    return SshTarget(
        f"{sshd['user']}@127.0.0.1",
        port=sshd["port"],
        identity=sshd["key"],
        known_hosts=known_hosts or sshd["known_hosts"],
        remote_edgeconv=REMOTE_EDGECONV,
    )


def test_unknown_host_key_is_refused(sshd, tmp_path):
    f = tmp_path / "m.pt"
    f.write_bytes(b"x")
    with pytest.raises(EdgeconvError, match="cannot reach.*host key"):
        run_remote_bench(_target(sshd, sshd["empty_known_hosts"]), [f], [])


@pytest.mark.slow
def test_remote_bench_round_trip_with_hostile_file_name(sshd, trained, tmp_path, monkeypatch):
    from edgeconv.measure.bench import BenchConfig, run_bench

    src = trained("routed-tiny", 12)
    hostile = tmp_path / "$(touch PWNED); `touch PWNED2` m'x.pt"
    shutil.copy(src, hostile)
    monkeypatch.chdir(tmp_path)
    result = run_remote_bench(_target(sshd), [hostile], ["--batch", "1,2", *FAST])
    assert not list(tmp_path.glob("PWNED*")) and not Path.home().joinpath("PWNED").exists()
    assert result["remote"]["host"].endswith("@127.0.0.1")
    rows = result["rows"]
    assert [(r["model"], r["batch"], r["status"]) for r in rows] == [(hostile.name, 1, "ok"), (hostile.name, 2, "ok")]
    local = run_bench([src], BenchConfig(batches=[1], warmup=1, iters=3, limit=40))
    assert rows[0]["top1"] == pytest.approx(local["rows"][0]["top1"])  # same data, same model, other machine
    assert result["reference"]["path"] == str(hostile)
    assert result["data"]["n"] == 40 and result["settings"]["threads"] == 1


@pytest.mark.slow
def test_cli_host_writes_json_and_reports_remote_errors(sshd, trained, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    src = trained("routed-tiny", 12)
    common = [
        "--host",
        f"{sshd['user']}@127.0.0.1",
        "--ssh-port",
        str(sshd["port"]),
        "--identity",
        str(sshd["key"]),
        "--known-hosts",
        str(sshd["known_hosts"]),
        "--remote-edgeconv",
        REMOTE_EDGECONV,
    ]
    out = tmp_path / "remote.json"
    r = CliRunner().invoke(app, ["bench", str(src), *common, *FAST, "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "bench on" in r.output and out.exists()
    # a remote-side user error (jetson asked on a non-Jetson) comes back as one readable line
    r = CliRunner().invoke(app, ["bench", str(src), *common, *FAST, "--device", "jetson"])
    assert isinstance(r.exception, EdgeconvError) and "not a Jetson" in str(r.exception)
    r = CliRunner().invoke(app, ["bench", str(src), *common[:-1], "/nonexistent/edgeconv", *FAST])
    assert isinstance(r.exception, EdgeconvError) and "--remote-edgeconv" in str(r.exception)


@pytest.mark.slow
def test_colon_in_a_local_name_and_a_space_in_known_hosts(sshd, trained, tmp_path, monkeypatch):
    """scp must not read "a:b.pt" as HOST:PATH, and ssh must not split a known_hosts path at its space."""
    src = trained("routed-tiny", 12)
    monkeypatch.chdir(tmp_path)
    colon = Path("model:v2.pt")
    shutil.copy(src, colon)
    spaced = tmp_path / "my hosts"
    spaced.write_text(Path(sshd["known_hosts"]).read_text())
    result = run_remote_bench(_target(sshd, spaced), [colon], ["--batch", "1", *FAST])
    assert [r["status"] for r in result["rows"]] == ["ok"] and result["rows"][0]["model"] == colon.name


def test_cli_refuses_an_empty_host_and_a_negative_timeout(trained, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    src = str(trained("routed-tiny", 12))
    r = CliRunner().invoke(app, ["bench", src, "--host", ""])
    assert isinstance(r.exception, EdgeconvError) and "--host is empty" in str(r.exception)
    r = CliRunner().invoke(app, ["bench", src, "--host", "u@h", "--remote-timeout", "-5"])
    assert isinstance(r.exception, EdgeconvError) and "--remote-timeout must be in (0, inf]" in str(r.exception)
