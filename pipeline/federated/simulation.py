"""Simulated federations for tests, benchmarks and demos: real data split across clients.

:func:`split_non_iid` gives each client mostly a few "home" classes, the label skew
federated-learning papers simulate (McMahan et al., AISTATS 2017, sort-and-shard MNIST):
client c's home classes are ``c, c + 1, ...`` (mod the number of classes); a ``home_share``
of every class goes to the clients whose home it is, the rest is spread evenly at random.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.federated.client import FederatedClient

__all__ = ["make_clients", "split_non_iid"]


def split_non_iid(
    y: ArrayLike,
    n_clients: int,
    *,
    classes_per_client: int = 2,
    home_share: float = 0.8,
    seed: int = 0,
) -> list[NDArray[np.intp]]:
    """Row indices of every client, label-skewed.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
    n_clients : int
    classes_per_client : int
        Home classes per client.
    home_share : float
        Fraction of each class that goes to its home clients (0 is IID).
    seed : int

    Returns
    -------
    list of ndarray
        ``n_clients`` disjoint, sorted index arrays that cover every row.
    """
    y_arr = np.asarray(y)
    if n_clients < 1 or not 0 <= home_share <= 1 or classes_per_client < 1:
        msg = (
            f"need n_clients >= 1, 0 <= home_share <= 1, classes_per_client >= 1; got "
            f"{n_clients}, {home_share}, {classes_per_client}"
        )
        raise InvalidInput(msg)
    rng = np.random.default_rng(seed)
    classes = np.unique(y_arr)
    parts: list[list[NDArray[np.intp]]] = [[] for _ in range(n_clients)]
    for j, label in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(y_arr == label))
        homes = [
            c
            for c in range(n_clients)
            if any((c + s) % classes.size == j for s in range(classes_per_client))
        ]
        n_home = int(round(home_share * rows.size)) if homes else 0
        for c, chunk in zip(homes, np.array_split(rows[:n_home], max(len(homes), 1)), strict=False):
            parts[c].append(chunk)
        rest = rows[n_home:]
        owners = rng.integers(0, n_clients, size=rest.size)
        for c in range(n_clients):
            parts[c].append(rest[owners == c])
    return [np.sort(np.concatenate(p)).astype(np.intp) for p in parts]


def make_clients(
    X: ArrayLike, y: ArrayLike, parts: list[NDArray[np.intp]], prefix: str = "client"
) -> dict[str, FederatedClient]:
    """One :class:`FederatedClient` per index array, ids ``f"{prefix}-{i}"``."""
    X_arr, y_arr = np.asarray(X), np.asarray(y)
    return {
        f"{prefix}-{i}": FederatedClient(f"{prefix}-{i}", X_arr[idx], y_arr[idx])
        for i, idx in enumerate(parts)
    }
