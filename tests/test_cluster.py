"""memsvc on a Ray cluster (issue 20): tests/ray_scenario.py runs a three-node
`ray.cluster_utils.Cluster` on this machine through `memsvc cluster up`, edits, kills a replica
and the primary, and `memsvc cluster status|down`. It runs as a process of its own, in a session
of its own: Ray forks its daemons with a preexec_fn (unsafe in a multi-threaded pytest worker), and
whatever it leaves behind is killed with the session."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT

SECONDS = 240  # the scenario takes 30-60 s on 2 cores; a hang ends here, before pytest-timeout's 300 s


@pytest.mark.slow
def test_cluster_up_replicates_survives_kills_and_goes_down(tmp_path):
    log = tmp_path / "scenario.log"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "ray_scenario.py")], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0"))
        try:
            code = proc.wait(timeout=SECONDS)
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # Ray's daemons and workers, if any are left
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    output = log.read_text()
    assert code == 0 and "\nray scenario: ok\n" in output, f"exit {code}:\n{output[-6000:]}"
