"""Parity in a user's own CI: ``lightdeploy.testing.assert_parity`` and the pytest fixture
``lightdeploy_parity`` (entry point ``pytest11``), run on small suites with ``pytester``."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from user_models import TinyClassifier

from lightdeploy import export_module
from lightdeploy.testing import assert_parity

TESTS = ROOT / "tests"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A classifier artifact exported from the weights of seed 5 (ONNX, 64x64)."""
    torch.manual_seed(5)
    model = TinyClassifier()
    out = tmp_path_factory.mktemp("ci")
    (outcome,) = export_module(model, task="classify", input_size=(64, 64), name="mynet", out=out)
    return outcome.folder


SUITE = """
import sys

import torch

sys.path.insert(0, {tests!r})
from user_models import TinyClassifier

ARTIFACT = {artifact!r}


def build_model():
    torch.manual_seed({seed})  # stands in for loading the trained weights
    return TinyClassifier()


def test_artifact_matches_model(lightdeploy_parity):
    lightdeploy_parity(build_model(), ARTIFACT)


def test_artifact_matches_factory(lightdeploy_parity):
    lightdeploy_parity(build_model, ARTIFACT)
"""


def _suite(pytester, artifact, seed: int):
    pytester.makepyfile(test_suite=SUITE.format(tests=str(TESTS), artifact=str(artifact), seed=seed))
    return pytester.runpytest("-p", "no:cacheprovider")


def test_a_matching_artifact_passes(pytester, artifact):
    result = _suite(pytester, artifact, seed=5)
    result.assert_outcomes(passed=2)


def test_an_artifact_from_other_weights_fails_with_the_gate_table(pytester, artifact):
    result = _suite(pytester, artifact, seed=6)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "parity FAILED for mynet-onnx-fp32" in out
    # the gate's table, in its own section of each failure report
    assert out.count("lightdeploy parity") >= 2
    result.stdout.fnmatch_lines(["*parity: mynet-onnx-fp32 (onnxruntime/fp32)*", "*logits*cosine*NO*"])


def test_assert_parity_raises_with_the_table(artifact):
    torch.manual_seed(5)
    assert assert_parity(TinyClassifier(), artifact).passed
    torch.manual_seed(6)
    with pytest.raises(AssertionError) as failure:
        assert_parity(TinyClassifier(), artifact)
    message = str(failure.value)
    assert message.startswith("parity FAILED for mynet-onnx-fp32")
    assert "subject" in message and "top1_agreement" in message and "NO" in message
