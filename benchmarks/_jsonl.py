"""One home for the benchmarks' JSON lines (standard library only: cheap to import)."""

import json


def append_json(path, record):
    """Append ``record`` to ``path`` as one JSON line, flushed at once: a run cut off later keeps it.

    ``path=None`` writes nothing.
    """
    if path is None:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
