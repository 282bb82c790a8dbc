"""The layers contract in pyproject.toml holds: ground → model → features → streaming → services
→ dev tools → the command line, each importing only what is below it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(config: Path, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache", "--config", str(config)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_every_import_points_down_the_layers():
    run = _lint(ROOT / "pyproject.toml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The same contract over a copy of two layers where the lower one imports the upper one."""
    for pkg, body in (("low", "import high\n"), ("high", "import low\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    config = tmp_path / "contract.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["high", "low"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\nlayers = ["high", "low"]\n')
    run = _lint(config, tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "low is not allowed to import high" in run.stdout, run.stdout + run.stderr
