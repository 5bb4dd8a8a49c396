"""Progress of long work a person waits for: a bar with rate and ETA on a terminal, and on
anything else (CI, logs, a launcher's pipe) a plain line every PLAIN_EVERY_S seconds and
at the end."""

import sys
import time

PLAIN_EVERY_S = 30.0


def progress(iterable, total: int, what: str):
    """Yields from ``iterable`` (``total`` items of ``what``) and reports how far it got."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=what, dynamic_ncols=True, leave=False)
        return
    start = last = time.time()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.time()
        if now - last >= PLAIN_EVERY_S and done < total:
            rate = done / (now - start)
            print(f"{what}: {done}/{total} ({rate:.3g}/s, {(total - done) / rate:.0f} s left)", flush=True)
            last = now
    if time.time() - start >= PLAIN_EVERY_S:
        print(f"{what}: {done}/{total} in {time.time() - start:.0f} s", flush=True)
