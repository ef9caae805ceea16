"""The ground floor: what every other package may use, importing neither torch nor Ray.

- ``common.errors``: :class:`UserError`, the one exception type for bad input.
- ``common.atomic``: atomic file replacement.
- ``common.layout``: the sweep folder's layout, every file name a sweep or a trial writes, and
  the small JSON helpers that read and write its records.
- ``common.provenance``: the versions recorded beside results.
- ``common.envelope``: the upper envelope of certified-accuracy curves and its one tie rule.
- ``common.binomial``: the Clopper–Pearson bounds (CERTIFY's pA_lower, staged certification).

``trainers``, ``certify``, ``sweep`` and ``analysis`` build on it; it imports none of them.
"""
