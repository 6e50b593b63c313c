"""Every example runs and its pyops and torch results agree (the examples assert it)."""

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("script,expected", [
    ("lesson.py", "every cell agrees"),
    ("logistic_regression.py", "test accuracy pyops"),
    ("mlp.py", "test accuracy pyops"),
    ("hf_causal_lm.py", "curves agree"),
])
def test_example_runs(script, expected):
    needs = {"lesson.py": None, "hf_causal_lm.py": "transformers"}.get(script, "sklearn")
    if needs:
        pytest.importorskip(needs)
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout
