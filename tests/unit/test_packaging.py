"""The image's recipe: hadolint passes, and the Dockerfile's own install steps on the Docker path
(wheel stage from the index, then an index-free install of those wheels by a pip run from its own
wheel) give a working `lvscare` in a fresh virtualenv that has no pip. The image itself is built by
scripts/image and run by a real pod runner in tests/kernel/test_pods.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lvscare import __version__

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
WHEEL = "pip wheel --no-cache-dir --wheel-dir /wheels /src pip"
INSTALL = ('python3 "$1/pip" install --no-cache-dir --no-index --find-links=/wheels --root-user-action=ignore'
           ' \\\n        "lvscare==${VERSION}"')


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    p = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_is_multi_stage_and_small() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) == 2 and "slim" in re.search(r"PYTHON_IMAGE=(\S+)", DOCKERFILE)[0]  # type: ignore[index]
    final = DOCKERFILE.split("\nFROM ")[-1]
    assert "gcc" not in final and "build-essential" not in final
    assert 'ENTRYPOINT ["lvscare"]' in final
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", DOCKERFILE, re.M)
    assert "org.opencontainers.image.version" in final
    assert WHEEL in DOCKERFILE and INSTALL in DOCKERFILE


def test_the_dockerfile_install_steps_give_a_working_lvscare(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    def run(cmd: list[str], check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=600, cwd=cwd)

    try:
        run([sys.executable, "-m", *WHEEL.replace("/wheels", str(wheels)).replace("/src", str(REPO)).split()])
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"pip wheel failed: {exc.stderr[-2000:]}")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # as scripts/image's base: a Python without pip
    (pip_wheel,) = wheels.glob("pip-*.whl")
    run([str(env_dir / "bin" / "python"), f"{pip_wheel}/pip", "install", "--no-cache-dir", "--no-index",
         f"--find-links={wheels}", f"lvscare=={__version__}"])
    assert not (env_dir / "bin" / "pip").exists()  # the install left no pip behind
    venv_python = str(env_dir / "bin" / "python")
    lvscare = str(env_dir / "bin" / "lvscare")
    assert run([lvscare, "version", "--short"]).stdout.strip() == f"v{__version__}"
    pod = run([lvscare, "static-pod", "--masters", "10.0.0.2", "--print"]).stdout
    assert "kind: Pod" in pod
    # Only runtime dependencies went in: no test tools, no installer (fabric), no pyroute2.
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert "aiohttp" in names and not names & {"pytest", "fabric", "paramiko", "pyroute2", "mypy",
                                                "prometheus_client"}
    # The image carries what runs on a node: no test rig, no demo.
    (ours,) = wheels.glob(f"lvscare-{__version__}-*.whl")
    files = zipfile.ZipFile(ours).namelist()
    assert "lvscare/daemon.py" in files
    assert not [f for f in files if f.startswith(("lvscare_rig", "lvscare/lab", "tests/"))
                or f.endswith(("/testkernel.py", "/demo.py"))], files
    assert run([lvscare, "demo"], check=False).returncode == 2  # says where the demo runs from
    # The installer's import name is its own: PyPA's `installer` (pip tooling) can sit beside it.
    assert "lvscare_installer/cli.py" in files and not [f for f in files if f.startswith("installer/")]
    run([sys.executable, "-m", "pip", "--python", venv_python, "install",
         "--no-cache-dir", "--no-deps", "installer"])
    both = run([str(env_dir / "bin" / "python"), "-c",
                "import installer, installer.sources, lvscare_installer.cli; "
                "print(installer.__file__, lvscare_installer.cli.__file__)"]).stdout.split()
    assert "/installer/" in both[0] and "/lvscare_installer/" in both[1]
    # Without the installer extra, join says how to get it in one line; bundle needs no SSH.
    command = str(env_dir / "bin" / "installer")
    join = run([command, "join", "--master", "10.0.0.2", "--node", "n1", "--pk", "/nonexistent"],
               check=False)
    assert join.returncode == 2 and join.stderr.count("\n") == 1, join.stderr
    assert "pip install 'lvscare[installer]'" in join.stderr and "Traceback" not in join.stderr
    made = run([command, "bundle", "-o", str(tmp_path / "node.pyz")])
    assert "wrote" in made.stdout and (tmp_path / "node.pyz").stat().st_size < 300_000


# The process a container of this image gets, by the rules of Kubernetes and the OCI runtimes:
# command replaces ENTRYPOINT, args replace CMD; runAsUser else the image's USER; privileged gets
# every capability, otherwise the runtime's default set minus drop plus add, and only a root
# process has them (no ambient capabilities).
RUNTIME_DEFAULT_CAPS = {"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                        "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                        "AUDIT_WRITE"}


def container_process(container: dict[str, Any]) -> tuple[list[str], int, set[str]]:
    final = DOCKERFILE.split("\nFROM ")[-1]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", final, re.M)[1])  # type: ignore[index]
    cmd = json.loads(re.search(r"^CMD (.+)$", final, re.M)[1])  # type: ignore[index]
    user = int(re.search(r"^USER (\d+)", final, re.M)[1])  # type: ignore[index]
    if "command" in container:
        argv = [*container["command"], *container.get("args", [])]
    else:
        argv = [*entrypoint, *container.get("args", cmd)]
    sc = container.get("securityContext", {})
    uid = sc.get("runAsUser", user)
    if sc.get("privileged"):
        caps = {"ALL"}
    else:
        drop = set(sc.get("capabilities", {}).get("drop", []))
        caps = set() if "ALL" in drop else RUNTIME_DEFAULT_CAPS - drop
        caps |= set(sc.get("capabilities", {}).get("add", []))
    return argv, uid, caps if uid == 0 else set()


SEALOS_CARE = ["care", "--vs", "10.103.97.2:6443", "--health-path", "/healthz", "--health-schem",
               "https", "--rs", "192.168.0.2:6443", "--rs", "192.168.0.3:6443", "--rs",
               "192.168.0.4:6443"]


def _sealos(env: bool, k3s: bool) -> dict[str, Any]:
    """The container sealos writes (its own test's manifest); k3s adds --health-status 401."""
    args = [*SEALOS_CARE, *(["--health-status", "401"] if k3s else [])]
    c: dict[str, Any] = {"command": ["/usr/bin/lvscare"], "args": args, "image": "lvscare:dev",
                         "securityContext": {"privileged": True},
                         "volumeMounts": [{"mountPath": "/lib/modules", "name": "lib-modules",
                                           "readOnly": True}]}
    if env:
        c["env"] = [{"name": "LVSCARE_NODE_IP", "value": "192.168.0.10"}]
    return c


@pytest.mark.parametrize(("env", "k3s"), [(False, False), (True, False), (False, True), (True, True)])
def test_the_image_runs_under_the_manifest_sealos_writes(env: bool, k3s: bool) -> None:
    from lvscare.careflags import load_config, parse_care_args

    container = _sealos(env, k3s)
    argv, uid, caps = container_process(container)
    assert argv[0] == "/usr/bin/lvscare"
    assert "RUN ln -s /usr/local/bin/lvscare /usr/bin/lvscare" in DOCKERFILE  # pip's script, linked
    assert uid == 0 and caps == {"ALL"}
    variables = {e["name"]: e["value"] for e in container.get("env", [])}
    cfg = load_config(parse_care_args(argv[1:]), variables, hosts=None)
    vs = cfg.virtual_servers[0]
    assert str(vs.endpoint) == "10.103.97.2:6443" and len(vs.real_servers) == 3
    assert vs.health.path == "/healthz" and vs.health.scheme == "https"
    assert (401 in vs.health.status) == k3s
    assert (str(cfg.ip) if cfg.ip else None) == ("192.168.0.10" if env else None)


def test_the_image_runs_under_our_least_privilege_manifest() -> None:
    from lvscare import staticpod

    pod = staticpod.manifest(staticpod.StaticPod(masters=("192.168.0.2",)))
    argv, uid, caps = container_process(pod["spec"]["containers"][0])
    assert argv[:2] == ["lvscare", "care"] and uid == 0 and caps == {"NET_ADMIN", "NET_RAW"}
    init_argv, init_uid, init_caps = container_process(pod["spec"]["initContainers"][0])
    assert init_argv[-1] == "--run-once" and init_uid == 0 and init_caps == {"ALL"}
