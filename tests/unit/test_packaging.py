"""The image's recipe: hadolint passes, and the Dockerfile's own install steps (wheel stage, then
an index-free install of those wheels) give a working `lvscare` in a fresh virtualenv. No Docker
engine runs on the development or CI machines, so this is how the image's install is proven."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from lvscare import __version__

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
WHEEL = "pip wheel --no-cache-dir --wheel-dir /wheels ."
INSTALL = 'pip install --no-cache-dir --no-index --find-links=/wheels "lvscare==${VERSION}"'


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    p = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_is_multi_stage_small_and_unprivileged_by_default() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) == 2 and "slim" in re.search(r"PYTHON_IMAGE=(\S+)", DOCKERFILE)[0]  # type: ignore[index]
    final = DOCKERFILE.split("\nFROM ")[-1]
    assert "gcc" not in final and "build-essential" not in final
    assert re.search(r"^USER 65532", final, re.M)
    assert 'ENTRYPOINT ["lvscare"]' in final
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", DOCKERFILE, re.M)
    assert "org.opencontainers.image.version" in final
    assert WHEEL in DOCKERFILE and INSTALL in DOCKERFILE


def test_the_dockerfile_install_steps_give_a_working_lvscare(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    def run(cmd: list[str], check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=600, cwd=cwd)

    try:
        run([sys.executable, "-m", *WHEEL.replace("/wheels", str(wheels)).split()], cwd=REPO)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"pip wheel failed: {exc.stderr[-2000:]}")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = str(env_dir / "bin" / "pip")
    run([pip, "install", "--no-cache-dir", "--no-index", f"--find-links={wheels}", f"lvscare=={__version__}"])
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
