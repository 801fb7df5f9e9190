"""The ``sklearn-musc`` command line, one module per job.

* :mod:`~sklearn_musc.cli.command`: the parser, the dispatch to a run and the
  exit status of each error (:func:`main` is the ``sklearn-musc`` entry point);
* :mod:`~sklearn_musc.cli.options`: option types and checks, and the input
  images the options name;
* :mod:`~sklearn_musc.cli.inputs`: walking input folders, pairing rgb
  images with their point clouds, and checking that each file can be read;
* :mod:`~sklearn_musc.cli.run`: loading the backbone (offline when the hub
  cannot be reached), the batch and new-image runs, saving and loading models;
* :mod:`~sklearn_musc.cli.demo`: ``sklearn-musc demo``;
* :mod:`~sklearn_musc.cli.outputs` and :mod:`~sklearn_musc.cli.report`: the
  files of a run, written atomically, and its HTML report;
* :mod:`~sklearn_musc.cli.errors`: one error type per exit status.
"""

from .command import build_parser, main

__all__ = ["build_parser", "main"]
