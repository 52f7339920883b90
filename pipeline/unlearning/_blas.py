"""One BLAS thread for the small, latency-bound products of an update.

An update's products are ``O(d^2)`` matrix-vector products and ``O(m d^2)`` rank-m
updates: a fraction of a millisecond to a few milliseconds each, where handing work to a
second BLAS thread costs more than it saves, and far more when another process holds the
second core (measured on the 2-core benchmark machine under load: a 784 x 784
matrix-vector product took 0.12 ms on one thread, 2 ms median on two). The passes over the
records (``O(n d)``, memory-bound) and the recomputation of the curvature (``O(n d^2)``)
keep the library's default thread count.

``threadpoolctl`` ships with scikit-learn (one of its requirements); the controller is
built on first use, after SciPy's LAPACK (and its BLAS) has been loaded.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from threadpoolctl import ThreadpoolController

__all__ = ["single_thread"]

_controller: ThreadpoolController | None = None


def single_thread() -> AbstractContextManager[Any]:
    """Context manager limiting every loaded BLAS to one thread (about 10 us to enter)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
