"""Ray Tune sweeps over the paper's grid, and the ``smoothadv`` command line.

For Ray users: :func:`result_grid` (sweep.results) returns a sweep's Tune ``ResultGrid``
(``result_grid("sweeps/NAME").get_dataframe()``), without Ray running.
"""

__all__ = ["result_grid"]


def __getattr__(name: str):
    # loaded on first use: importing any smoothadv.sweep module (a trial's worker does) stays
    # as light as before
    if name == "result_grid":
        from smoothadv.sweep.results import result_grid

        return result_grid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
