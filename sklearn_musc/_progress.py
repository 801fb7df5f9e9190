"""Progress bars of the long stages: one look for all of them (tqdm, with the time left).

Each estimator's ``progress`` parameter turns its bars on or off; a bar
counts the stage's units of work (images, pairs of images compared), so
tqdm's estimate of the time left is the stage's own. A bar appears once its
stage has run for ``DELAY`` seconds: short stages stay quiet.
"""

DELAY = 1.0


def progress_bar(total, desc, enabled, unit="it"):
    """A tqdm bar over ``total`` units, writing nothing when not ``enabled``.

    Use it as a context manager; ``update(n)`` advances it (a no-op when
    disabled, so the loops call it unconditionally).
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, delay=DELAY, dynamic_ncols=True)
