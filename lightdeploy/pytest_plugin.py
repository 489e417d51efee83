"""The pytest plugin (entry point ``pytest11``, loaded when lightdeploy is installed): the fixture
``lightdeploy_parity``.

``lightdeploy_parity(model_or_factory, artifact_dir, images=None)`` is ``lightdeploy.testing.check_parity``
that fails the test when the artifact diverges from the model; the gate's table then appears in the
failure report as the section "lightdeploy parity".  Importing this module costs nothing but pytest:
lightdeploy (and torch) load when the fixture is used.
"""

from __future__ import annotations

import pytest

_TABLES = pytest.StashKey[list]()  # per test: the table of every failed parity check it ran


@pytest.fixture
def lightdeploy_parity(request):
    """A function ``(model_or_factory, artifact_dir, images=None) -> ParityReport`` that fails the
    test (AssertionError) when the artifact does not match the model within the tolerance table."""

    def check(model_or_factory, artifact_dir, images=None):
        __tracebackhide__ = True  # the failure points at the user's test line, not at this function
        from lightdeploy.testing import check_parity, table_text

        report = check_parity(model_or_factory, artifact_dir, images)
        if not report.passed:
            request.node.stash.setdefault(_TABLES, []).append(f"{report.summary()}\n{table_text(report)}")
            raise AssertionError(f"{report.summary()} (the gate's table: section 'lightdeploy parity' below)")
        return report

    return check


# hookwrapper (not the newer wrapper=True): the plugin loads in every pytest a user has, pytest 7 included
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    tables = item.stash.get(_TABLES, None)
    if tables and report.when == "call":
        report.sections.append(("lightdeploy parity", "\n".join(tables)))
