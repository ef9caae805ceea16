"""A trial's Train results reach Tune before its function returns (sweep.ray_private's
await_train_results_in_tune): Ray 2.60 otherwise deadlocks a trial whose Train run ends while
Tune's loop is busy, e.g. logging the previous result to a tracker. Seen as a sweep logging to
W&B that never ended. Reproduced here with Ray's own TuneReportCallback hand-over, in a real
Tune run whose result callback takes a second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

TRIAL = """
import sys, time
import ray
from ray import tune

class SlowResults(tune.Callback):  # a tracker's logging: Tune's loop is busy meanwhile
    def on_trial_result(self, iteration, trials, trial, result, **info):
        time.sleep(1)

def reports_then_returns(config):  # as trial_driver: Train's results, then fit() returns
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.train._internal.session import get_session
    from smoothadv.sweep.ray_private import await_train_results_in_tune
    handover = TuneReportCallback()
    for epoch in range(2):
        handover.after_report(None, [{"epoch": epoch}], None)
    assert get_session()._inter_actor_queue is not None  # the queue the wait watches
    await_train_results_in_tune()

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
grid = tune.Tuner(reports_then_returns, run_config=tune.RunConfig(
    storage_path=sys.argv[1], callbacks=[SlowResults()], verbose=0)).fit()
print("epochs", grid[0].metrics_dataframe["epoch"].tolist())
"""


def test_a_trial_ends_after_tune_took_its_last_train_result(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SMOOTHADV_FAULTS")}
    run = subprocess.Popen([sys.executable, "-c", TRIAL, str(tmp_path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its Ray ends with its process group
    try:
        out, err = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        raise AssertionError("the trial never ended: Tune's main thread is deadlocked") from None
    assert run.returncode == 0, err[-3000:]
    assert out.splitlines()[-1] == "epochs [0, 1]"
