"""The README stays true: its examples run, and its test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def run_python(code: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,  # the assertion below shows stderr
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_store_example_runs_on_both_backends(tmp_path: Path) -> None:
    example = code_blocks("python")[0]
    assert "anyio.run(main)" in example
    for backend in ("asyncio", "trio"):
        code = example.replace("anyio.run(main)", f"anyio.run(main, backend={backend!r})")
        assert run_python(code, tmp_path).splitlines() == ["11 11 True", "b'hello world'"]
    # the example deletes its upload: nothing is left but the directory
    assert list((tmp_path / "uploads").iterdir()) == []


def test_app_example_builds_an_app(tmp_path: Path) -> None:
    example = code_blocks("python")[1]
    output = run_python(example + "\nprint(','.join(app.extensions))\n", tmp_path)
    assert "checksum" in output
    assert "expiration" in output


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [block.strip() for block in code_blocks("sh")[:2]]
    run_command, test_command = commands
    assert "anytus serve" in run_command
    assert test_command in ci.splitlines()


def test_mount_example_mounts_the_app(tmp_path: Path) -> None:
    example = code_blocks("python")[2]
    assert 'app.mount("/uploads", uploads)' in example
    assert "base_path" not in example  # the mount's prefix is written once
    output = run_python(example + "\nprint(app.routes[-1].path)\n", tmp_path)
    assert output.split() == ["/uploads"]
