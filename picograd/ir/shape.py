"""Shape rules for broadcasting and movement. Every check raises at build time, naming the op."""

from __future__ import annotations

from collections.abc import Sequence


def broadcast_shapes(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{op}: shapes {a} and {b} cannot be broadcast together (axis -{i}: {x} vs {y})")
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def normalize_axes(op: str, axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not hasattr(a, "__index__"):
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}")
        a = int(a)
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimension(s)")
        a = a % ndim if ndim else 0
        if a in out:
            raise ValueError(f"{op}: axis {a} repeated in {axis}")
        out.append(a)
    # A 0-d tensor accepts axis 0 and -1, as torch's (softmax's too), but has no axis to reduce.
    return tuple(sorted(out)) if ndim else ()


def prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def resolve_reshape(op: str, old: tuple[int, ...], new: Sequence[int]) -> tuple[int, ...]:
    new = tuple(int(s) for s in new)
    if new.count(-1) > 1:
        raise ValueError(f"{op}: only one dimension can be -1, got {new}")
    if any(s < -1 for s in new):
        raise ValueError(f"{op}: negative dimension in {new}")
    if -1 in new:
        known = prod(s for s in new if s != -1)
        if known == 0 or prod(old) % known:
            raise ValueError(f"{op}: cannot reshape {old} ({prod(old)} elements) into {new}")
        new = tuple(prod(old) // known if s == -1 else s for s in new)
    if prod(new) != prod(old):
        raise ValueError(f"{op}: cannot reshape {old} ({prod(old)} elements) into {new} ({prod(new)} elements)")
    return new


def check_permute(op: str, shape: tuple[int, ...], order: Sequence[int]) -> tuple[int, ...]:
    order = tuple(o % len(shape) if -len(shape) <= o < len(shape) else o for o in order)
    if sorted(order) != list(range(len(shape))):
        raise ValueError(f"{op}: {tuple(order)} is not a permutation of the {len(shape)} axes of shape {shape}")
    return order


def check_expand(op: str, old: tuple[int, ...], new: tuple[int, ...]) -> None:
    if len(old) != len(new) or any(o != n and o != 1 for o, n in zip(old, new)):
        raise ValueError(f"{op}: cannot expand shape {old} to {new} (only size-1 axes can grow)")


def slice_shape(op: str, shape: tuple[int, ...], slices: Sequence[tuple[int, int, int]]) -> tuple[int, ...]:
    """slices: one normalized (start, stop, step) per axis, as produced by Python's slice.indices."""
    if len(slices) != len(shape):
        raise ValueError(f"{op}: {len(slices)} slices for a tensor of shape {shape}")
    return tuple(len(range(*s)) for s in slices)


def matmul_shape(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(a) != len(b) or len(a) not in (2, 3) or a[-1] != b[-2] or a[:-2] != b[:-2]:
        raise ValueError(
            f"{op}: shapes {a} and {b} are not aligned (expected (..., M, K) @ (..., K, N) with equal batch)"
        )
    return a[:-1] + (b[-1],)
