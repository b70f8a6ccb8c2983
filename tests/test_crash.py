"""Crash safety end to end (bench/crash.py, few rounds): editors against a server process that is
SIGKILLed at random moments or dies inside a commit; after each restart every acknowledged commit
reads its exact rows, no commit is partial, and fsck passes."""
import pytest

from bench.crash import CrashConfig, run


@pytest.mark.slow
def test_no_acknowledged_commit_is_lost_and_none_is_partial(tmp_path):
    config = CrashConfig(rounds=3, clients=3, vocab=64, kill_after=(0.1, 0.4), crash_points=((2, "commit:after-rows"),))
    totals = run(config, tmp_path)
    assert totals["rounds"] == 3 and totals["acked_commits"] > 0
    assert (totals["lost"], totals["partial"], totals["fsck_failures"]) == (0, 0, 0)
