"""A sweep's console: one short line per event, instead of Ray Tune's progress tables.

By default a sweep runs Tune silent (``RunConfig(verbose=0)``, sweep.experiment) and
:class:`ConsoleReporter`, one of its callbacks, prints, each line stamped with the time:

- ``start NAME  key=value …`` when a trial starts: its gridded values (Tune's record of the
  trial, sweep.param_space); ``restart`` when it starts again after a failure;
- ``NAME  epoch E/N  loss …  acc …  noisy acc …`` for a reported epoch (with the proxy's
  certified accuracy at a rung of the schedule), at most one line every ``every_s`` seconds per
  trial: its last epoch and its rungs always;
- ``done  NAME  TERMINATED after …  acr …  cert …`` when it ends (its final certification),
  ``STOPPED`` when the schedule stopped it, ``ERROR`` with the error's first line (and where
  Tune keeps its traceback, which Tune no longer logs); ``retry`` when Tune restarts it after a
  failure;
- ``N running, N pending, …`` when nothing else was printed for ``quiet_s`` seconds.

``smoothadv sweep run --verbose`` gives Tune's own reporting back instead. Tune pickles its
callbacks into its restore point (``tune/tuner.pkl``): a reporter keeps only its settings there.
It never raises: a failed print (a closed terminal) must not fail the sweep.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune import Callback
from smoothadv.common import layout
from smoothadv.common.schedule_file import stopped_trials
from smoothadv.sweep.param_space import KEY

EVERY_S = 30.0  # at most one epoch line per trial this often (its last epoch and rungs always)
QUIET_S = 120.0  # after this long without a line, a line of counts
WIDTH = 220  # a line's most characters
STATUSES = ("RUNNING", "PENDING", "PAUSED", "TERMINATED", "ERROR")  # Tune's, in this order
# The last line of an exception in a traceback: ``module.Type: message``
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*")


def never_raises(hook: Callable) -> Callable:
    """A Tune callback hook whose failure is swallowed: the console never fails a sweep."""

    @functools.wraps(hook)
    def quiet(self, *args, **kwargs) -> None:
        with contextlib.suppress(Exception):  # a print or a format failing: nothing to do
            hook(self, *args, **kwargs)

    return quiet


class ConsoleReporter(Callback):
    """The sweep's compact console (module docstring). ``sweep_dir`` is the sweep folder (its
    local copy): a trial's state.json there says why it stopped or failed."""

    def __init__(self, sweep_dir: str, every_s: float = EVERY_S,
                 quiet_s: float = QUIET_S) -> None:
        self.sweep_dir = str(sweep_dir)
        self.every_s = every_s
        self.quiet_s = quiet_s
        self._reset()

    def _reset(self) -> None:
        self._started: dict[str, float] = {}  # trial id → when it started (monotonic)
        self._last_line: dict[str, float] = {}  # trial id → its last epoch line
        self._epoch: dict[str, int] = {}  # trial id → the last epoch it reported
        self._final: dict[str, Mapping[str, Any]] = {}  # trial id → its last non-epoch result
        self._printed = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks into tuner.pkl
        return {"sweep_dir": self.sweep_dir, "every_s": self.every_s, "quiet_s": self.quiet_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _print(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line if len(line) <= WIDTH else line[:WIDTH - 1] + "…", file=sys.stdout,
              flush=True)
        self._printed = time.monotonic()

    @never_raises
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        again = tid in self._started  # after a failure Tune retried (on_trial_recover)
        self._started.setdefault(tid, time.monotonic())
        self._epoch.pop(tid, None)
        self._final.pop(tid, None)
        gridded = "  ".join(f"{k}={_value(v)}" for k, v in gridded_values(trial.config).items())
        self._print(f"{'restart' if again else 'start'}  {name_of(trial)}  {gridded}".rstrip())

    @never_raises
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info) -> None:
        tid = trial.trial_id
        epoch = result.get("epoch")
        if not isinstance(epoch, int):  # the final certification (or attack) result
            self._final[tid] = result
            return
        if self._epoch.get(tid) == epoch:  # Tune's closing copy of the last result
            return
        self._epoch[tid] = epoch
        epochs = total_epochs(trial.config)
        now = time.monotonic()
        if (now - self._last_line.get(tid, -math.inf) < self.every_s
                and epoch + 1 != epochs and "proxy_rung" not in result):
            return
        self._last_line[tid] = now
        self._print(epoch_line(name_of(trial), result, epochs))

    @never_raises
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        stopped = self._stopped_why(trial)
        if stopped is not None:
            outcome = f"STOPPED{self._after(trial)}: {stopped}"
        else:
            final = final_metrics(self._final.get(trial.trial_id, {}))
            outcome = f"TERMINATED{self._after(trial)}  {final}"
        self._print(f"done  {name_of(trial)}  {outcome}".rstrip())
        self._forget(trial)

    @never_raises
    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        name = name_of(trial)
        self._print(f"done  {name}  ERROR{self._after(trial)}: {self._error(trial)}")
        self._forget(trial)
        where = getattr(trial, "path", None)  # Tune's folder of the trial in the sweep
        if isinstance(where, str):
            self._print(f"{name}: its traceback is in {where}/error.txt")

    @never_raises
    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        failures = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
        count = f" (failure {failures})" if isinstance(failures, int) else ""
        self._print(f"retry  {name_of(trial)}{count}: {self._error(trial)}")

    @never_raises
    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._printed < self.quiet_s:
            return
        counts = {status: 0 for status in STATUSES}
        certifying = 0  # running, past their last epoch
        for trial in trials or ():
            counts[str(trial.status)] = counts.get(str(trial.status), 0) + 1
            certifying += (trial.status == "RUNNING" and trial.trial_id in self._epoch
                           and self._epoch[trial.trial_id] + 1 == total_epochs(trial.config))
        if counts["RUNNING"] or counts["PENDING"]:
            shown = [f"{n} {status.lower()}" for status, n in counts.items() if n]
            if certifying:
                shown[0] += f" ({certifying} certifying)"
            self._print(", ".join(shown))

    def _after(self, trial) -> str:
        started = self._started.get(trial.trial_id)
        return "" if started is None else f" after {duration(time.monotonic() - started)}"

    def _forget(self, trial) -> None:
        for held in (self._started, self._last_line, self._epoch, self._final):
            held.pop(trial.trial_id, None)

    def _recorded(self, trial) -> dict[str, Any]:
        """The trial's state.json in the sweep folder ({} when unreadable or absent)."""
        try:
            path = layout.trial_dir(self.sweep_dir, name_of(trial)) / layout.STATE
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _stopped_why(self, trial) -> str | None:
        """Why the schedule stopped the trial (sweep.early_stopping: its state.json, else
        schedule.json); None when it did not."""
        recorded = self._recorded(trial)
        if recorded.get("state") == "STOPPED":
            return str(recorded.get("why") or "by the schedule")
        try:
            return stopped_trials(self.sweep_dir).get(name_of(trial))
        except Exception:  # no schedule, or one unreadable: not stopped as far as we know
            return None

    def _error(self, trial) -> str:
        """The error's first line: the trial driver's record of its root cause (state.json),
        else the last exception line of Tune's error file."""
        recorded = self._recorded(trial).get("error")
        if isinstance(recorded, str) and recorded:
            return recorded
        try:
            with open(trial.error_file) as f:
                text = f.read()
        except (OSError, TypeError, AttributeError):
            return "see `smoothadv sweep status`"
        return error_line(text)


def name_of(trial) -> str:
    """A Tune trial's name: its record's (sweep.param_space), else Tune's trial id."""
    config = getattr(trial, "config", None)
    entry = config.get(KEY) if isinstance(config, Mapping) else None
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return name if isinstance(name, str) else str(getattr(trial, "trial_id", trial))


def gridded_values(config: Any) -> dict[str, Any]:
    """The trial's gridded values as Tune holds them (its record less name and config), and
    its stage in a staged sweep."""
    if not isinstance(config, Mapping):
        return {}
    entry = config.get(KEY)
    values = {k: v for k, v in entry.items() if k not in ("name", "config")} \
        if isinstance(entry, Mapping) else {}
    return {**values, **({"stage": config["stage"]} if config.get("stage") else {})}


def total_epochs(config: Any) -> int | None:
    """The epochs the trial's config trains (None when its record does not say)."""
    entry = config.get(KEY) if isinstance(config, Mapping) else None
    inner = entry.get("config") if isinstance(entry, Mapping) else None
    epochs = inner.get("epochs") if isinstance(inner, Mapping) else None
    return epochs if isinstance(epochs, int) else None


def epoch_line(name: str, result: Mapping[str, Any], epochs: int | None) -> str:
    """One epoch's line: loss, accuracy (on the training batches, and noisy on the test
    subset), seconds, and the proxy's certified accuracy at a rung."""
    parts = [name, f"epoch {result['epoch'] + 1}" + (f"/{epochs}" if epochs else "")]
    for key, label, spec in (("train_loss", "loss", ".4g"), ("train_acc", "acc", ".3f"),
                             ("test_acc_noisy", "noisy acc", ".3f")):
        if _is_number(result.get(key)):
            parts.append(f"{label} {result[key]:{spec}}")
    if _is_number(result.get("epoch_seconds")):
        parts.append(duration(result["epoch_seconds"]))
    proxy = curve(result, "proxy_cert_acc_")
    if proxy:
        parts.append(f"proxy cert {proxy} (rung {result.get('proxy_rung')})")
    return "  ".join(parts)


def final_metrics(result: Mapping[str, Any]) -> str:
    """A trial's final result in short: ACR, certified accuracy at the reported radii
    (``0.375@0.25``: 0.375 at radius 0.25), empirical accuracy under attack at each ε."""
    parts = [f"acr {result['acr']:.3f}"] if _is_number(result.get("acr")) else []
    for prefix, label in (("cert_acc_", "cert"), ("attack_acc_", "attack")):
        points = curve(result, prefix)
        if points:
            parts.append(f"{label} {points}")
    return "  ".join(parts)


def curve(result: Mapping[str, Any], prefix: str) -> str:
    """The metrics ``<prefix><x>`` of a result as ``value@x …``, by increasing x."""
    points = []
    for key, value in result.items():
        if isinstance(key, str) and key.startswith(prefix) and _is_number(value):
            try:
                points.append((float(key[len(prefix):]), value))
            except ValueError:
                continue
    return " ".join(f"{value:.3f}@{x:g}" for x, value in sorted(points))


def error_line(text: str) -> str:
    """The most telling line of an error's text (Tune's error file: a header, a traceback):
    its last exception line, else its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    telling = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (telling or lines or ["(no error text)"])[-1]


def duration(seconds: float) -> str:
    """``42 s``, ``3m05s``, ``2h03m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
