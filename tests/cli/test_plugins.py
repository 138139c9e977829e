"""Pass plugins from the `mcc.passes` entry-point group, through the real console script."""

import json
import textwrap

import pytest

from tests.conftest import EXAMPLE

PLUGIN_SOURCE = '''
from dataclasses import dataclass
from typing import ClassVar

import onnx
from onnx import numpy_helper

from mcc.toolchain.passmanager import Pass, PassResult


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """Multiply every float initializer by a factor (changes the function on purpose)."""

    name: ClassVar[str] = "scale-weights"
    factor: float = 2.0

    def run(self, model, ctx):
        result = onnx.ModelProto()
        result.CopyFrom(model)
        for tensor in result.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind == "f":
                tensor.CopyFrom(numpy_helper.from_array(array * self.factor, tensor.name))
        return PassResult(result, True)


@dataclass(frozen=True)
class Crashes(Pass):
    """Raise an unexpected exception."""

    name: ClassVar[str] = "crashes"

    def run(self, model, ctx):
        raise RuntimeError("plugin bug")


class NotAPass:
    name = "not-a-pass"
'''

ENTRY_POINTS = """
[mcc.passes]
scale-weights = mccplugin_demo:ScaleWeights
crashes = mccplugin_demo:Crashes
missing-object = mccplugin_demo:DoesNotExist
not-a-pass = mccplugin_demo:NotAPass
duplicate = mcc.passes:FoldConstants
"""


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    (site / "mccplugin_demo").mkdir(parents=True)
    (site / "mccplugin_demo" / "__init__.py").write_text(PLUGIN_SOURCE)
    dist = site / "mccplugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mccplugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return {"PYTHONPATH": str(site)}


def test_plugins_are_listed_and_broken_ones_reported_by_name(run_mcc, plugin_env):
    result = run_mcc("passes", env=plugin_env)
    assert result.returncode == 0, result.stderr
    assert "scale-weights" in result.stdout and "[plugin: mccplugin-demo]" in result.stdout
    assert "factor=float (default 2.0)" in result.stdout
    for name in ("missing-object", "not-a-pass", "duplicate"):
        assert f"plugin '{name}' from 'mccplugin-demo' was not loaded" in result.stderr
    assert "already taken by builtin" in result.stderr
    assert "Traceback" not in result.stderr
    listing = json.loads(run_mcc("passes", "--json", env=plugin_env).stdout)
    assert any(p["name"] == "scale-weights" and p["origin"] == "mccplugin-demo" for p in listing["passes"])


def test_plugin_pass_runs_and_wrong_numerics_fail_validation(tmp_path, run_mcc, plugin_env):
    out = tmp_path / "scaled"
    result = run_mcc("compile", EXAMPLE, "-o", out, "--passes", "default,scale-weights{factor=1.5}", env=plugin_env)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().startswith("mcc: validation failed: output(s) logits differ")
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"] is False
    assert report["passes"][-1]["name"] == "scale-weights"


def test_crashing_plugin_is_an_internal_error_with_reproducer(tmp_path, run_mcc, plugin_env):
    result = run_mcc("compile", EXAMPLE, "-o", tmp_path / "x", "--passes", "crashes", env=plugin_env)
    assert result.returncode == 70
    line = result.stderr.strip()
    assert line.startswith("mcc: internal error: pass 'crashes': RuntimeError: plugin bug (reproducer: ")
    reproducer = json.loads(open(line.rsplit("reproducer: ", 1)[1].rstrip(")")).read())
    assert reproducer["pipeline"] == "crashes" and len(reproducer["model_sha256"]) == 64
    assert not (tmp_path / "x").exists()


def test_plugins_can_be_disabled(run_mcc, plugin_env, tmp_path):
    env = dict(plugin_env, MCC_DISABLE_PLUGINS="all")
    result = run_mcc("compile", EXAMPLE, "-o", tmp_path / "y", "--passes", "scale-weights", env=env)
    assert result.returncode == 2 and "unknown pass 'scale-weights'" in result.stderr
    listing = run_mcc("passes", env=dict(plugin_env, MCC_DISABLE_PLUGINS="missing-object,not-a-pass,duplicate"))
    assert listing.stderr == ""


def test_asking_for_a_broken_plugin_says_why_it_is_missing(run_mcc, plugin_env, tmp_path):
    result = run_mcc("compile", EXAMPLE, "-o", tmp_path / "z", "--passes", "missing-object", env=plugin_env)
    assert result.returncode == 2
    assert "plugin 'missing-object' from 'mccplugin-demo' failed to load: AttributeError" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
