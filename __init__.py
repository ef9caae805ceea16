"""smoothadv: train, certify and compare provably robust smoothed classifiers (SmoothAdv,
Salman et al. 2019) at scale with Ray.

One namespace over the repository's folders (pyproject's package-dir maps ``smoothadv`` to the
repository's root), in layers that import one way only (tests/test_layering.py):

- ``smoothadv.common``: the ground floor (records, errors, envelope, binomial bounds), no torch;
- ``smoothadv.trainers``: models, datasets and the training loop (SmoothAdv, Pseudocode 1);
- ``smoothadv.certify``: Cohen et al.'s CERTIFY and PREDICT, the SmoothAdv attack;
- ``smoothadv.sweep``: the grid on Ray Tune and Ray Train, its lifecycle and storage;
- ``smoothadv.analysis``: envelopes, figures and tables, from files only;
- ``smoothadv.cli``: the ``smoothadv`` command line.
"""
