"""Envelope-aware early stopping (issue 15 part 3): a Ray Tune scheduler that stops a trial
whose cheap proxy certification, at a rung epoch, is dominated at every radius by the envelope
of the other trials of its own σ.

Trials of a sweep with a ``schedule:`` block (sweep.spec_blocks.EarlyStopping) certify their
current model after each rung epoch on a proxy subset of the test set (sweep.trial_worker) and
report ``proxy_rung`` (1 for the first rung) with ``proxy_cert_acc_<r>`` for every radius r of the
block. The rule (:func:`dominated`), judged within one σ only, never across σ (a large-σ trial
is worse than a small-σ one at r = 0 by design, and holds the high-radius end of the overall
envelope; ASHA on one scalar would prune exactly those): a trial is stopped at rung k when, at
every radius r its curve and a peer's share,

    own(r) + margin < max over the other same-σ trials that reported rung k of their acc(r)
                      (their envelope, common.envelope),

and at least ``min_trials`` same-σ trials (itself included) have reported rung k; k is the
latest of the trial's rungs that enough of its σ reported (newer evidence overrules older, and
a trial ahead of its peers is still judged where they can be compared). A trial is judged at
every training result from its first rung on, with the latest data of its peers; and when a
trial reports a rung, the other running trials of its σ are judged at once (a trial that
reached the rung first, alone, need not wait for its next result, which a fast trial may only
send after its training ended). The final certification's report is never judged. Radii where
the envelope is below ``margin`` can never dominate, so a trial that holds (nearly) the
envelope anywhere goes on.

What it decided is kept in the sweep folder's ``schedule.json`` (its format and its readers:
common.schedule_file), so the sweep driver marks the stopped trials STOPPED
(sweep.experiment.fit), staging skips them (sweep.staged_sweep), and a restored Tune experiment's
scheduler picks up where it left off: the scheduler keeps no state of its own beyond this
file (it is pickled with the Tuner without it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from smoothadv.common import layout
from smoothadv.common.envelope import best_by_radius, rank
from smoothadv.common.errors import UserError
from smoothadv.common.records import read_state
from smoothadv.common.schedule_file import read_schedule, stopped_entries
from smoothadv.sweep.param_space import KEY, name_of

PROXY_PREFIX = "proxy_cert_acc_"  # + radius ({r:g}): a rung's reported certified accuracy
RUNG_KEY = "proxy_rung"


def dominated(own: Mapping[float, float], others: Iterable[Mapping[float, float]],
              margin: float) -> bool:
    """Whether ``own`` (radius → certified accuracy) is below the envelope of ``others``
    (common.envelope.best_by_radius: the maximum over those that have the radius) by more than
    ``margin`` at every radius it shares with at least one of them; False with nothing to
    compare (no peer, no shared radius) and at a NaN (own, or the envelope's: all peers NaN)."""
    return below(own, best_by_radius(others), margin)


def below(own: Mapping[float, float], envelope: Mapping[float, float], margin: float) -> bool:
    """:func:`dominated` given the peers' ``envelope`` itself (radius → its value)."""
    shared = [r for r in own if r in envelope]
    return bool(shared) and all(own[r] + margin < envelope[r] for r in shared)


def _same_sigma(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def curve_of(result: Mapping[str, Any]) -> dict[float, float]:
    """The proxy curve a rung's result reports: radius → ``proxy_cert_acc_<radius>``."""
    return {float(k[len(PROXY_PREFIX):]): float(v) for k, v in result.items()
            if k.startswith(PROXY_PREFIX)}


def _keep_top_two(tops: dict[float, list[tuple[float, str]]], name: str,
                  curve: Mapping[float, float]) -> None:
    """Add trial ``name``'s ``curve`` to ``tops``, per radius the two best (accuracy, trial),
    ranked as common.envelope ranks values (NaN: no value, after every number)."""
    for r, a in curve.items():
        tops[r] = sorted([*tops.get(r, []), (a, name)], key=lambda t: rank(t[0]))[:2]


class Rungs:
    """The scheduler's bookkeeping, free of Ray: each trial's σ and proxy curve at each rung it
    reported, and the trials stopped with their reasons (the contents of schedule.json, as
    common.schedule_file.read_schedule checked it). Indexed by (σ, rung) with the two best
    accuracies at each radius, so a verdict costs O(radii) however many trials a σ has (the
    early-stopping replay judges a 440-trial grid thousands of times)."""

    def __init__(self, margin: float, min_trials: int,
                 record: Mapping[str, Any] | None = None):
        self.margin, self.min_trials = margin, min_trials
        record = record or {}
        self.trials: dict[str, dict[str, Any]] = {}
        self._groups: dict[tuple[float, int], dict[str, dict[float, float]]] = {}
        self._tops: dict[tuple[float, int], dict[float, list[tuple[float, str]]]] = {}
        for name, entry in (record.get("trials") or {}).items():
            for k, v in entry["rungs"].items():
                self.record(name, float(entry["sigma"]), int(k), int(v["epoch"]),
                            {float(r): float(a) for r, a in v["curve"].items()})
        self.stopped: dict[str, dict[str, Any]] = stopped_entries(record)

    def _sigma_key(self, sigma: float) -> float:
        """The σ its group is filed under: a recorded one equal up to rounding, else itself."""
        return next((s for s, _ in self._groups if _same_sigma(s, sigma)), float(sigma))

    def record(self, name: str, sigma: float, rung: int, epoch: int,
               curve: Mapping[float, float]) -> None:
        """Trial ``name`` (noise level ``sigma``) reported ``curve`` at rung ``rung``, after
        ``epoch`` epochs."""
        entry = self.trials.setdefault(name, {"sigma": float(sigma), "rungs": {}})
        entry["rungs"][int(rung)] = {"epoch": int(epoch), "curve": dict(curve)}
        key = (self._sigma_key(entry["sigma"]), int(rung))
        if name in self._groups.get(key, {}):
            self._leave(name, key)
        self._groups.setdefault(key, {})[name] = dict(curve)
        tops = self._tops.get(key)
        if tops is not None:
            _keep_top_two(tops, name, curve)

    def _leave(self, name: str, key: tuple[float, int]) -> None:
        self._groups.get(key, {}).pop(name, None)
        self._tops.pop(key, None)  # rebuilt when next asked

    def _best_two(self, key: tuple[float, int]) -> dict[float, list[tuple[float, str]]]:
        """Per radius, the two best (accuracy, trial) of the group ``key`` (σ, rung)."""
        if key not in self._tops:
            tops: dict[float, list[tuple[float, str]]] = {}
            for name, curve in self._groups.get(key, {}).items():
                _keep_top_two(tops, name, curve)
            self._tops[key] = tops
        return self._tops[key]

    def others_envelope(self, name: str, rung: int) -> dict[float, float]:
        """The envelope at ``rung`` of the other trials of ``name``'s σ that reported it, at
        the radii at least one of them has: common.envelope.best_by_radius of their curves,
        read off the index (the best other of the two best)."""
        key = (self._sigma_key(self.trials[name]["sigma"]), rung)
        return {r: next(a for a, other in best if other != name)
                for r, best in self._best_two(key).items()
                if any(other != name for _, other in best)}

    def verdict(self, name: str) -> str | None:
        """Why trial ``name`` is to stop (None: it goes on): its recorded reason once stopped;
        else dominated by its σ group's envelope at the latest of its rungs that at least
        ``min_trials`` of the group (itself included) reported."""
        if name in self.stopped:
            return self.stopped[name]["why"]
        decided = self._decide(name)
        return None if decided is None else decided[1]

    def _decide(self, name: str) -> tuple[int, str] | None:
        entry = self.trials.get(name)
        if entry is None:
            return None
        sigma = self._sigma_key(entry["sigma"])
        decidable = [k for k in sorted(entry["rungs"], reverse=True)
                     if len(self._groups.get((sigma, k), ())) >= self.min_trials]
        if not decidable:
            return None
        rung = decidable[0]
        own = entry["rungs"][rung]["curve"]
        env = self.others_envelope(name, rung)
        if not below(own, env, self.margin):
            return None
        detail = ", ".join(f"r={r:g}: {own[r]:.3f} < {env[r]:.3f}" for r in sorted(own)
                           if r in env)
        others = len(self._groups[(sigma, rung)]) - 1
        return rung, (f"dominated at rung {rung} (epoch {entry['rungs'][rung]['epoch']}) by "
                      f"σ={entry['sigma']:g}'s envelope by ≥ {self.margin:g} at every radius "
                      f"({detail}; {others} other trials)")

    def stop(self, name: str) -> str | None:
        """Record that ``name`` stops, when its :meth:`verdict` says so; returns the reason
        (None: it goes on)."""
        if name in self.stopped:
            return self.stopped[name]["why"]
        decided = self._decide(name)
        if decided is None:
            return None
        rung, why = decided
        self.stopped[name] = {"why": why, "rung": rung,
                              "epoch": self.trials[name]["rungs"][rung]["epoch"],
                              "at": time.time()}
        return why

    def to_dict(self) -> dict[str, Any]:
        return {"trials": {name: {"sigma": e["sigma"], "rungs": {
                    str(k): {"epoch": v["epoch"], "curve": {f"{r:g}": a
                                                            for r, a in v["curve"].items()}}
                    for k, v in sorted(e["rungs"].items())}}
                           for name, e in sorted(self.trials.items())},
                "stopped": dict(sorted(self.stopped.items()))}


def _name(trial) -> str:
    return name_of(trial.config) or trial.trial_id


def sigma_of(config: Mapping[str, Any]) -> float:
    """A Tune trial's σ: from the trial config its record holds (sweep.param_space)."""
    return float(config[KEY]["config"]["sigma"])


def training(trial, result: Mapping[str, Any] | None = None) -> bool:
    """Whether ``trial`` still trains after its latest result (``result``, else Tune's last):
    none yet, or an epoch's before its last. Stopping a trial that trained in full, or that
    certifies, saves nothing and would throw its final model away, so it is never judged."""
    if result is None:
        result = getattr(trial, "last_result", None) or {}
    if "epoch" not in result:
        return not result
    try:
        epochs = int(trial.config[KEY]["config"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return True
    return int(result["epoch"]) + 1 < epochs


class EnvelopeScheduler(FIFOScheduler):
    """Tune's FIFO scheduling (trials start in order) plus the envelope rule (module doc) on
    every training result; ``sweep_dir`` is the sweep's folder or URI (sweep.storage), where
    ``schedule.json`` is kept, ``settings`` the spec's block as recorded."""

    def __init__(self, sweep_dir: str, settings: Mapping[str, Any]):
        super().__init__()
        self.sweep_dir = str(sweep_dir)
        self.settings = dict(settings)
        self._rungs: Rungs | None = None
        self._folder = None

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Tuner: schedule.json is
        state = self.__dict__.copy()           # the state, read again after a restore
        state["_rungs"] = state["_folder"] = None
        return state

    def _book(self) -> Rungs:
        if self._rungs is None:
            from smoothadv.sweep.storage import open_sweep

            self._folder = open_sweep(self.sweep_dir)
            path = self._folder.local / layout.SCHEDULE
            self._folder.refresh(path)
            self._rungs = Rungs(self.settings["margin"], self.settings["min_trials"],
                                read_schedule(path))
        return self._rungs

    def _save(self) -> None:
        self._folder.write_json(self._folder.local / layout.SCHEDULE,
                                {"settings": self.settings, **self._rungs.to_dict()})

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        book = self._book()
        name = _name(trial)
        if RUNG_KEY in result:
            book.record(name, sigma_of(trial.config), int(result[RUNG_KEY]),
                        int(result["epoch"]) + 1, curve_of(result))
            self._save()
            self._judge_peers(tune_controller, trial)
        if training(trial, result):  # (not the last epoch's, nor certification's, report)
            self._judge(name)
        # Never Tune's STOP: it ends the trial's actor, and its Train run's workers would keep
        # their resources (their controller dies before freeing them). The decision is in
        # schedule.json, which the trial's workers read after each epoch: the run then ends
        # by itself (sweep.trial_worker.stopped_by_schedule).
        return TrialScheduler.CONTINUE

    def _judge(self, name: str) -> str | None:
        """The verdict on ``name``; a new stop is recorded, marked and said."""
        book = self._rungs
        known = name in book.stopped
        why = book.stop(name)
        if why is not None and not known:
            self._save()
            self._mark_stopped(name, why)
            print(f"{name}: stopped early, {why}", flush=True)
        return why

    def _judge_peers(self, tune_controller, trial) -> None:
        """After ``trial`` reported a rung: judge the other running trials of its σ that its
        curve (with the others') may now dominate (a stop is recorded for their workers)."""
        sigma = sigma_of(trial.config)
        for other in list(tune_controller.get_trials()):
            if other is trial or other.status != "RUNNING" or not training(other):
                continue
            try:
                if not _same_sigma(sigma_of(other.config), sigma):
                    continue
            except (KeyError, TypeError, ValueError):
                continue
            self._judge(_name(other))

    def _mark_stopped(self, name: str, why: str) -> None:
        """state.json says STOPPED at once (``sweep status`` while the sweep runs); the sweep
        driver records it again once Tune returns (sweep.trial_states.settle_after_fit)."""
        path = layout.trial_dir(self._folder.local, name) / layout.STATE
        write_stopped(self._folder, path, why)

    def debug_string(self) -> str:
        stopped = len(self._rungs.stopped) if self._rungs is not None else 0
        return f"Envelope early stopping per σ ({stopped} stopped)."


def write_stopped(folder, path: Path, why: str) -> None:
    """Record in the trial's state.json (``path``, in the SweepFolder ``folder``) that the
    scheduler stopped it, keeping its trial id and start time (a damaged record is replaced
    whole: what it said is not needed to say STOPPED)."""
    try:
        state = read_state(path) or {}
    except UserError:
        state = {}
    if state.get("state") == "STOPPED" and state.get("why") == why:
        return
    kept = {k: state[k] for k in ("trial_id", "started_at") if k in state}
    folder.write_json(path, {"state": "STOPPED", **kept, "why": why,
                             "ended_at": state.get("ended_at", time.time())})
