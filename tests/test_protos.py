"""The protos pass `buf lint` and `buf breaking` against the recorded baseline.

buf is the pinned one in tooling/buf (scripts/test.sh installs it when missing).
Without it these tests skip on a developer's machine and fail under CI=true,
so that CI cannot go green having checked nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLING = ROOT / "tooling" / "buf"
BUF = TOOLING / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "proto" / "buf.baseline.binpb"


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        missing = f"{BUF.relative_to(ROOT)} is not installed: run `npm ci --prefix tooling/buf`"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return BUF


def run(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def copy_of_protos(tmp_path: Path) -> Path:
    """The module as buf sees it (buf.yaml and proto/), in a folder the test may edit."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path


def test_buf_is_the_pinned_version(buf: Path) -> None:
    pin = json.loads((TOOLING / "package.json").read_text())["devDependencies"]["@bufbuild/buf"]
    assert run(buf, "--version").stdout.strip() == pin


def test_protos_pass_buf_lint(buf: Path) -> None:
    result = run(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_are_wire_compatible_with_the_baseline(buf: Path) -> None:
    result = run(buf, "breaking", "--against", str(BASELINE))
    assert result.returncode == 0, (
        result.stdout
        + result.stderr
        + "\nIf the break is intended, refresh the baseline as buf.yaml says."
    )


def test_buf_breaking_fails_when_a_field_is_deleted(buf: Path, tmp_path: Path) -> None:
    module = copy_of_protos(tmp_path)
    common = module / "proto" / "meshgate" / "v1" / "common.proto"
    text = common.read_text()
    field = "  // Tokens in the prompt.\n  int64 prompt_tokens = 1;\n"
    assert field in text  # Usage.prompt_tokens, the field this test deletes
    common.write_text(text.replace(field, ""))

    result = run(buf, "breaking", "--against", str(BASELINE), cwd=module)
    assert result.returncode != 0
    assert 'field "1" with name "prompt_tokens" on message "Usage" was deleted' in result.stdout


def test_buf_lint_fails_on_an_uncommented_field(buf: Path, tmp_path: Path) -> None:
    module = copy_of_protos(tmp_path)
    common = module / "proto" / "meshgate" / "v1" / "common.proto"
    text = common.read_text()
    comment = "  // Tokens in the prompt.\n"
    assert comment in text
    common.write_text(text.replace(comment, ""))

    result = run(buf, "lint", cwd=module)
    assert result.returncode != 0
    assert 'Field "prompt_tokens" should have a non-empty comment' in result.stdout
