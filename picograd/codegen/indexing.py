"""Index arithmetic for fused loops: movement ops become integer expressions, never copies. Backend-neutral.

A loop over a domain of shape S has one variable per axis. Every node inside the loop is evaluated at an
index of its own shape: a tuple of `Ix`, integer expressions over the loop variables, plus the validity
conditions collected from `pad` ops on the way (outside them the value is 0). Moving through a movement op
maps an index of its output to an index of its source:

    permute: reorder          expand: broadcast axes read index 0          slice: start + step*i
    pad: (i - start) / step, valid only inside the slice      reshape: regroup through the flat index

`Ix` stays affine (sum of coef*var + const) whenever it can, because affine indices let a renderer merge
adjacent loop axes into one contiguous loop (`collapse`), and render to plain `i0*784 + i1` text; anything
else (a split through // and %) is kept as opaque text over the original variable names `i{axis}`. The text
is Python syntax, valid in Numba CPU and numba.cuda code alike."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.node import Node


@dataclass(frozen=True)
class Ix:
    """coefs[d] * i_d summed + const (affine), or `text` (opaque) reading the loop axes in `dims`."""

    coefs: tuple[int, ...] = ()
    const: int = 0
    text: str | None = None
    dims: frozenset = frozenset()

    @property
    def affine(self) -> bool:
        return self.text is None

    def used(self) -> frozenset:
        """Loop axes this index depends on."""
        if self.text is not None:
            return self.dims
        return frozenset(d for d, c in enumerate(self.coefs) if c)

    def render(self, names: dict[int, tuple[str, int]] | None = None) -> str:
        """Python text. names maps an axis to (variable, coefficient scale) after loop collapsing
        (default: axis d is variable i{d})."""
        if self.text is not None:
            return self.text
        terms = []
        for d, c in enumerate(self.coefs):
            if not c:
                continue
            if names is None:
                var, c2 = f"i{d}", c
            else:
                var, div = names[d]
                if var is None:
                    continue  # folded into its group's variable
                c2 = c // div
            terms.append(var if c2 == 1 else f"{var} * {c2}")
        if self.const or not terms:
            terms.append(str(self.const))
        return " + ".join(terms).replace("+ -", "- ")


def var(d: int, ndim: int, size: int) -> Ix:
    if size == 1:
        return Ix((0,) * ndim, 0)  # a size-1 axis only ever has index 0
    return Ix(tuple(1 if k == d else 0 for k in range(ndim)), 0)


def const(c: int, ndim: int) -> Ix:
    return Ix((0,) * ndim, c)


def _opaque(text: str, *parts: Ix) -> Ix:
    dims = frozenset().union(*(p.used() for p in parts))
    return Ix(text=text, dims=dims)


def add(a: Ix, b: Ix) -> Ix:
    if a.affine and b.affine:
        return Ix(tuple(x + y for x, y in zip(a.coefs, b.coefs, strict=True)), a.const + b.const)
    return _opaque(f"({a.render()} + {b.render()})", a, b)


def scale(a: Ix, c: int) -> Ix:
    if a.affine:
        return Ix(tuple(x * c for x in a.coefs), a.const * c)
    return _opaque(f"({a.render()}) * {c}", a)


def offset(a: Ix, c: int) -> Ix:
    if a.affine:
        return Ix(a.coefs, a.const + c)
    return _opaque(f"({a.render()} + {c})", a) if c else a


def bounds(a: Ix, sizes: tuple[int, ...]) -> tuple[int, int] | None:
    """Smallest and largest value over the domain (None for opaque indices)."""
    if not a.affine:
        return None
    lo = hi = a.const
    for c, s in zip(a.coefs, sizes, strict=True):
        if c > 0:
            hi += c * (s - 1)
        else:
            lo += c * (s - 1)
    return lo, hi


def divmod_(a: Ix, d: int, sizes: tuple[int, ...], need_mod: bool = True) -> tuple[Ix, Ix]:
    """(a // d, a % d) for a >= 0, kept affine when the terms split cleanly: those with coefficients
    divisible by d go to the quotient, and the rest must stay within [0, d)."""
    if d == 1:
        return a, const(0, len(sizes))
    if a.affine:
        q = tuple(c // d if c % d == 0 else 0 for c in a.coefs)
        r = tuple(0 if c % d == 0 else c for c in a.coefs)
        rest = Ix(r, a.const % d)
        b = bounds(rest, sizes)
        if b is not None and 0 <= b[0] and b[1] < d:
            return Ix(q, a.const // d), rest
    t = a.render()
    return _opaque(f"(({t}) // {d})", a), _opaque(f"(({t}) % {d})", a)


@dataclass(frozen=True)
class Cond:
    """Valid when `lo <= e <= hi` and `(e - lo) % step == 0` (a pad's window over its source)."""

    e: Ix
    lo: int
    hi: int
    step: int = 1

    def used(self) -> frozenset:
        return self.e.used()

    def render(self, names: dict[int, tuple[str, int]] | None = None) -> str:
        t = self.e.render(names)
        s = f"{self.lo} <= {t} <= {self.hi}" if self.lo != self.hi else f"{t} == {self.lo}"
        if self.step != 1:
            s += f" and ({t} - {self.lo}) % {self.step} == 0"
        return s


Index = tuple[tuple[Ix, ...], tuple[Cond, ...]]


def identity(shape: tuple[int, ...]) -> Index:
    n = len(shape)
    return tuple(var(d, n, s) for d, s in enumerate(shape)), ()


def move(n: Node, idx: tuple[Ix, ...], conds: tuple[Cond, ...], sizes: tuple[int, ...]) -> Index:
    """Map an index of movement node n's output to an index of its source (sizes: the loop domain)."""
    src = n.srcs[0]
    nd = len(sizes)
    op = n.op
    if op == "permute":
        out = [None] * len(idx)
        for d, o in enumerate(n.arg):
            out[o] = idx[d]
        return tuple(out), conds
    if op == "expand":
        return tuple(const(0, nd) if s == 1 and t != 1 else e for e, s, t in zip(idx, src.shape, n.shape,
                                                                                  strict=True)), conds
    if op == "slice":
        return tuple(offset(scale(e, step), start) for e, (start, _, step) in zip(idx, n.arg, strict=True)), conds
    if op == "pad":
        out, new = [], list(conds)
        for e, (start, _, step), m in zip(idx, n.arg[1], src.shape, strict=True):
            if m == 0:
                out.append(const(0, nd))
                new.append(Cond(const(0, nd), 1, 0))  # never valid
                continue
            first, last = (start, start + step * (m - 1)) if step > 0 else (start + step * (m - 1), start)
            b = bounds(e, sizes)
            if not (step in (1, -1) and b is not None and first <= b[0] and b[1] <= last):
                new.append(Cond(e, first, last, abs(step)))
            if step == 1:
                out.append(offset(e, -start))
            elif step == -1:
                out.append(offset(scale(e, -1), start))
            elif step > 0:
                out.append(divmod_(offset(e, -start), step, sizes)[0])
            else:
                out.append(divmod_(offset(scale(e, -1), start), -step, sizes)[0])
        return tuple(out), tuple(new)
    if op == "reshape":
        return reshape_index(idx, n.shape, src.shape, sizes), conds
    raise NotImplementedError(f"indexing: {op} is not a movement op")


def reshape_index(idx: tuple[Ix, ...], new: tuple[int, ...], old: tuple[int, ...],
                  sizes: tuple[int, ...]) -> tuple[Ix, ...]:
    """An index of `new` (a reshape of `old`) as an index of `old`, group by group: runs of axes with equal
    products map through their local flat index, so merges stay affine and only true splits divide."""
    nd = len(sizes)
    out: list[Ix] = [const(0, nd)] * len(old)
    if 0 in new or 0 in old:
        return tuple(out)  # an empty domain never runs
    ni = [i for i, s in enumerate(new) if s != 1]
    oi = [i for i, s in enumerate(old) if s != 1]
    a = b = 0
    while a < len(ni) or b < len(oi):
        ga, gb = [ni[a]], [oi[b]]
        pa, pb = new[ni[a]], old[oi[b]]
        a, b = a + 1, b + 1
        while pa != pb:
            if pa < pb:
                ga.append(ni[a])
                pa *= new[ni[a]]
                a += 1
            else:
                gb.append(oi[b])
                pb *= old[oi[b]]
                b += 1
        flat = const(0, nd)
        for i in ga:
            flat = add(scale(flat, new[i]), idx[i])
        rest = pb
        for k, i in enumerate(gb):
            rest //= old[i]
            if k == 0 and len(gb) == 1:
                out[i] = flat
            elif k == 0:
                out[i] = divmod_(flat, rest, sizes)[0]
            else:
                q = divmod_(flat, rest, sizes)[0] if rest > 1 else flat
                out[i] = divmod_(q, old[i], sizes)[1]
    return tuple(out)


def flat_index(idx: tuple[Ix, ...], shape: tuple[int, ...], nd: int) -> Ix:
    """The C-order flat offset of idx in an array of `shape` (nd: the number of loop axes)."""
    flat = None
    stride = 1
    for e, s in zip(reversed(idx), reversed(shape), strict=True):
        if s != 1:
            term = scale(e, stride) if stride != 1 else e
            flat = term if flat is None else add(term, flat)
        stride *= s
    return const(0, nd) if flat is None else flat


def collapse(sizes: tuple[int, ...], reduced: tuple[bool, ...], used: list[Ix],
             blocked: frozenset = frozenset()) -> list[tuple[int, ...]]:
    """Group adjacent loop axes into single loops where every index reads them as one flat run:
    axes d, d+1 merge when each affine index has coef[d] == coef[d+1] * sizes[d+1], no opaque index or
    condition reads them (blocked), and both are reduced or both kept. Size-1 axes are dropped.

    Returns the groups (tuples of original axes) in loop order."""
    live = [d for d, s in enumerate(sizes) if s != 1]
    groups: list[list[int]] = []
    for d in live:
        if groups:
            g = groups[-1]
            p = g[-1]
            if (reduced[p] == reduced[d] and p not in blocked and d not in blocked and p == d - 1
                    and all(ix.coefs[p] == ix.coefs[d] * sizes[d] for ix in used if ix.affine)):
                g.append(d)
                continue
        groups.append([d])
    return [tuple(g) for g in groups]


def group_names(groups: list[tuple[int, ...]], sizes: tuple[int, ...]) -> dict[int, tuple[str | None, int]]:
    """Axis -> (variable, divisor) for Ix.render after collapse: a group is one variable named after its first
    axis, carried by its last axis's coefficient; other axes of the group contribute nothing of their own."""
    names: dict[int, tuple[str | None, int]] = {d: (None, 1) for d in range(len(sizes))}
    for g in groups:
        names[g[-1]] = (f"i{g[0]}", 1)
    return names
