"""The Clebsch-Gordan descriptor: everything the CG block kernels need to know about a basis, as data.

A :class:`CGDescriptor` is built once per (basis, node irreps, ``l_sh``, conventions) by
:func:`cg_descriptor` (cached) and only *executed* by the backends.  All tables are numpy
arrays (int64 indices, float64 coefficients), flat and prefix-pointer indexed, so that the
same tables feed the torch reference, the numba kernels and the triton kernels.

Notation
--------
* Species ``0..S-1``; species ``s`` has shells ``species_shells[s] = (l_0, l_1, ...)`` and
  ``n_orb[s] = sum(2 l + 1)`` orbitals, shell by shell, ``m`` inside a shell in the *output*
  order (see conventions below).
* A *pair type* is an ordered species pair ``t = s_i * S + s_j`` (row species, column species).
* A *slot* ``s = (a, b, L)`` of pair type ``t``: a shell ``a`` of ``s_i``, a shell ``b`` of
  ``s_j`` and one coupled irrep ``L = |l_a - l_b| .. l_a + l_b`` of parity
  ``(-1)^(l_a + l_b)``.  Slots are ordered shell pair by shell pair (``a`` major, ``b``
  minor, like the block) and ``L`` ascending inside a shell pair.
* The *coupled-irreps vector* of a pair is the concatenation of its slots' ``2L + 1``
  components: its length is ``n_orb[s_i] * n_orb[s_j]``, the size of the block, so it is
  flat-packed on the same ``block_ptr`` as the blocks.  ``irreps_of_pair(s_i, s_j)`` gives it
  as an e3nn ``Irreps`` string.
* The *key* of an irrep is ``(L, parity)``; ``keys`` lists those that some slot needs.

Change of basis (``Q``)
-----------------------
With ``C^{l1 l2 L}`` = ``e3nn.o3.wigner_3j(l1, l2, L)`` (real, Frobenius norm 1, invariant
under ``D_l1 ⊗ D_l2 ⊗ D_L``) and ``U_l`` the orthogonal convention matrix of ``l`` (from
e3nn's real-harmonic order to the output order: ``v_out = U_l v_e3nn``; identity by default),
slot ``s = (a, b, L)`` contributes to the shell-pair sub-block of the block::

    B[row0_a + i, col0_b + j] += Q_s[i, j, M] * t[offset_s + M],
    Q_s = sqrt(2L + 1) * einsum("ia,jb,abM->ijM", U_{l_a}, U_{l_b}, C^{l_a l_b L})

The map from the coupled-irreps vector to the block is then orthogonal, so its inverse is its
transpose (``blocks_to_irreps``).  A block transforms as ``D'_{l_a} B D'_{l_b}^T`` with
``D'_l = U_l D_l U_l^T`` when ``t`` transforms with ``D_L``.  Only nonzero ``Q`` entries are
stored (``|Q| > 1e-13``), twice, as CSR matrices per pair type whose rows start at
``pair_entry_ptr[t]``: ``qb_*`` (rows = block entries ``i * n_cols + j``, columns ``qb_index`` =
coupled-irrep index) for irreps -> blocks and ``qi_*`` (rows = coupled irreps, columns = block
entries) for blocks -> irreps.  ``q_matrix(l_a, l_b, L)`` returns a dense ``Q``; shell pairs are
runs of slots (``shellpair_ptr`` per pair type, ``shellpair_slot_ptr`` per shell pair).

Transposition: ``C^{l_b l_a L}[j, i, M] = (-1)^(l_a + l_b + L) C^{l_a l_b L}[i, j, M]`` (checked
at build time), so the block of the reversed pair ``B^T`` has the coupled irreps
``t'[(b, a, L)] = slot_sign[s] * t[(a, b, L)]`` with ``slot_sign = (-1)^(l_a + l_b - L)``
(``slot_transpose[s]`` is the index of ``(b, a, L)`` in pair type ``(s_j, s_i)``).

Edge tensor product (``path_*``, ``cg_*`` tables)
------------------------------------------------
Node features have irreps ``node_irreps = ((l, parity), ...)`` (each with the same number of
channels ``C``), stored channel-wise: ``x[n, c, node_offset[q] + m]`` (``K = sum(2l + 1)``
components per channel).  Spherical harmonics ``Y[e, l2**2 + m2]`` for ``l2 = 0..l_sh``.
A *path* ``p = (side, q, l2, L)`` couples the node irrep ``q`` of the row atom (side 0) or of
the column atom (side 1) with ``Y_{l2}`` into ``L``, for every key ``(L, p_q (-1)^l2)`` in
``keys``.  Side-0 paths come first, side-1 paths repeat them in the same order
(``path_swap`` pairs them).  Its coefficients are ``cg_val = sqrt(2L + 1) C^{l1 l2 L}[m1, m2, M]``
(nonzeros only, rows ``cg_ptr[p]`` .. ``cg_ptr[p + 1]``; ``cg_m2`` indexes ``Y`` directly).  Paths of
one key, in path order, are ``key_path[key_path_ptr[k]:key_path_ptr[k + 1]]`` (``path_rank`` is a
path's position there: side-0 paths take the first half); kernels lay the tensor products out
key-major, ``key_tp_ptr[k] + M * n_key_paths + rank`` rows of ``C`` channels.
``ptk_slot[ptk_ptr[t * n_keys + k]:ptk_ptr[t * n_keys + k + 1]]`` are the slots of pair type ``t``
with key ``k``.

Channel mixing (``mix_*`` tables)
---------------------------------
The weights ``W`` of :func:`hforge.ops.cg_blocks.edge_blocks` are a ``(n_mix, C)`` matrix: slot
``s`` owns rows ``mix_ptr[s] + r`` for ``r = 0 .. len(key_paths(key_s)) - 1``, row ``r`` going with
path ``key_path[key_path_ptr[key_s] + r]``.  Rows run over pair types, then slots, then paths,
so that each ordered species pair has its own weights.  ``mix_partner`` / ``mix_sign`` give the
row and sign of the same coefficient in the reversed pair ``(b, a, L)`` with swapped sides
(``sign = slot_sign * (-1)^l2``), which makes the ``symmetric`` mode a linear map of ``W``.

Onsite mixing (``onsite_*`` tables)
-----------------------------------
Onsite weights are a ``(n_onsite, C)`` matrix: slot ``s`` of a diagonal pair type ``(s, s)``
owns rows ``onsite_ptr[s] .. onsite_ptr[s + 1]``, one per node irrep ``onsite_node[row]`` of
the slot's key (slots whose key no node irrep has get none, hence zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

import numpy as np

from hforge.errors import InputError

__all__ = ["CGDescriptor", "cg_descriptor", "parse_node_irreps", "wigner_3j"]

_ZERO = 1e-13
MAX_L = 4  # largest shell / node / Y degree accepted (tested up to 3 for shells)


@cache
def wigner_3j(l1: int, l2: int, l3: int) -> np.ndarray:
    """e3nn's real Wigner 3j symbol ``(2l1+1, 2l2+1, 2l3+1)``, float64, read-only."""
    import torch

    from hforge._compat import import_e3nn

    import_e3nn()  # before e3nn's first import (hforge/_compat.py)
    from e3nn import o3

    c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy().copy()
    c[np.abs(c) < _ZERO] = 0.0
    c.setflags(write=False)
    return c


def _parity_char(p: int) -> str:
    return "e" if p == 1 else "o"


def parse_node_irreps(node_irreps: Any) -> tuple[tuple[tuple[int, int], ...], int | None]:
    """Node irreps as ``((l, parity), ...)`` plus their common multiplicity (``None`` if not given).

    Accepts an e3nn ``Irreps`` or its string (``"32x0e+32x1o+32x2e"`` or ``"0e+1o+2e"``), or a
    sequence of ``(l, parity)`` pairs.  Every irrep must have the same multiplicity (the channels).
    """
    if isinstance(node_irreps, str) or type(node_irreps).__name__ == "Irreps":
        from hforge._compat import import_e3nn

        import_e3nn()
        from e3nn import o3

        irreps = o3.Irreps(node_irreps)
        muls = {mul for mul, _ in irreps}
        if len(muls) > 1:
            raise InputError(f"node irreps {irreps}: every irrep needs the same multiplicity (channels)")
        spec = tuple((ir.l, ir.p) for _, ir in irreps)
        explicit = isinstance(node_irreps, str) and "x" in node_irreps
        channels = muls.pop() if muls and (explicit or not isinstance(node_irreps, str)) else None
    else:
        spec = tuple((int(l), int(p)) for l, p in node_irreps)
        channels = None
    for l, p in spec:
        if not 0 <= l <= MAX_L or p not in (-1, 1):
            raise InputError(f"node irrep ({l}, {p}): need 0 <= l <= {MAX_L} and parity +1 or -1")
    return spec, channels


def _check_convention(l: int, u: Any) -> np.ndarray:
    u = np.array(u, dtype=np.float64)
    n = 2 * l + 1
    if u.shape != (n, n):
        raise InputError(f"convention matrix of l={l}: shape {u.shape}, expected ({n}, {n})")
    if not np.allclose(u @ u.T, np.eye(n), atol=1e-10):
        raise InputError(f"convention matrix of l={l} is not orthogonal")
    u.setflags(write=False)
    return u


def _ptr(counts: Sequence[int]) -> np.ndarray:
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=ptr[1:])
    return ptr


def _i64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _f64(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


class CGDescriptor:
    """CG tables of a basis (see the module docstring for every table's meaning).

    Build it with :func:`cg_descriptor` (cached).  Public attributes are read-only numpy arrays;
    :meth:`tables` returns them as torch tensors on a device (cached per device and dtype).
    """

    def __init__(
        self,
        species_shells: tuple[tuple[int, ...], ...],
        node_irreps: tuple[tuple[int, int], ...],
        l_sh: int | None,
        conventions: tuple[np.ndarray, ...],
    ) -> None:
        self.species_shells = species_shells
        self.node_irreps = node_irreps
        self.l_sh = l_sh
        self.conventions = conventions  # U_l for l = 0 .. max_l
        self._device_tables: dict[tuple[str, Any], dict[str, Any]] = {}
        self._build_species()
        self._build_slots()
        self._build_paths()
        self._build_onsite()
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    # ----------------------------------------------------------------- species and pair types
    def _build_species(self) -> None:
        shells = self.species_shells
        self.n_species = len(shells)
        self.n_orb = _i64([sum(2 * l + 1 for l in ls) for ls in shells])
        s = self.n_species
        self.n_pair_types = s * s
        self.pair_n_rows = _i64([self.n_orb[t // s] for t in range(s * s)])
        self.pair_n_cols = _i64([self.n_orb[t % s] for t in range(s * s)])
        self.pair_block_size = self.pair_n_rows * self.pair_n_cols

    # ----------------------------------------------------------------- slots and Q
    def _build_slots(self) -> None:
        s_count = self.n_species
        keys: set[tuple[int, int]] = set()
        slots = []  # (t, la, lb, L, row0, col0, n_cols, a, b)
        slot_count = []
        for t in range(self.n_pair_types):
            si, sj = divmod(t, s_count)
            li, lj = self.species_shells[si], self.species_shells[sj]
            n = 0
            for a, la in enumerate(li):
                for b, lb in enumerate(lj):
                    for L in range(abs(la - lb), la + lb + 1):
                        row0 = sum(2 * k + 1 for k in li[:a])
                        col0 = sum(2 * k + 1 for k in lj[:b])
                        slots.append((t, la, lb, L, row0, col0, int(self.n_orb[sj]), a, b))
                        keys.add((L, (-1) ** (la + lb)))
                        n += 1
            slot_count.append(n)
        self.keys = tuple(sorted(keys, key=lambda k: (k[0], -k[1])))
        key_index = {k: i for i, k in enumerate(self.keys)}
        self.n_keys = len(self.keys)
        self.key_L = _i64([k[0] for k in self.keys])
        self.key_parity = _i64([k[1] for k in self.keys])
        self.slot_ptr = _ptr(slot_count)
        self.n_slots = len(slots)
        self.slot_pair_type = _i64([sl[0] for sl in slots])
        self.slot_la = _i64([sl[1] for sl in slots])
        self.slot_lb = _i64([sl[2] for sl in slots])
        self.slot_L = _i64([sl[3] for sl in slots])
        self.slot_row0 = _i64([sl[4] for sl in slots])
        self.slot_col0 = _i64([sl[5] for sl in slots])
        self.slot_key = _i64([key_index[(sl[3], (-1) ** (sl[1] + sl[2]))] for sl in slots])
        self.slot_sign = _f64([(-1) ** (sl[1] + sl[2] - sl[3]) for sl in slots])
        offsets = []
        for t in range(self.n_pair_types):
            running = 0
            for k in range(self.slot_ptr[t], self.slot_ptr[t + 1]):
                offsets.append(running)
                running += 2 * slots[k][3] + 1
            assert running == self.pair_block_size[t]
        self.slot_offset = _i64(offsets)
        # the slot (b, a, L) of the reversed pair type
        index = {(sl[0], sl[7], sl[8], sl[3]): k for k, sl in enumerate(slots)}
        self.slot_transpose = _i64(
            [index[((sl[0] % s_count) * s_count + sl[0] // s_count, sl[8], sl[7], sl[3])] for sl in slots]
        )
        # shell pairs: consecutive runs of slots with the same (a, b)
        sp_first = [k for k, sl in enumerate(slots) if k == 0 or slots[k - 1][0] != sl[0] or slots[k - 1][7:] != sl[7:]]
        self.shellpair_slot_ptr = _i64([*sp_first, self.n_slots])
        self.shellpair_ptr = _i64([int(np.searchsorted(sp_first, self.slot_ptr[t])) for t in range(self.n_pair_types + 1)])
        # sparse Q as two CSR matrices per pair type: rows = block entries, and rows = irreps
        entries = []  # (t, block index, irrep index, value)
        for k, (t, la, lb, L, row0, col0, n_cols, _a, _b) in enumerate(slots):
            q = self.q_matrix(la, lb, L)
            ii, jj, mm = np.nonzero(np.abs(q) > _ZERO)
            entries += zip([t] * len(ii), (row0 + ii) * n_cols + col0 + jj, self.slot_offset[k] + mm, q[ii, jj, mm])
        self.pair_entry_ptr = _ptr(self.pair_block_size)
        for name, column in (("qb", 1), ("qi", 2)):
            ordered = sorted(entries, key=lambda en: (en[0], en[column]))
            rows = [int(self.pair_entry_ptr[en[0]] + en[column]) for en in ordered]
            setattr(self, f"{name}_ptr", _ptr(np.bincount(rows, minlength=int(self.pair_entry_ptr[-1]))))
            setattr(self, f"{name}_index", _i64([en[3 - column] for en in ordered]))
            setattr(self, f"{name}_val", _f64([en[3] for en in ordered]))

    def convention(self, l: int) -> np.ndarray:
        """``U_l``: e3nn order -> output order (``v_out = U_l v_e3nn``)."""
        return self.conventions[l] if l < len(self.conventions) else np.eye(2 * l + 1)

    def q_matrix(self, la: int, lb: int, L: int) -> np.ndarray:
        """Dense ``Q = sqrt(2L+1) U_la C^{la lb L} U_lb^T`` of shape ``(2la+1, 2lb+1, 2L+1)``."""
        c = wigner_3j(la, lb, L)
        ct = wigner_3j(lb, la, L).transpose(1, 0, 2)
        if not np.allclose(ct, (-1) ** (la + lb + L) * c, atol=1e-12):
            raise AssertionError(f"wigner_3j transposition sign of ({la}, {lb}, {L}) differs from (-1)^(la+lb+L)")
        q = np.sqrt(2 * L + 1) * np.einsum("ia,jb,abM->ijM", self.convention(la), self.convention(lb), c)
        q[np.abs(q) < _ZERO] = 0.0
        return q

    # ----------------------------------------------------------------- edge paths and mixing
    def _build_paths(self) -> None:
        key_index = {k: i for i, k in enumerate(self.keys)}
        self.node_dim = sum(2 * l + 1 for l, _ in self.node_irreps)
        self.node_offset = _i64([sum(2 * l + 1 for l, _ in self.node_irreps[:q]) for q in range(len(self.node_irreps))])
        one_side = []  # (q, l1, l2, L, key)
        if self.l_sh is not None:
            for q, (l1, p1) in enumerate(self.node_irreps):
                for l2 in range(self.l_sh + 1):
                    for L in range(abs(l1 - l2), l1 + l2 + 1):
                        key = (L, p1 * (-1) ** l2)
                        if key in key_index:
                            one_side.append((q, l1, l2, L, key_index[key]))
        self.n_side_paths = len(one_side)
        paths = [(side, *p) for side in (0, 1) for p in one_side]
        self.n_paths = len(paths)
        self.n_sh = 0 if self.l_sh is None else (self.l_sh + 1) ** 2
        self.path_side = _i64([p[0] for p in paths])
        self.path_node_irrep = _i64([p[1] for p in paths])
        self.path_l1 = _i64([p[2] for p in paths])
        self.path_node_offset = _i64([self.node_offset[p[1]] for p in paths])
        self.path_l2 = _i64([p[3] for p in paths])
        self.path_L = _i64([p[4] for p in paths])
        self.path_key = _i64([p[5] for p in paths])
        n1 = self.n_side_paths
        self.path_swap = _i64([(k + n1) % (2 * n1) for k in range(2 * n1)]) if n1 else _i64([])
        cg_count, cg_m1, cg_m2, cg_M, cg_val = [], [], [], [], []
        for _side, _q, l1, l2, L, _key in paths:
            c = np.sqrt(2 * L + 1) * wigner_3j(l1, l2, L)
            a, b, m = np.nonzero(c)
            cg_count.append(len(a))
            cg_m1 += list(a)
            cg_m2 += list(l2 * l2 + b)
            cg_M += list(m)
            cg_val += list(c[a, b, m])
        self.cg_ptr = _ptr(cg_count)
        self.cg_m1, self.cg_m2, self.cg_M, self.cg_val = _i64(cg_m1), _i64(cg_m2), _i64(cg_M), _f64(cg_val)
        by_key = [[k for k in range(self.n_paths) if paths[k][5] == key] for key in range(self.n_keys)]
        self.key_path_ptr = _ptr([len(v) for v in by_key])
        self.key_path = _i64([k for v in by_key for k in v])
        rank = np.zeros(self.n_paths, dtype=np.int64)
        for v in by_key:
            rank[v] = np.arange(len(v))
        self.path_rank = rank
        n_key_paths = np.diff(self.key_path_ptr)
        self.key_tp_ptr = _ptr((2 * self.key_L + 1) * n_key_paths)
        self.mix_ptr = _ptr(n_key_paths[self.slot_key])
        self.n_mix = int(self.mix_ptr[-1])
        self.mix_slot = np.repeat(np.arange(self.n_slots, dtype=np.int64), np.diff(self.mix_ptr))
        self.mix_path = _i64(
            [self.key_path[self.key_path_ptr[self.slot_key[s]] + r] for s in range(self.n_slots)
             for r in range(self.mix_ptr[s + 1] - self.mix_ptr[s])]
        )
        partner_slot = self.slot_transpose[self.mix_slot]
        partner_path = self.path_swap[self.mix_path] if self.n_mix else self.mix_path
        self.mix_partner = self.mix_ptr[partner_slot] + self.path_rank[partner_path]
        self.mix_sign = self.slot_sign[self.mix_slot] * (-1.0) ** self.path_l2[self.mix_path]
        # slots of each (pair type, key): the backward kernels run path-major
        ptk = [[] for _ in range(self.n_pair_types * self.n_keys)]
        for s in range(self.n_slots):
            ptk[self.slot_pair_type[s] * self.n_keys + self.slot_key[s]].append(s)
        self.ptk_ptr = _ptr([len(v) for v in ptk])
        self.ptk_slot = _i64([s for v in ptk for s in v])

    # ----------------------------------------------------------------- onsite
    def _build_onsite(self) -> None:
        node_key = {}
        for q, (l, p) in enumerate(self.node_irreps):
            node_key.setdefault((l, p), []).append(q)
        rows, counts = [], []
        for s in range(self.n_slots):
            t = self.slot_pair_type[s]
            diagonal = t // self.n_species == t % self.n_species
            qs = node_key.get(self.keys[self.slot_key[s]], []) if diagonal else []
            rows += qs
            counts.append(len(qs))
        self.onsite_ptr = _ptr(counts)
        self.onsite_node = _i64(rows)
        self.n_onsite = int(self.onsite_ptr[-1])
        self.onsite_slot = np.repeat(np.arange(self.n_slots, dtype=np.int64), counts)

    # ----------------------------------------------------------------- helpers
    def init_weights(self, kind: str, channels: int, *, dtype: Any = None, generator: Any = None) -> Any:
        """Random ``W`` for :func:`edge_blocks` (``kind="edge"``, ``(n_mix, C)``) or :func:`onsite_blocks`
        (``"onsite"``, ``(n_onsite, C)``), normal with variance ``1 / fan_in`` of each row's slot
        (``fan_in`` = rows of the slot x channels), so that unit-variance inputs give unit-variance slots."""
        import torch

        if kind not in ("edge", "onsite"):
            raise InputError(f"init_weights: kind must be 'edge' or 'onsite', got {kind!r}")
        ptr, slot = (self.mix_ptr, self.mix_slot) if kind == "edge" else (self.onsite_ptr, self.onsite_slot)
        fan_in = torch.as_tensor(np.diff(ptr)[slot] * channels, dtype=dtype or torch.get_default_dtype())
        weights = torch.randn(len(slot), channels, generator=generator, dtype=fan_in.dtype)
        return weights / torch.sqrt(fan_in)[:, None]

    def irreps_of_pair(self, species_i: int, species_j: int) -> str:
        """e3nn ``Irreps`` string of the coupled-irreps vector of a pair (slot order, not simplified)."""
        t = species_i * self.n_species + species_j
        return "+".join(
            f"1x{self.slot_L[s]}{_parity_char(self.key_parity[self.slot_key[s]])}"
            for s in range(self.slot_ptr[t], self.slot_ptr[t + 1])
        )

    def tables(self, device: Any, dtype: Any) -> dict[str, Any]:
        """Every numpy table as a torch tensor on ``device`` (floats in ``dtype``), cached."""
        import torch

        cache_key = (str(device), dtype)
        if cache_key not in self._device_tables:
            out = {}
            for name, value in vars(self).items():
                if isinstance(value, np.ndarray):
                    target = dtype if value.dtype == np.float64 else torch.int64
                    out[name] = torch.tensor(value, device=device, dtype=target)
            self._device_tables[cache_key] = out
        return self._device_tables[cache_key]

    def __repr__(self) -> str:
        shells = ", ".join("[" + ",".join(map(str, ls)) + "]" for ls in self.species_shells)
        node = "+".join(f"{l}{_parity_char(p)}" for l, p in self.node_irreps) or "-"
        return (
            f"CGDescriptor(species shells {shells}; node irreps {node}; l_sh {self.l_sh}; "
            f"{self.n_slots} slots, {self.n_paths} paths, {self.n_mix} mixing rows, {self.n_onsite} onsite rows, "
            f"{len(self.qb_val)} Q and {len(self.cg_val)} CG nonzeros)"
        )


@lru_cache(maxsize=64)
def _cached(
    species_shells: tuple[tuple[int, ...], ...],
    node_irreps: tuple[tuple[int, int], ...],
    l_sh: int | None,
    conventions: tuple[tuple[int, bytes], ...],
) -> CGDescriptor:
    max_l = max([l for ls in species_shells for l in ls] + [0])
    given = {l: np.frombuffer(raw, dtype=np.float64).reshape(2 * l + 1, 2 * l + 1) for l, raw in conventions}
    matrices = tuple(given.get(l, np.eye(2 * l + 1)) for l in range(max_l + 1))
    return CGDescriptor(species_shells, node_irreps, l_sh, matrices)


def cg_descriptor(
    species_shells: Sequence[Sequence[int]],
    *,
    node_irreps: Any = (),
    l_sh: int | None = None,
    conventions: Mapping[int, Any] | None = None,
) -> CGDescriptor:
    """The (cached) CG descriptor of a basis.

    Args:
        species_shells: per species, the angular momentum of each shell in orbital order, e.g.
            ``[[0, 0, 1, 1, 2], [0, 0, 1, 1, 2]]`` for DZP boron and nitrogen (13 orbitals each).
        node_irreps: irreps of the node features (``"32x0e+32x1o+32x2e"``, ``"0e+1o+2e"``, or
            ``[(0, 1), (1, -1), (2, 1)]``); needed by :func:`edge_blocks` and :func:`onsite_blocks`.
        l_sh: largest degree of the edge spherical harmonics; ``None`` when no edge paths are needed.
        conventions: ``{l: U_l}``, orthogonal ``(2l+1, 2l+1)`` matrices from e3nn's real-harmonic
            order to the output orbital order (``v_out = U_l v_e3nn``); identity for missing ``l``.

    Raises:
        InputError: an empty basis, a shell or degree outside ``0..4``, a non-orthogonal convention.
    """
    shells = tuple(tuple(int(l) for l in ls) for ls in species_shells)
    if not shells or any(not ls for ls in shells):
        raise InputError(f"species_shells {species_shells!r}: need at least one species with one shell each")
    if any(not 0 <= l <= MAX_L for ls in shells for l in ls):
        raise InputError(f"species_shells {species_shells!r}: shell l must be in 0..{MAX_L}")
    if l_sh is not None and not 0 <= int(l_sh) <= MAX_L:
        raise InputError(f"l_sh={l_sh}: must be in 0..{MAX_L}")
    spec, _ = parse_node_irreps(node_irreps)
    checked = tuple(
        sorted((int(l), _check_convention(int(l), u).tobytes()) for l, u in (conventions or {}).items())
    )
    return _cached(shells, spec, None if l_sh is None else int(l_sh), checked)
