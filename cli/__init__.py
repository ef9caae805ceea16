"""The ``smoothadv`` command line, one module per verb group: :mod:`cli.smoothing` (certify,
predict, attack), :mod:`cli.training` (train, pseudo-label), :mod:`cli.analyze` and
:mod:`cli.sweep` (the ``sweep`` verbs); :mod:`cli.main` builds the parser from their
``add_parsers`` and reports errors as one line; :mod:`cli.shared` holds what they share: the
help formatter (every option's default, the examples of each verb's epilog), ``-o/--out``.
Each verb's work lives in trainers/, certify/, sweep/ or analysis/; these modules only parse
arguments and print a summary."""
