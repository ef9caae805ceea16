"""Ray Tune sweeps over the paper's grid, and the ``smoothadv`` command line."""
