"""The MLproject and the step scripts agree: every parameter is a flag of the same name that the step accepts."""

from __future__ import annotations

import importlib
import re

import pytest
from mlflow.projects import _project_spec

from tests.conftest import ROOT

PROJECT = _project_spec.load_project(str(ROOT))


@pytest.mark.parametrize("entry_point", sorted(PROJECT._entry_points))
def test_every_parameter_is_passed_as_the_flag_of_the_same_name(entry_point):
    entry = PROJECT._entry_points[entry_point]
    module = re.match(r"python -m steps\.(\w+) ", entry.command).group(1)
    pairs = dict(re.findall(r"--(\w+) \{(\w+)\}", entry.command))
    assert pairs == {name: name for name in entry.parameters}, "flag names must equal parameter names"
    step = importlib.import_module(f"steps.{module}")
    parser_flags = set()
    original = step.argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parser_flags.update(a.dest for a in self._actions)
        for action in self._actions:
            assert action.help, f"{module}: --{action.dest} has no help text"
        raise SystemExit(0)

    step.argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            step.parse_args([])
    finally:
        step.argparse.ArgumentParser.parse_args = original
    assert set(entry.parameters) <= parser_flags


def test_the_default_entry_point_is_main_and_the_name_is_dns_safe():
    assert "main" in PROJECT._entry_points
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", PROJECT.name)
