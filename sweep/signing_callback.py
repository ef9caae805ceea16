"""The Tune callback through which a sweep driver signs Tune's restore point (sweep.trust)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback
from smoothadv.sweep import trust
from smoothadv.sweep.storage import SweepFolder


class TuneStateSigner(Callback):
    """A Tune callback that signs the experiment's files right after Tune saves them: Tune
    calls ``get_state`` of its callbacks just after writing its experiment and searcher
    state into the driver's staging folder and before uploading it to the sweep folder, so the
    upload lands already signed. Files written later (other callbacks' state) are signed at the
    start of the next step; ``tuner.pkl``, written when the Tuner is made, by the driver
    (sweep.trust.sign_tune_state). Holds no key (the key is read when signing, never pickled)."""

    def __init__(self, sweep: SweepFolder, tune_name: str) -> None:
        self.sweep = sweep
        self.tune_name = tune_name
        self._staging: str | None = None
        self._seen: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks into tuner.pkl
        return {"sweep": self.sweep, "tune_name": self.tune_name, "_staging": None,
                "_seen": {}}

    def _sign_staged(self) -> None:
        if self._staging is None:
            return
        folder = Path(self._staging)
        fresh = {}
        for path in folder.iterdir() if folder.is_dir() else []:
            if path.is_file() and path.name != trust.MARKER and not path.name.startswith("tmp-"):
                st = path.stat()
                if self._seen.get(path.name) != (st.st_mtime_ns, st.st_size):
                    fresh[path.name] = (st.st_mtime_ns, st.st_size)
        if not fresh:
            return
        signatures = trust.Signatures(self.sweep)
        for name in sorted(fresh):
            signatures.add(f"{self.tune_name}/{name}", (folder / name).read_bytes())
        signatures.save()
        self._seen.update(fresh)

    def _note_staging(self, trials) -> None:
        for trial in trials or ():
            storage = getattr(trial, "storage", None)
            if storage is not None:
                self._staging = storage.experiment_driver_staging_path
                return

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._note_staging(trials)
        self._sign_staged()

    def get_state(self) -> None:
        self._sign_staged()
        return None

    def on_experiment_end(self, trials, **info) -> None:
        self._sign_staged()
