"""The README's two commands are the ones CI runs: its test command is the last line of
.ci/run, and its install-and-run command is what .ci/fresh_env installs in a new environment
and tests/test_demo.py runs there (`CRITIQUE_JAX_CLI_PYTHON`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The bash blocks of the README's "Two commands" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def script_lines(name: str) -> list[str]:
    lines = (ROOT / ".ci" / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_has_two_commands():
    main, tests = readme_commands()
    assert main == "pip install -e . && python -m critique_jax.train"
    assert tests == 'pip install -e ".[test]" && python -m pytest'


def test_ci_runs_the_readme_test_command_last():
    _, tests = readme_commands()
    assert script_lines("run")[-1] == tests


def test_ci_runs_the_main_command_in_a_fresh_environment():
    main, _ = readme_commands()
    install, run = (part.strip() for part in main.split("&&"))
    ci = script_lines("run")
    assert 'bash .ci/fresh_env "$fresh"' in ci
    assert 'export CRITIQUE_JAX_CLI_PYTHON="$fresh/venv/bin/python"' in ci
    fresh_env = "\n".join(script_lines("fresh_env"))
    assert 'python -m venv "$work/venv"' in fresh_env
    assert fresh_env.endswith(f'"$work/venv/bin/python" -m {install}')  # the package alone
    demo_test = (ROOT / "tests" / "test_demo.py").read_text()
    assert 'os.environ.get("CRITIQUE_JAX_CLI_PYTHON", sys.executable)' in demo_test
    assert f'run_cli("{run.removeprefix("python -m ")}", ' in demo_test
