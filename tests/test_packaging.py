"""The distribution: a GPU machine (bench/gpu_bundle.sh) or a user installs streamd as a wheel,
where patches/ and mocks/ ship as streamd.patches and streamd.mocks; a module left out of it
breaks only there, never in this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.test_shims import run_probe

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> where its files go in the wheel (pyproject.toml's package-dir).
SHIPPED = {"streamd": "streamd", "patches": "streamd/patches", "mocks": "streamd/mocks", "clients": "clients"}


def source_files() -> set[str]:
    return {f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
            for folder, target in SHIPPED.items() for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_the_wheel_holds_every_source_file_and_its_shims_work_installed(untrained_tiny_path: Path, tmp_path: Path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    # setuptools still ships a folder that pyproject.toml does not list, with this warning; its
    # next major version will leave the folder out.
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    wheel = next((tmp_path / "dist").glob("streamd-*.whl"))
    missing = source_files() - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"left out of the wheel: {sorted(missing)}"

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    blocker = tmp_path / "block" / "nv_one_logger"  # as on a machine without nv_one_logger
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('nv_one_logger is not installed here')\n")
    result = run_probe(untrained_tiny_path, [site, blocker.parent])
    assert result["finished"]
    assert result["streamd"].startswith(str(site)), "the installed streamd must be the one imported"
    assert "nv_one_logger: mock package" in result["applied"]
    assert result["nv_one_logger"].startswith(str(site)), result["nv_one_logger"]
