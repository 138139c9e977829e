"""The wheel installs everything under the `mcc` namespace and nothing generic at top level."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("mcc-*.whl")
    return zipfile.ZipFile(path)


def test_only_the_mcc_namespace_is_installed(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"mcc"}
    names = set(wheel.namelist())
    for package in ("toolchain", "passes", "backends", "hwmodels"):
        assert f"mcc/{package}/__init__.py" in names
    assert "mcc/hwmodels/targets/host.toml" in names
    # every source module of the four code folders is in the wheel (a subpackage missing from
    # pyproject's `packages` would install a broken mcc)
    for folder in ("toolchain", "passes", "backends", "hwmodels"):
        for source in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in source.parts:
                assert f"mcc/{source.relative_to(REPO).as_posix()}" in names, f"{source} is not packaged"
    assert "mcc/__init__.py" not in names  # an implicit namespace: plugins may add mcc.* packages


def test_console_script_and_dependencies_are_declared(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "mcc = mcc.toolchain.cli.main:entry" in wheel.read(entry_points).decode()
    (metadata,) = [n for n in wheel.namelist() if n.endswith("METADATA")]
    text = wheel.read(metadata).decode()
    for requirement in ("onnx", "onnx-graphsurgeon", "onnxruntime", "apache-tvm", "numpy", "click", "networkx"):
        assert f"Requires-Dist: {requirement}" in text
    assert "Provides-Extra: test" in text
