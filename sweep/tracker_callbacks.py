"""Ray Tune's own MLflow and W&B logger callbacks, adjusted for sweeps (built by sweep.trackers).

Imports Ray: kept apart from sweep.trackers so that the command line stays quick to start.
Tune pickles these callbacks into its restore point (``tune/tuner.pkl``), so they live at
module level.
"""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

TRIAL_ID_TAG = "ray_trial_id"


class SweepMLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow logger (one MLflow run per Tune trial, written from the sweep driver), with:

    - params: the trial's record as Tune holds it (sweep.param_space), flattened by Ray:
      ``trial/name``, each gridded value as ``trial/<key>`` (a key its grid part does not set
      is absent) and its full config as ``trial/config/<key>``;
    - metrics: each result but Tune's copy of the config (already the params);
    - a trial resumed by ``sweep resume`` (same Tune trial id) goes on in its earlier MLflow
      run instead of opening a second one (``--restart-errored`` keeps trial ids too: a
      restarted trial goes on in its run);
    - ``artifact_location``: where a newly created experiment keeps artifacts (none are logged
      by the sweep; without it MLflow picks ./mlruns under the current directory).
    """

    def __init__(self, tracking_uri: str, *, experiment_name: str,
                 artifact_location: str | None = None):
        super().__init__(tracking_uri, experiment_name=experiment_name)
        self.artifact_location = artifact_location

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri,
                                      experiment_name=self.experiment_name,
                                      artifact_location=self.artifact_location)
        self.tags = dict(self.tags or {})
        self._trial_runs = {}

    def _earlier_run(self, trial_id: str) -> str | None:
        client = self.mlflow_util._get_client()
        runs = client.search_runs([self.mlflow_util.experiment_id],
                                  filter_string=f"tags.{TRIAL_ID_TAG} = '{trial_id}'",
                                  max_results=1)
        if not runs:
            return None
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id

    def log_trial_start(self, trial) -> None:
        if trial not in self._trial_runs:
            run_id = self._earlier_run(trial.trial_id)
            if run_id is None:
                tags = {**self.tags, "trial_name": str(trial), TRIAL_ID_TAG: trial.trial_id}
                run_id = self.mlflow_util.start_run(run_name=str(trial), tags=tags).info.run_id
            self._trial_runs[trial] = run_id
        params = {k: v for k, v in trial.config.items() if v is not None}
        self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        result = {k: v for k, v in result.items() if k not in ("config", "done")}
        super().log_trial_result(iteration, trial, result)


class SweepWandbCallback(WandbLoggerCallback):
    """Ray's W&B logger (one W&B run per Tune trial, written by a small Ray actor on the
    driver's node). Offline, W&B needs no API key, but Ray asks for one unless WANDB_MODE
    says offline: say so while Ray sets up."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        mode = self.kwargs.get("mode")
        if mode not in ("offline", "disabled") or "WANDB_MODE" in os.environ:
            super().setup(*args, **kwargs)
            return
        os.environ["WANDB_MODE"] = mode
        try:
            super().setup(*args, **kwargs)
        finally:
            del os.environ["WANDB_MODE"]
