"""Assembly problems for tests/test_assemble.py, and the shared vectors of the host kernel test.

``python tests/assemble_problems.py`` rewrites ``tests/data/assemble_cases.txt`` (inputs and the
reference backend's outputs), which ``kernels/host/test_assemble.cpp`` (ctest) and the Python
tests both check.  File format: blocks of lines ``TAG COUNT v_1 ... v_COUNT``, one case from
``case`` to ``end``; tags in the order written by :func:`write_cases`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CASES = Path(__file__).parent / "data" / "assemble_cases.txt"


@dataclass
class Problem:
    """One assembly input: canonical pairs, layout, K value arrays, optional mask and nsc."""

    edge_index: np.ndarray
    cell_shift: np.ndarray
    orbitals_per_atom: np.ndarray
    blocks: np.ndarray  # (K, n_values)
    mask: np.ndarray | None = None
    nsc: tuple[int, int, int] | None = None
    atoms: tuple[int, int] | None = None
    name: str = field(default="problem")

    @property
    def block_ptr(self) -> np.ndarray:
        n = self.orbitals_per_atom
        return np.concatenate([[0], np.cumsum(n[self.edge_index[0]] * n[self.edge_index[1]])]).astype(np.int64)

    def kwargs(self) -> dict:
        """Arguments of plan_csr_assembly but the atom range."""
        return dict(
            edge_index=self.edge_index,
            cell_shift=self.cell_shift,
            block_ptr=self.block_ptr,
            orbitals_per_atom=self.orbitals_per_atom,
            nsc=self.nsc,
            mask=self.mask,
        )


def _onsite(edge_index: np.ndarray, cell_shift: np.ndarray) -> np.ndarray:
    return (edge_index[0] == edge_index[1]) & ~cell_shift.any(axis=1)


def symmetrise_onsite_blocks(problem: Problem) -> None:
    """Make every onsite block symmetric (in place), as H and S are: then the whole matrix is."""
    bp, n = problem.block_ptr, problem.orbitals_per_atom
    for e in np.flatnonzero(_onsite(problem.edge_index, problem.cell_shift)):
        size = n[problem.edge_index[0, e]]
        for values in problem.blocks:
            block = values[bp[e] : bp[e + 1]].reshape(size, size)
            values[bp[e] : bp[e + 1]] = (0.5 * (block + block.T)).ravel()


def _finish(rng, edge_index, cell_shift, orbitals, n_matrices, mask_fraction, dtype, name) -> Problem:
    order = rng.permutation(edge_index.shape[1])  # the assembly must not depend on the pair order
    edge_index, cell_shift = np.ascontiguousarray(edge_index[:, order]), np.ascontiguousarray(cell_shift[order])
    n_values = int((orbitals[edge_index[0]] * orbitals[edge_index[1]]).sum())
    blocks = rng.normal(size=(n_matrices, n_values)).astype(dtype)
    mask = rng.random(n_values) < mask_fraction if mask_fraction < 1 else None
    problem = Problem(edge_index, cell_shift, orbitals, blocks, mask, name=name)
    symmetrise_onsite_blocks(problem)
    return problem


def random_pairs_problem(
    rng: np.random.Generator,
    n_atoms: int,
    *,
    orbital_choices=(1, 4, 9, 13),
    reach=(1, 1, 1),
    n_pairs: int = 30,
    onsite_fraction: float = 0.8,
    n_matrices: int = 2,
    mask_fraction: float = 1.0,
    dtype=np.float64,
    name: str = "random pairs",
) -> Problem:
    """Random canonical pairs with shifts up to ``reach`` (self-images included), some atoms isolated."""
    from hforge.ops.assemble import is_canonical

    orbitals = rng.choice(np.asarray(orbital_choices), n_atoms).astype(np.int64)
    i = rng.integers(0, n_atoms, n_pairs)
    j = rng.integers(0, n_atoms, n_pairs)
    shift = np.stack([rng.integers(-r, r + 1, n_pairs) for r in reach], axis=1)
    edge_index, shift = np.stack([np.minimum(i, j), np.maximum(i, j)]), np.where((i > j)[:, None], -shift, shift)
    flip = ~is_canonical(edge_index, shift)
    shift[flip] *= -1
    keep = ~_onsite(edge_index, shift)
    onsite_atoms = np.flatnonzero(rng.random(n_atoms) < onsite_fraction)
    edge_index = np.concatenate([edge_index[:, keep], np.stack([onsite_atoms, onsite_atoms])], axis=1)
    shift = np.concatenate([shift[keep], np.zeros((onsite_atoms.size, 3), np.int64)])
    unique = np.unique(np.concatenate([edge_index.T, shift], axis=1), axis=0)
    return _finish(rng, unique[:, :2].T, unique[:, 2:], orbitals, n_matrices, mask_fraction, dtype, name)


def neighbour_problem(
    rng: np.random.Generator,
    positions: np.ndarray,
    cell: np.ndarray,
    periodic: bool,
    cutoff: float,
    *,
    orbital_choices=(4, 9, 13),
    n_matrices: int = 2,
    mask_fraction: float = 1.0,
    name: str = "neighbours",
) -> Problem:
    """The canonical half of a vesin neighbour list within ``cutoff`` (Å), plus all onsite pairs."""
    from vesin import NeighborList

    from hforge.ops.assemble import is_canonical

    i, j, shift = NeighborList(cutoff=cutoff, full_list=True).compute(positions, cell, periodic, quantities="ijS")
    n_atoms = positions.shape[0]
    edge_index = np.concatenate([np.stack([i, j]), np.tile(np.arange(n_atoms), (2, 1))], axis=1).astype(np.int64)
    shift = np.concatenate([shift, np.zeros((n_atoms, 3))]).astype(np.int64)
    keep = is_canonical(edge_index, shift)
    orbitals = rng.choice(np.asarray(orbital_choices), n_atoms).astype(np.int64)
    return _finish(rng, edge_index[:, keep], shift[keep], orbitals, n_matrices, mask_fraction, np.float64, name)


def shared_problems() -> list[Problem]:
    """The cases of the shared vector file: small, covering every branch of the kernels."""
    rng = np.random.default_rng(20240605)
    small = (1, 3, 5)
    problems = [
        random_pairs_problem(rng, 2, orbital_choices=(1, 2), n_pairs=4, onsite_fraction=1.0, name="two atoms"),
        random_pairs_problem(rng, 4, n_pairs=6, orbital_choices=(4, 13), name="DZP-like, periodic"),
        random_pairs_problem(rng, 5, n_pairs=20, orbital_choices=small, mask_fraction=0.6, name="mask"),
        random_pairs_problem(rng, 4, reach=(2, 0, 1), n_pairs=30, orbital_choices=small, n_matrices=3,
                             name="self images, K=3"),
        random_pairs_problem(rng, 5, reach=(0, 0, 0), n_pairs=6, orbital_choices=small, onsite_fraction=0.5,
                             name="molecule, isolated atoms"),
        random_pairs_problem(rng, 6, n_pairs=25, orbital_choices=small, mask_fraction=0.5, n_matrices=1,
                             name="row range, mask"),
        random_pairs_problem(rng, 6, n_pairs=20, orbital_choices=small, name="row range"),
        random_pairs_problem(rng, 3, reach=(1, 1, 0), n_pairs=8, orbital_choices=small, name="nsc given"),
        random_pairs_problem(rng, 5, n_pairs=12, orbital_choices=(0, 2, 3), mask_fraction=0.7,
                             name="atoms without orbitals, mask"),
    ]
    for problem in problems:  # short decimals keep the file small; parsing them is exact both sides
        problem.blocks[:] = np.round(problem.blocks, 3)
        symmetrise_onsite_blocks(problem)
    problems[5].atoms = (2, 5)
    problems[6].atoms = (1, 3)
    problems[7].nsc = (5, 3, 3)
    return problems


def _line(tag: str, values) -> str:
    values = np.asarray(values).ravel()
    text = " ".join(repr(float(v)) if values.dtype.kind == "f" else str(int(v)) for v in values)
    return f"{tag} {values.size} {text}".rstrip() + "\n"


def write_cases(path: Path = CASES) -> None:
    """Write :func:`shared_problems` and the reference backend's CSR of each to ``path``."""
    from hforge.ops.assemble import plan_csr_assembly
    from hforge.ops.assemble.layout import supercell_lookup

    lines = [
        "# Shared test vectors of the CSR assembly: tests/test_assemble.py and kernels/host/test_assemble.cpp\n",
        "# (ctest) check them.  Written by `python tests/assemble_problems.py` from the reference backend.\n",
        "# Format: lines 'TAG COUNT values...'; a case runs from 'case' to 'end'.  edge_index is (2, E)\n",
        "# row-major, cell_shift (E, 3), blocks (K, n_values), data (nnz, K); mask 0 values: no mask;\n",
        "# sc_lookup: sisl's Lattice(nsc).isc_off flattened; atoms: [begin, end) of the row atoms.\n",
    ]
    for case, problem in enumerate(shared_problems()):
        plan = plan_csr_assembly(**problem.kwargs(), atoms=problem.atoms, backend="torch")
        csr = plan.fill(problem.blocks, index_dtype=np.int64)
        inputs = plan.inputs
        lines += [
            f"# {problem.name}\n",
            _line("case", [case]),
            _line("orbitals", problem.orbitals_per_atom),
            _line("nsc", inputs.nsc),
            _line("sc_lookup", supercell_lookup(inputs.nsc)),
            _line("atoms", [inputs.atom_begin, inputs.atom_end]),
            _line("edge_index", problem.edge_index),
            _line("cell_shift", problem.cell_shift),
            _line("block_ptr", problem.block_ptr),
            _line("matrices", [problem.blocks.shape[0]]),
            _line("blocks", problem.blocks),
            _line("mask", [] if problem.mask is None else problem.mask.astype(np.int64)),
            _line("indptr", csr.indptr),
            _line("indices", csr.indices),
            _line("data", csr.data),
            "end 0\n",
        ]
    path.write_text("".join(lines))


def read_cases(path: Path = CASES) -> list[dict[str, np.ndarray]]:
    """The cases of the shared vector file, each a dict ``tag -> 1-D array``."""
    cases, current = [], None
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        tag, count, *values = line.split()
        assert int(count) == len(values), f"{tag}: {count} values announced, {len(values)} found"
        if tag == "case":
            current = {}
        elif tag == "end":
            cases.append(current)
        else:
            kind = np.float64 if tag in ("blocks", "data") else np.int64
            current[tag] = np.array(values, dtype=kind)
    return cases


if __name__ == "__main__":
    import hforge  # noqa: F401

    write_cases()
    print(f"wrote {CASES}")
