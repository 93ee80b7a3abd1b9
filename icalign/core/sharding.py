"""Placing a sweep's independent axis on every visible device.

A sweep here is a batch of independent computations stacked on a leading axis: training runs
(seeds, learning rates, noise levels), contexts, or variants. Nothing couples two entries of
that axis, so it can be split across devices with no communication at all. This module does
only the placement:

* :func:`sweep_mesh` builds a 1-D ``jax.sharding.Mesh`` with the axis name ``"sweep"`` over
  the largest number of devices that divides the sweep's length, so every device gets the
  same number of entries and nothing is padded (one device: a mesh of one, which changes
  nothing).
* :func:`shard_leading` ``device_put``-s every array of a pytree with
  ``NamedSharding(mesh, PartitionSpec("sweep"))``: its leading axis is split over the mesh.
  Scalars and arrays whose leading axis does not divide are replicated instead.

The compiled code itself is not changed. ``jit`` compiles for the shardings of its inputs
(GSPMD), and sharding propagates through ``vmap`` over the leading axis: each device runs the
whole sweep function on its own slice, and the outputs come back sharded the same way. Since
the entries are independent, the partitioner inserts no collective, and the same code runs
on one CPU, several GPUs or a TPU slice. To try it on a CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the CPU then shows up as 8 devices.

Several hosts (multi-controller JAX): run the same program on every host and call
``jax.distributed.initialize()`` first, before anything else touches JAX (on TPU pods and
SLURM clusters it takes no arguments; elsewhere give ``coordinator_address``,
``num_processes`` and ``process_id``). ``jax.devices()`` then lists the devices of all hosts,
:func:`sweep_mesh` spans them, and :func:`shard_leading` places the arrays across hosts: every
host passes the same full value (everything here is derived from explicit seeds, so it is)
and keeps only its own slice. :func:`to_host` brings a sharded result back as NumPy on every
host (an all-gather across hosts, a plain copy on one). Files should be written by one
process only (``jax.process_index() == 0``).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from icalign.core.validate import check_int

__all__ = ["AXIS", "sweep_mesh", "shard_leading", "shard_contexts", "to_host", "describe"]

AXIS = "sweep"


def sweep_mesh(n: int, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh (axis ``"sweep"``) for a sweep of ``n`` independent entries, over the
    largest number k of ``devices`` (default: ``jax.devices()``, all hosts') that divides n.
    The first k devices are used; k = 1 when n is prime to the device count."""
    n = check_int("n", n, minimum=1)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must list at least one device, got an empty sequence")
    # Largest divisor of n that is <= the device count: equal slices, no padding.
    k = max(d for d in range(1, min(n, len(devices)) + 1) if n % d == 0)
    return Mesh(np.array(devices[:k], dtype=object), (AXIS,))


def _is_array_leaf(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, numbers.Number)) and not isinstance(x, bool)


def shard_leading(tree, mesh: Mesh):
    """``tree`` with every array leaf placed on ``mesh``: the leading axis split over the
    ``"sweep"`` axis, or replicated when the leaf is a scalar or its leading axis is not a
    multiple of the mesh size. Non-array leaves are returned unchanged."""
    if not isinstance(mesh, Mesh) or AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis named {AXIS!r} "
                         f"(see sweep_mesh), got {mesh!r}")
    split = NamedSharding(mesh, PartitionSpec(AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    size = mesh.shape[AXIS]

    def place(x):
        if not _is_array_leaf(x):
            return x
        shape = np.shape(x)
        target = split if len(shape) >= 1 and shape[0] % size == 0 else replicated
        if not target.is_fully_addressable and isinstance(x, jax.Array) and x.is_fully_addressable:
            # Across hosts, device_put takes the same host value on every process and keeps
            # each process's slice; a local device array must come back to the host first.
            x = np.asarray(x)
        return jax.device_put(x, target)

    return jax.tree_util.tree_map(place, tree)


def shard_contexts(tree, n: int):
    """``tree`` (leading axis n on its arrays) spread over the devices, or unchanged on one
    device: a one-device placement would only give jit a new cache key (a second compile of
    the same program) and change nothing else."""
    mesh = sweep_mesh(n)
    return shard_leading(tree, mesh) if mesh.size > 1 else tree


def to_host(tree):
    """``tree`` with every JAX array copied into NumPy (whole arrays, on every process). On
    one host this is ``jax.device_get``; across hosts the slices are all-gathered first."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree_util.tree_map(get, tree)


def describe(mesh: Mesh) -> dict:
    """What a sweep ran on, for results files."""
    devices = list(mesh.devices.flat)
    return {
        "mesh_axis": AXIS,
        "devices": len(devices),
        "visible_devices": jax.device_count(),
        "platform": devices[0].platform,
        "device_kind": getattr(devices[0], "device_kind", str(devices[0])),
        "processes": len({d.process_index for d in devices}),
    }
