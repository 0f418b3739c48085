"""The server raises its open-files limit to fit max_sessions, within the hard limit."""

from __future__ import annotations

import subprocess
import sys

import pytest

resource = pytest.importorskip("resource")  # POSIX only


def test_soft_open_files_limit_rises_to_the_connections_wanted():
    # In a child process: lowering the limit here would affect the rest of the test session.
    program = """
import resource
from streamd.oslimits import raise_open_files_limit, SPARE_FILES
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
now, wanted = raise_open_files_limit(3000)
expected = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
assert wanted == 3000 + SPARE_FILES, wanted
assert now == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0], (now, expected)
# a limit already high enough is left alone
assert raise_open_files_limit(10) == (expected, 10 + SPARE_FILES)
assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
