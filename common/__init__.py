"""The ground floor: what every other package may use, importing neither torch nor Ray.

- ``common.errors``: :class:`UserError`, the one exception type for bad input.
- ``common.atomic``: atomic file replacement.
- ``common.layout``: the sweep folder's layout, every file name a sweep or a trial writes, and
  the small JSON helpers that read and write its records.
- ``common.provenance``: the versions recorded beside results.

``trainers``, ``certify``, ``sweep`` and ``analysis`` build on it; it imports none of them.
"""
