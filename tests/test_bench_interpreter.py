"""The benchmarks say which Python they ran on, and compare Relay with LiteLLM on that same one: two
builds of one Python version differ in speed (bench/README.md, "Which Python")."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
try:
    import _litellm
    import _relay
finally:
    sys.path.pop(0)


def test_every_result_names_the_interpreter_it_ran_on(capsys):
    _relay.print_result({"requests": 3})
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["requests"] == 3
    assert result["interpreter"] == {"version": platform.python_version(),
                                     "base": os.path.realpath(sys._base_executable)}


def test_litellm_gets_an_environment_of_the_interpreter_running_the_bench():
    source_build = {"version": "3.11.7", "base": "/root/.pyenv/versions/3.11.7/bin/python3.11"}
    debian = {"version": "3.11.2", "base": "/usr/bin/python3.11"}
    same_version_elsewhere = {"version": "3.11.7", "base": "/usr/local/bin/python3.11"}
    venvs = {_litellm.venv_for(python) for python in (source_build, debian, same_version_elsewhere)}
    assert len(venvs) == 3  # one made by another interpreter is never taken for this one's
    assert _litellm.VENV == _litellm.venv_for(_relay.interpreter())
    assert _litellm.VENV.parent == ROOT / "var" / "litellm"
