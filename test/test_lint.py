"""ament-style code checks: flake8 (99 columns, single quotes, pep257 docstrings)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED = [path for path in ('onlineanyseg_ros', 'test', 'benchmarks', 'tools', 'launch',
                             'setup.py') if (ROOT / path).exists()]


def test_flake8():
    result = subprocess.run([sys.executable, '-m', 'flake8', *CHECKED], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, 'flake8 found problems:\n' + result.stdout + result.stderr


def test_copyright():
    main = pytest.importorskip('ament_copyright.main').main
    assert main(argv=['.', 'test']) == 0
