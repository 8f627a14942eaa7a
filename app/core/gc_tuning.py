"""Python's cyclic garbage collector, tuned for a long-running server (issue 14).

Under load the default thresholds (700, 10, 10) run a full collection about once a second;
each walks every object the process holds (ORM mappers, routes, pydantic schemas: ~150 ms)
and frees almost nothing, and that pause is the whole latency tail. Two changes:

* `gc.freeze()` once startup is done moves everything alive then (imports, app, services) to
  the permanent generation: collections never walk it again. In a Celery prefork parent it
  also keeps those pages shared with the children (no copy-on-write from GC headers).
* higher thresholds: request garbage is mostly acyclic and freed by reference counting, so
  young collections can be rarer without memory growing.

Both are settings (GC_*); GC_FREEZE_AFTER_STARTUP=false and GC_THRESHOLD_GEN0=700,
GC_THRESHOLD_GEN1=10, GC_THRESHOLD_GEN2=10 give CPython's defaults back.
"""

import gc
import logging

from app.core.config import Settings

logger = logging.getLogger("app")


def apply_thresholds(settings: Settings) -> None:
    gc.set_threshold(settings.gc_threshold_gen0, settings.gc_threshold_gen1,
                     settings.gc_threshold_gen2)  # fmt: skip


def freeze_after_startup(settings: Settings) -> None:
    """Call when the process has imported and built everything it keeps. One collection
    first, so the garbage of startup itself is freed rather than frozen."""
    apply_thresholds(settings)
    if not settings.gc_freeze_after_startup:
        return
    gc.collect()
    gc.freeze()
    logger.debug("gc: %d objects frozen after startup", gc.get_freeze_count())
