"""graph2mat (MACE + E3nnGraph2Mat) as an external baseline, trained and evaluated like HForge's own models.

The transfer study (small training cells -> large cells) compares HForge's equivariant and invariant
models with `graph2mat <https://github.com/BIG-MAP/graph2mat>`_'s ``MatrixMACE``, an independent
equivariant model of the same matrices.  This module gives graph2mat HForge's data, budget, logs and
metrics so that the three are compared alike:

* data: an :class:`~hforge.io.HSData` becomes graph2mat's input through the objects its authors
  feed it, a :class:`sisl.Hamiltonian` read by ``OrbitalConfiguration.from_matrix`` (SIESTA's
  orbital order and real-harmonic convention, ``PointBasis.from_sisl_atom``'s
  ``"siesta_spherical"``): :func:`to_graph2mat`.  graph2mat's graph holds every pair ``(i, j, n)``
  with ``|r_ij| < r_i + r_j`` (the blocks of S, the pairs HForge's models predict by default);
  the pairs that SIESTA's H has beyond them (reach of the KB projectors) are left out, as
  HForge's default models leave them out.  ``tests/test_graph2mat.py`` checks that
  graph2mat's labels convert back to exactly the original blocks and that the model is
  equivariant in SIESTA's convention (HForge's own Wigner matrices).
* budget (:func:`train_graph2mat`): one optimizer step is one batch of training structures packed up
  to ``batch_atoms`` atoms by HForge's :func:`~hforge.train.loop.atom_batches` (same seed, same
  batches as HForge's trainer), ``max_steps`` steps, AdamW, linear warm-up then cosine decay to
  ``min_lr_ratio`` (HForge's schedule), gradient clipping, an EMA of the weights; the loss is the
  MSE of the unshifted H entries in eV (HForge's default loss), or of ``H - H0`` with
  ``target="residual"`` (H0: HForge's fitted physical baseline, :mod:`hforge.models.baseline`,
  added back at prediction).  graph2mat has no output scaling: its readouts start orders of
  magnitude below H (onsite entries down to -16 eV), so by default the mean onsite block of each
  species (graph2mat's "point matrix" idea) is subtracted from the labels and added back
  (:attr:`Graph2MatSettings.point_matrix`); HForge's models have their per-block-type output
  scaling instead.
* logs: ``metrics.jsonl`` with HForge's trainer keys (``step``, ``epoch``, ``loss``, ``loss_h``,
  ``lr``, ``grad_norm``, ``structures``, ``atoms``; validation records ``val`` with ``mean``,
  ``structures`` (per-structure ``h_mae_meV`` ...) and ``groups``), ``last.pt`` / ``best.pt``
  written atomically, ``learning_curve.png``, ``summary.json``; a run resumes from ``last.pt``.
  Seeding, schedule, EMA, the resume check, the log and every file are the trainer's own pieces
  (:mod:`hforge.train.loop`): strict JSON, :func:`hforge.files.atomic_write`.
* predictions (:func:`predict_graph2mat`): an :class:`~hforge.io.HSData` with the predicted
  unshifted H (E_F = 0) and the reference's exact S, on the onsite pairs and the canonical half of
  the predicted pairs (the layout of :func:`hforge.train.evaluation.predict_blocks`, so that every
  metric weighs blocks as for HForge's models), or on all of the reference's pairs
  (``pairs="data"``; zero H where graph2mat predicts nothing); :func:`evaluate_graph2mat` returns
  the :class:`~hforge.train.evaluation.Evaluation` that
  :func:`~hforge.train.evaluation.evaluate_structures` returns for HForge's models.

graph2mat, mace-torch, e3nn and torch_geometric are imported lazily (``pip install 'hforge[bench]'``):
without them every entry point raises :class:`~hforge.errors.BackendUnavailableError`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from hforge.errors import BackendUnavailableError, ConfigError, FileFormatError, InputError, UnsupportedSystemError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hforge.basis import BasisSet
    from hforge.io import HSData, HSStore

__all__ = [
    "CHECKPOINT_FORMAT",
    "Graph2MatPredictor",
    "Graph2MatSettings",
    "evaluate_graph2mat",
    "from_graph2mat",
    "graph2mat_model",
    "load_graph2mat",
    "predict_graph2mat",
    "require_graph2mat",
    "to_graph2mat",
    "train_graph2mat",
]

CHECKPOINT_FORMAT = "hforge-graph2mat"
CHECKPOINT_VERSION = 1

Target = Literal["h", "residual"]


# ---------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------
def require_graph2mat() -> str:
    """graph2mat's version; raises :class:`BackendUnavailableError` when graph2mat, mace-torch,
    e3nn or torch_geometric cannot be imported."""
    from hforge._compat import import_mace

    try:
        import_mace()  # e3nn and mace first, in the context their imports need (hforge/_compat.py)
        import graph2mat
        import torch_geometric  # noqa: F401
        from graph2mat.models import MatrixMACE  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the graph2mat baseline needs graph2mat (with e3nn), mace-torch and torch_geometric ({exc}); "
            "install them with: pip install 'hforge[bench]'"
        ) from exc
    return str(graph2mat.__version__)


# ---------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Graph2MatSettings:
    """Hyper-parameters of graph2mat's ``MatrixMACE`` and the few loop details that
    :func:`train_graph2mat`'s signature leaves out.

    Model defaults follow graph2mat's own MACE model (``LitMACEMatrixModel``) and its SIESTA DZP
    tutorial, with the trunk width of HForge's default model (16 channels of l <= 2, 2 interactions,
    correlation 2) so that the study compares architectures of similar size:

    Attributes:
        r_max: MACE's radial cut-off (Å); None: twice the largest orbital radius of the basis, as
            graph2mat's MACE model does (its message graph is the matrix graph, every pair with
            ``|r_ij| < r_i + r_j``, so the cut-off must reach the longest pair: 7.48 Å for B-B).
        num_bessel, num_polynomial_cutoff: MACE's radial basis (graph2mat's defaults 10 and 3).
        max_ell: largest l of MACE's edge spherical harmonics (graph2mat's DZP tutorial: 2, the
            largest orbital l).
        num_interactions: MACE interactions (graph2mat's default 2).
        hidden_irreps: MACE's node features (graph2mat: ``20x0e+20x1o+20x2e``, DZP tutorial
            ``10x...``; here HForge's 16 channels).
        edge_hidden_irreps: irreps of graph2mat's edge messages (``E3nnEdgeMessageBlock``;
            graph2mat's default ``4x0e+4x1o+4x2e``).
        correlation: MACE's body order (graph2mat's default 1, HForge's 2).
        avg_num_neighbors: MACE's message normalisation; None: the mean number of graph edges per
            atom of the training structures (about 120 on aBN; graph2mat's default 1.0 would scale
            messages by that number).
        point_matrix: subtract a constant onsite block per species from the labels and add it back
            at prediction (graph2mat's ``sub_point_matrix``; here the mean onsite block of the species
            over the training structures, as graph2mat has no isolated-atom H).  graph2mat's readouts
            start 2-4 orders of magnitude below H's scale (onsite entries down to -16 eV, node
            outputs ~0.02 eV at initialisation): without it the onsite blocks barely move in a
            study-sized budget.
        readout_per_interaction: one graph2mat readout per interaction (graph2mat's default False).
        preprocessing_edges: ``"E3nnEdgeMessageBlock"`` (graph2mat's default) or ``"none"``.
        loss: ``"elementwise_mse"`` (MSE over all H entries, eV^2: HForge's default loss) or
            ``"block_type_mse"`` (graph2mat's default: node-block MSE + edge-block MSE).
        weight_decay, grad_clip, warmup_steps, min_lr_ratio, ema_decay: as HForge's defaults
            (``optimizer.weight_decay``, ``optimizer.grad_clip``, ``schedule.*``,
            ``training.ema_decay``; ``ema_decay=0`` turns the EMA off).
        val_every, checkpoint_every, log_every: periods in steps (HForge's defaults 50, 25, 1).
        val_eigenvalues: Γ eigenvalue metrics in the validation records (HForge's default).
        threads: torch CPU threads (None: torch's default).
    """

    r_max: float | None = None
    num_bessel: int = 10
    num_polynomial_cutoff: int = 3
    max_ell: int = 2
    num_interactions: int = 2
    hidden_irreps: str = "16x0e+16x1o+16x2e"
    edge_hidden_irreps: str = "4x0e+4x1o+4x2e"
    correlation: int = 2
    avg_num_neighbors: float | None = None
    point_matrix: bool = True
    readout_per_interaction: bool = False
    preprocessing_edges: str = "E3nnEdgeMessageBlock"
    loss: str = "elementwise_mse"
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.99
    val_every: int = 50
    checkpoint_every: int = 25
    log_every: int = 1
    val_eigenvalues: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"Graph2MatSettings.{name}={getattr(self, name)!r}: {why}")

        if self.r_max is not None and not self.r_max > 0:
            raise bad("r_max", "must be positive (Å) or None")
        for name in ("num_bessel", "num_polynomial_cutoff", "num_interactions", "correlation", "val_every",
                     "checkpoint_every", "log_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be an integer >= 1")
        if not (isinstance(self.max_ell, int) and self.max_ell >= 0):
            raise bad("max_ell", "must be an integer >= 0")
        if self.avg_num_neighbors is not None and not self.avg_num_neighbors > 0:
            raise bad("avg_num_neighbors", "must be positive or None")
        if self.preprocessing_edges not in ("E3nnEdgeMessageBlock", "none"):
            raise bad("preprocessing_edges", "must be 'E3nnEdgeMessageBlock' or 'none'")
        if self.loss not in ("elementwise_mse", "block_type_mse"):
            raise bad("loss", "must be 'elementwise_mse' or 'block_type_mse'")
        if not 0 <= self.ema_decay < 1:
            raise bad("ema_decay", "must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("Graph2MatSettings: warmup_steps, weight_decay and grad_clip must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "must be >= 1 or None")
        from hforge._compat import import_e3nn

        import_e3nn()  # a dependency of HForge: the check always runs
        from e3nn import o3

        for name in ("hidden_irreps", "edge_hidden_irreps"):
            try:
                o3.Irreps(getattr(self, name))
            except (ValueError, AssertionError) as exc:  # e3nn's errors of a bad irreps string
                raise bad(name, f"not an irreps string ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Graph2MatSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Graph2MatSettings: unknown fields {unknown}")
        return cls(**dict(data))


# ---------------------------------------------------------------------------------------
# data: HSData <-> graph2mat
# ---------------------------------------------------------------------------------------
def _check_basis(basis: "BasisSet") -> None:
    """graph2mat keys point types by Z and orders a species' orbitals by l (sets of equal l together)."""
    z = [sp.Z for sp in basis]
    if len(set(z)) != len(z):
        raise UnsupportedSystemError(
            f"graph2mat identifies species by atomic number; the basis has several species of one Z: {basis.symbols}"
        )
    for sp in basis:
        ls = [s.l for s in sp.shells]
        if ls != sorted(ls):
            raise UnsupportedSystemError(
                f"species {sp.symbol!r}: graph2mat groups orbitals by l in increasing order; its shells have l = {ls}"
            )


def _processor(basis: "BasisSet") -> Any:
    """graph2mat's ``MatrixDataProcessor`` of a basis (one ``PointBasis`` per species, from its sisl atom)."""
    from graph2mat import BasisTableWithEdges, MatrixDataProcessor, PointBasis

    _check_basis(basis)
    table = BasisTableWithEdges([PointBasis.from_sisl_atom(atom) for atom in basis.to_sisl()])
    return MatrixDataProcessor(basis_table=table, symmetric_matrix=True, sub_point_matrix=False, out_matrix="hamiltonian")


def _as_sisl(data: "HSData", values: np.ndarray | None) -> Any:
    """``sisl.Hamiltonian`` holding ``values`` (default: the unshifted H) on every entry of every block."""
    h = data.h_unshifted[:1] if values is None else np.asarray(values, dtype=np.float64).reshape(1, -1)
    full = replace(data, h=h, fermi_level=0.0, mask=np.ones(data.n_values, dtype=bool))
    return full.to_sisl()


def to_graph2mat(data: "HSData", processor: Any, values: np.ndarray | None = None, *, labels: bool = True,
                 as_torch: bool = True) -> Any:
    """graph2mat's input for one structure: a ``TorchBasisMatrixData`` (float32, torch's default
    dtype) or, with ``as_torch=False``, a numpy ``BasisMatrixData`` (float64 labels).

    Args:
        data: the structure (its basis must be the processor's).
        processor: :func:`_processor` of the basis.
        values: ``(n_values,)`` flat blocks on ``data``'s pairs to use as labels (default: the
            unshifted H, spin 0); entries outside the file's mask count as stored (0 in H).
        labels: read labels (False: the structure alone, for prediction).
    """
    from graph2mat import BasisMatrixData, OrbitalConfiguration

    pbc = tuple(bool(p) for p in data.pbc)  # graph2mat's default is periodic in all directions
    if labels:
        config = OrbitalConfiguration.from_matrix(_as_sisl(data, values), pbc=pbc)
    else:
        config = OrbitalConfiguration.from_geometry(data.to_sisl_geometry(), pbc=pbc)
    if as_torch:
        from graph2mat.bindings.torch import TorchBasisMatrixData

        return TorchBasisMatrixData.from_config(config, processor)
    return BasisMatrixData.from_config(config, processor)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def from_graph2mat(g2m_data: Any, node_labels: Any, edge_labels: Any, processor: Any, like: "HSData") -> "HSData":
    """graph2mat labels of one structure as an :class:`HSData` of ``like``'s atoms: the onsite pairs
    and the canonical half of graph2mat's edges (each block once, in HForge's orientation),
    sorted by ``(i, j, n)``; ``h`` the labels (float64), ``s`` zero, ``mask`` all True."""
    import sisl

    from hforge.io import HSData
    from hforge.io.hsdata import _pair_keys
    from hforge.io.pairs import is_canonical

    table = processor.basis_table
    point_types = _numpy(g2m_data["point_types"]).astype(np.int64)
    edge_index = _numpy(g2m_data["edge_index"]).astype(np.int64)
    edge_types = _numpy(g2m_data["edge_types"]).astype(np.int64)
    neigh_isc = _numpy(g2m_data["neigh_isc"]).astype(np.int64)
    nsc = _numpy(g2m_data["nsc"]).reshape(-1)[:3].astype(np.int64)
    node_values = _numpy(node_labels).astype(np.float64)
    edge_values = _numpy(edge_labels).astype(np.float64)
    n_atoms = len(point_types)
    if n_atoms != like.n_atoms:
        raise InputError(f"graph2mat data has {n_atoms} atoms, the structure {like.n_atoms}")
    sizes = table.basis_size[point_types].astype(np.int64)
    if not np.array_equal(sizes, like.atom_orbitals):
        raise InputError("graph2mat's orbital counts per atom differ from the structure's")
    # unique edges: graph2mat keeps both directions consecutively, the block of edge_index[:, 2k]
    pairs = edge_index[:, ::2]
    shift = np.asarray(sisl.Lattice(like.cell, nsc=nsc).sc_off, dtype=np.int64)[neigh_isc[::2]]
    node_ptr = np.asarray(table.point_block_pointer(point_types), dtype=np.int64)
    edge_ptr = np.asarray(table.edge_block_pointer(edge_types[::2]), dtype=np.int64)
    if node_ptr[-1] != len(node_values) or edge_ptr[-1] != len(edge_values):
        raise InputError("graph2mat labels of unexpected length for the structure's blocks")
    onsite = np.arange(n_atoms)
    flip = ~is_canonical(pairs, shift)
    all_i = np.concatenate([onsite, np.where(flip, pairs[1], pairs[0])])
    all_j = np.concatenate([onsite, np.where(flip, pairs[0], pairs[1])])
    all_n = np.concatenate([np.zeros((n_atoms, 3), np.int64), np.where(flip[:, None], -shift, shift)])
    rows = sizes[pairs[0]]
    cols = sizes[pairs[1]]
    block_sizes = np.concatenate([sizes * sizes, rows * cols])
    source_start = np.concatenate([node_ptr[:-1], len(node_values) + edge_ptr[:-1]])
    source = np.concatenate([node_values, edge_values])
    # flat source index of every output value: row-major, transposed for flipped edges
    local = np.arange(int(block_sizes.sum())) - np.repeat(np.cumsum(block_sizes) - block_sizes, block_sizes)
    out_cols = np.repeat(np.concatenate([sizes, np.where(flip, rows, cols)]), block_sizes)  # columns of the output block
    src_cols = np.repeat(np.concatenate([sizes, cols]), block_sizes)  # columns of the source block
    r, c = local // out_cols, local % out_cols
    is_flip = np.repeat(np.concatenate([np.zeros(n_atoms, bool), flip]), block_sizes)
    index = np.repeat(source_start, block_sizes) + np.where(is_flip, c * src_cols + r, local)
    values = source[index]
    edge = np.stack([all_i, all_j])
    low, span = all_n.min(axis=0), np.ptp(all_n, axis=0) + 1
    order = np.argsort(_pair_keys(edge, all_n, n_atoms, low, span), kind="stable")
    ptr = np.concatenate([[0], np.cumsum(block_sizes)]).astype(np.int64)
    sorted_sizes = block_sizes[order]
    new_ptr = np.concatenate([[0], np.cumsum(sorted_sizes)]).astype(np.int64)
    starts = np.repeat(ptr[:-1][order], sorted_sizes)
    values = values[starts + np.arange(int(new_ptr[-1])) - np.repeat(new_ptr[:-1], sorted_sizes)]
    return HSData(
        cell=like.cell, positions=like.positions, species=like.species, basis=like.basis, edge_index=edge[:, order],
        cell_shift=all_n[order], block_ptr=new_ptr, h=values[None], s=np.zeros(len(values)),
        mask=np.ones(len(values), bool), pbc=like.pbc, nsc=like.nsc, source=like.source,
    )


def _gather_on(target: "HSData", source: "HSData", values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (flat, on ``source``'s pairs) on ``target``'s pairs: ``(gathered, found per value)``
    (0 where ``source`` lacks the pair)."""
    pairs = source.find_pairs(target.edge_index[0], target.edge_index[1], target.cell_shift)
    sizes = np.diff(target.block_ptr)
    found = np.repeat(pairs >= 0, sizes)
    local = np.arange(target.n_values) - np.repeat(target.block_ptr[:-1], sizes)
    index = np.repeat(source.block_ptr[np.maximum(pairs, 0)], sizes) + local
    return np.where(found, values[np.where(found, index, 0)], 0.0), found


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------
def _build_model(settings: Graph2MatSettings, processor: Any, r_max: float, avg_num_neighbors: float) -> "torch.nn.Module":
    import torch
    from e3nn import o3
    from graph2mat.bindings.e3nn import E3nnEdgeMessageBlock
    from graph2mat.models import MatrixMACE
    from mace.modules import MACE, RealAgnosticResidualInteractionBlock

    table = processor.basis_table
    n_types = len(table.basis)
    mace = MACE(
        r_max=float(r_max), num_bessel=settings.num_bessel, num_polynomial_cutoff=settings.num_polynomial_cutoff,
        max_ell=settings.max_ell, interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticResidualInteractionBlock, num_interactions=settings.num_interactions,
        num_elements=n_types, hidden_irreps=o3.Irreps(settings.hidden_irreps), MLP_irreps=o3.Irreps("1x0e"),
        atomic_energies=torch.zeros(n_types), avg_num_neighbors=float(avg_num_neighbors),
        atomic_numbers=torch.arange(n_types), correlation=settings.correlation, gate=None,
    )
    return MatrixMACE(
        mace, readout_per_interaction=settings.readout_per_interaction, unique_basis=table, symmetric=True,
        edge_hidden_irreps=o3.Irreps(settings.edge_hidden_irreps),
        preprocessing_edges=E3nnEdgeMessageBlock if settings.preprocessing_edges == "E3nnEdgeMessageBlock" else None,
    )


def graph2mat_model(
    basis: "BasisSet", settings: Graph2MatSettings = Graph2MatSettings(), *, avg_num_neighbors: float | None = None,
) -> tuple["torch.nn.Module", Any]:
    """``(model, processor)``: graph2mat's ``MatrixMACE`` as the transfer study builds it
    (:func:`train_graph2mat` with ``settings``; MACE's cut-off ``settings.r_max``, or twice the basis'
    largest orbital radius), untrained and in evaluation mode, with its ``MatrixDataProcessor``: the
    one graph2mat baseline that the study and every benchmark use.  ``avg_num_neighbors``: the
    settings', else this value, else the mean number of graph edges per atom of ``basis``' pairs on
    aBN at 2.2 g/cm^3 (:data:`ABN_GRAPH2MAT_NEIGHBOURS`; training measures its own).

    Raises:
        BackendUnavailableError: graph2mat is not installed.
    """
    require_graph2mat()
    processor = _processor(basis)
    r_max = settings.r_max if settings.r_max is not None else 2.0 * float(processor.basis_table.maxR())
    avg = settings.avg_num_neighbors or avg_num_neighbors or ABN_GRAPH2MAT_NEIGHBOURS
    return _build_model(settings, processor, r_max, float(avg)).eval(), processor


#: Directed graph edges per atom of graph2mat's graph (every pair within ``r_i + r_j``) on the DZP aBN
#: cells at 2.2 g/cm^3 (127 on the 1000-atom scaling cell of benchmarks/scaling.py).
ABN_GRAPH2MAT_NEIGHBOURS = 127.0


def _loss(kind: str, out: Mapping[str, Any], batch: Any) -> "torch.Tensor":
    node = out["node_labels"] - batch["point_labels"]
    edge = out["edge_labels"] - batch["edge_labels"]
    if kind == "block_type_mse":
        return (node * node).mean() + (edge * edge).mean()
    return ((node * node).sum() + (edge * edge).sum()) / (node.numel() + edge.numel())


def _batch(items: Sequence[Any]) -> Any:
    from torch_geometric.data import Batch

    return Batch.from_data_list(list(items))


@dataclass
class Graph2MatPredictor:
    """A graph2mat model with what predicting needs: its processor, the basis, the target and the
    baseline coefficients (``target="residual"``).  :meth:`predict` gives an :class:`HSData`."""

    model: Any
    processor: Any
    basis: "BasisSet"
    settings: Graph2MatSettings
    target: str = "h"
    coefficients: np.ndarray | None = None
    point_matrices: list[np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, data: "HSData", *, pairs: Literal["model", "data"] = "model") -> "HSData":
        """The prediction for ``data``'s structure (see :func:`predict_graph2mat`)."""
        import torch

        from hforge.train.evaluation import check_data_basis

        check_data_basis(self.basis, data.basis, source=data.source)
        g = to_graph2mat(data, self.processor, labels=False)
        self.model.eval()
        with torch.no_grad(), torch.jit.optimized_execution(False):
            out = self.model(_batch([g]))
        prediction = from_graph2mat(g, out["node_labels"], out["edge_labels"], self.processor, data)
        h = prediction.h[0]
        if self.point_matrices is not None:
            h = _add_point_matrices(prediction, h, self.point_matrices, self.basis, sign=1.0)
        if self.target == "residual":
            h = h + _baseline(self.basis, prediction, self.coefficients)
        s, _ = _gather_on(prediction, data, data.s)
        prediction = replace(prediction, h=h[None], s=s)
        if pairs == "model":
            return prediction
        if pairs != "data":
            raise InputError(f"pairs must be 'model' or 'data', got {pairs!r}")
        h_data, found = _gather_on(data, prediction, prediction.h[0])
        if self.target == "residual":  # where graph2mat predicts nothing, the baseline alone
            h_data = np.where(found, h_data, _baseline(self.basis, data, self.coefficients))
        return replace(data, h=h_data[None], s=data.s.copy(), mask=np.ones(data.n_values, bool), fermi_level=0.0)


def _model_species(data: "HSData", basis: "BasisSet") -> np.ndarray:
    """Species of ``data``'s atoms as indices into ``basis`` (matched by label)."""
    return np.array([basis.index(symbol) for symbol in data.basis.symbols], dtype=np.int64)[data.species]


def _add_point_matrices(data: "HSData", values: np.ndarray, point: Sequence[np.ndarray], basis: "BasisSet",
                        *, sign: float) -> np.ndarray:
    """``values`` (flat, on ``data``'s pairs) plus ``sign`` times its species' point matrix on every onsite block."""
    values = np.array(values, dtype=np.float64, copy=True)
    species = _model_species(data, basis)
    for e in np.flatnonzero(data.onsite):
        block = point[species[data.edge_index[0, e]]]
        values[data.block_ptr[e] : data.block_ptr[e + 1]] += sign * block.ravel()
    return values


def _fit_point_matrices(structures: Iterable[tuple["HSData", np.ndarray]], basis: "BasisSet") -> list[np.ndarray]:
    """Mean onsite block of every species over ``(structure, flat values)`` (zero for absent species)."""
    sums = [np.zeros((sp.n_orbitals, sp.n_orbitals)) for sp in basis]
    counts = [0] * len(sums)
    for data, values in structures:
        species = _model_species(data, basis)
        for e in np.flatnonzero(data.onsite):
            s = int(species[data.edge_index[0, e]])
            sums[s] += values[data.block_ptr[e] : data.block_ptr[e + 1]].reshape(sums[s].shape)
            counts[s] += 1
    return [total / max(count, 1) for total, count in zip(sums, counts)]


def _baseline(basis: "BasisSet", data: "HSData", coefficients: np.ndarray | None) -> np.ndarray:
    from hforge.models.baseline import baseline_of

    return np.asarray(baseline_of(basis, data, coefficients), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------
def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileFormatError("no such graph2mat checkpoint", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileFormatError(f"cannot read the checkpoint ({exc})", path=path) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"not a graph2mat checkpoint written by HForge (format {payload.get('format')!r})"
                              if isinstance(payload, dict) else "not a graph2mat checkpoint", path=path)
    return payload


def load_graph2mat(checkpoint: str | os.PathLike) -> Graph2MatPredictor:
    """The predictor of a checkpoint of :func:`train_graph2mat` (its EMA weights, or the raw weights
    when the EMA was off).

    Raises:
        BackendUnavailableError: graph2mat is not installed.
        FileFormatError: a missing or foreign file.
    """
    require_graph2mat()
    from hforge.basis import BasisSet

    payload = _read_checkpoint(checkpoint)
    settings = Graph2MatSettings.from_dict(payload["settings"])
    basis = BasisSet.from_dict(json.loads(payload["basis"]))
    processor = _processor(basis)
    model = _build_model(settings, processor, payload["r_max"], payload["avg_num_neighbors"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    coefficients = payload.get("baseline_coefficients")
    coefficients = None if coefficients is None else coefficients.double().numpy()
    point = payload.get("point_matrices")
    point = None if point is None else [p.double().numpy() for p in point]
    info = {k: payload[k] for k in ("graph2mat_version", "hforge_version", "r_max", "avg_num_neighbors", "step") if k in payload}
    return Graph2MatPredictor(model, processor, basis, settings, payload["target"], coefficients, point, info)


_LOADED: dict[tuple[str, int, int], Graph2MatPredictor] = {}


def predict_graph2mat(
    checkpoint: str | os.PathLike | Graph2MatPredictor, data: "HSData", *, pairs: Literal["model", "data"] = "model"
) -> "HSData":
    """graph2mat's prediction for ``data``'s structure, ready for HForge's metrics.

    The result has ``data``'s atoms, cell and basis; ``h`` the predicted unshifted H (eV; E_F = 0,
    with the fitted baseline H0 added for ``target="residual"``) and ``s`` the reference S of
    ``data`` (exact, not learned) on the same pairs.

    Args:
        checkpoint: a ``.pt`` of :func:`train_graph2mat` (loaded once per path and mtime), or a
            :class:`Graph2MatPredictor`.
        data: the structure (with its reference S).
        pairs: ``"model"`` (default): the onsite pairs and the canonical half of the pairs graph2mat
            predicts, i.e. of ``data``'s pairs with ``|r_ij| < r_i + r_j``: the layout of
            :func:`hforge.train.evaluation.predict_blocks`, so :func:`~hforge.train.compare_blocks`
            and the Γ eigenvalue metrics weigh blocks exactly as for HForge's models.  ``"data"``:
            every pair of ``data`` in its order, H zero (H0 for the residual target) on the pairs
            beyond graph2mat's graph (SIESTA's KB-projector reach).

    ``prediction.expand_half().to_sisl()`` (``"model"``) or ``prediction.to_sisl()`` (``"data"``) is
    the full :class:`sisl.Hamiltonian`.
    """
    if isinstance(checkpoint, Graph2MatPredictor):
        return checkpoint.predict(data, pairs=pairs)
    path = Path(checkpoint).resolve()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_graph2mat(path)
    return _LOADED[key].predict(data, pairs=pairs)


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------
def evaluate_graph2mat(
    checkpoint: str | os.PathLike | Graph2MatPredictor,
    references: Iterable["HSData"],
    **options: Any,
) -> Any:
    """:func:`hforge.train.evaluation.evaluate_predictions` of a graph2mat model (the same
    :class:`~hforge.train.evaluation.Evaluation`; S is the reference's, so its S MAE is 0 and both
    eigenvalue comparisons are H's alone), from :func:`predict_graph2mat`'s ``pairs="model"`` layout;
    ``options`` as there."""
    from hforge.train.evaluation import evaluate_predictions

    predictor = checkpoint if isinstance(checkpoint, Graph2MatPredictor) else load_graph2mat(checkpoint)
    valence = dict(options.pop("valence", None) or {})
    for sp in predictor.basis:
        if sp.valence_charge is not None:
            valence.setdefault(sp.symbol, sp.valence_charge)
    return evaluate_predictions(predictor.predict, references, valence=valence, **options)


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _resolve_names(store: "HSStore", names: Sequence[str], what: str) -> list[int]:
    index = {e["name"]: k for k, e in enumerate(store.manifest)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ConfigError(f"train_graph2mat: {what} structures {missing} are not in the store (it has {sorted(index)})")
    if not names:
        raise ConfigError(f"train_graph2mat: no {what} structure")
    return [index[n] for n in names]


def _open_store(store: Any) -> "HSStore":
    if isinstance(store, (str, os.PathLike)):
        from hforge.datasets import load

        return load(os.fspath(store)).store
    return getattr(store, "store", store)  # an HSDataset holds its store


def train_graph2mat(
    store: Any,
    train_names: Sequence[str],
    val_names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    max_steps: int,
    batch_atoms: int,
    lr: float,
    seed: int,
    schedule: Literal["cosine", "constant"] = "cosine",
    settings: Graph2MatSettings = Graph2MatSettings(),
    target: Target = "h",
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Train graph2mat's ``MatrixMACE`` on the training structures of ``store``; returns ``out_dir/last.pt``.

    Args:
        store: an :class:`~hforge.io.HSStore`, an :class:`~hforge.datasets.HSDataset` or a dataset
            name / store path (:func:`hforge.datasets.load`).
        train_names, val_names: structure names of the store (``manifest[k]["name"]``).
        out_dir: where ``last.pt``, ``best.pt``, ``metrics.jsonl``, ``learning_curve.png`` and
            ``summary.json`` go (created).
        max_steps: optimizer steps (the budget).
        batch_atoms: atoms per step: the training structures in a seeded permutation per epoch,
            packed greedily up to this many atoms (at least one structure a step).
        lr: peak learning rate of AdamW.
        seed: seeds the weights, the batches (as HForge's trainer) and torch's RNG.
        schedule: ``"cosine"`` (linear warm-up, cosine to ``settings.min_lr_ratio``) or ``"constant"``.
        settings: model hyper-parameters and loop details.
        target: ``"h"``: the unshifted H; ``"residual"``: ``H - H0`` with HForge's physical baseline
            fitted (least squares per block type) on the training structures, added back at prediction.
        progress: a progress bar.
        resume: continue from ``out_dir/last.pt`` (the same structures, target and settings;
            ``max_steps`` may grow).

    Raises:
        BackendUnavailableError: graph2mat is not installed.
        ConfigError: unknown or overlapping structure names, bad arguments, a resume that does not match.
    """
    version = require_graph2mat()
    import torch

    if target not in ("h", "residual"):
        raise ConfigError(f"train_graph2mat: target must be 'h' or 'residual', got {target!r}")
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"train_graph2mat: schedule must be 'cosine' or 'constant', got {schedule!r}")
    if not (isinstance(max_steps, int) and max_steps >= 1) or not (isinstance(batch_atoms, int) and batch_atoms >= 1):
        raise ConfigError("train_graph2mat: max_steps and batch_atoms must be integers >= 1")
    if not lr > 0:
        raise ConfigError(f"train_graph2mat: lr must be positive, got {lr}")
    store = _open_store(store)
    train_names, val_names = [str(n) for n in train_names], [str(n) for n in val_names]
    overlap = sorted(set(train_names) & set(val_names))
    if overlap:
        raise ConfigError(f"train_graph2mat: train and validation share structures {overlap}")
    train_idx = _resolve_names(store, train_names, "training")
    val_idx = _resolve_names(store, val_names, "validation")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _train(store, train_idx, val_idx, train_names, val_names, out_dir, max_steps=max_steps,
                      batch_atoms=batch_atoms, lr=lr, seed=seed, schedule=schedule, settings=settings, target=target,
                      progress=progress, resume=resume, version=version)
    finally:
        torch.set_num_threads(threads)


def _train(store: "HSStore", train_idx: list[int], val_idx: list[int], train_names: list[str], val_names: list[str],
           out_dir: Path, *, max_steps: int, batch_atoms: int, lr: float, seed: int, schedule: str,
           settings: Graph2MatSettings, target: str, progress: bool, resume: bool, version: str) -> Path:
    """:func:`train_graph2mat` after its checks."""
    import torch

    import hforge
    from hforge.train.config import ScheduleConfig
    from hforge.train.loop import (
        MetricsLog,
        atom_batches,
        config_differences,
        ema_decay,
        lr_lambda,
        rng_state,
        save_checkpoint,
        seed_everything,
        set_rng_state,
        update_ema,
        validation_record,
    )

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    log = MetricsLog(out_dir / "metrics.jsonl")
    basis = store.basis
    processor = _processor(basis)
    seed_everything(seed)

    def read(k: int) -> "HSData":
        data = store.read(k)
        data.basis = basis
        return data

    coefficients = None
    if target == "residual":
        from hforge.models.baseline import fit_baseline

        basis.require_radials()
        coefficients = fit_baseline(basis, (read(k) for k in train_idx))

    # training graphs, prepared once (labels: H, or H - H0, minus the point matrices; float32)
    labelled = []
    for k in train_idx:
        data = read(k)
        values = data.h_unshifted[0]
        if coefficients is not None:
            values = values - _baseline(basis, data, coefficients)
        labelled.append((data, values))
    point = _fit_point_matrices(labelled, basis) if settings.point_matrix else None
    items, sizes = [], []
    for data, values in labelled:
        if point is not None:
            values = _add_point_matrices(data, values, point, basis, sign=-1.0)
        items.append(to_graph2mat(data, processor, values))
        sizes.append(data.n_atoms)
    del labelled
    r_max = settings.r_max if settings.r_max is not None else 2.0 * float(processor.basis_table.maxR())
    avg = settings.avg_num_neighbors
    if avg is None:
        avg = float(sum(int(g.edge_index.shape[1]) for g in items) / sum(sizes))
    model = _build_model(settings, processor, r_max, avg)
    # the EMA of the weights, kept as a state dict (graph2mat's modules hold a python module: no deepcopy)
    parameter_names = {name for name, _ in model.named_parameters()}
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if settings.ema_decay > 0 else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=settings.weight_decay)
    schedule_config = ScheduleConfig(name=schedule, warmup_steps=settings.warmup_steps, min_lr_ratio=settings.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule_config, max_steps))
    run = {
        "step": 0, "epoch": 0, "batch_in_epoch": 0, "best": math.inf, "train_time_s": 0.0, "elapsed_s": 0.0,
        "structures_seen": 0, "atoms_seen": 0, "cpu_s": 0.0,
    }
    identity = {
        "settings": settings.to_dict(), "target": target, "train": train_names, "val": val_names,
        "batch_atoms": batch_atoms, "lr": lr, "seed": seed, "schedule": schedule,
    }

    if resume:
        payload = _read_checkpoint(last_path)
        state = payload["extra"]["training"]
        differ = config_differences(state["identity"], identity)
        if differ:
            raise ConfigError(f"resume: the run differs from the checkpoint's in {differ}", path=last_path)
        model.load_state_dict(state["model_state"])
        if ema is not None:
            ema = {k: v.clone() for k, v in payload["state_dict"].items()}
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        run.update(state["run"])
        log.trim(run["step"])  # the steps after the checkpoint are repeated
    else:
        log.path.unlink(missing_ok=True)

    def save(path: Path) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "hforge_version": hforge.__version__,
            "graph2mat_version": version, "settings": settings.to_dict(), "basis": json.dumps(basis.to_dict()),
            "target": target,
            "baseline_coefficients": None if coefficients is None else torch.from_numpy(np.asarray(coefficients, np.float64)),
            "point_matrices": None if point is None else [torch.from_numpy(p) for p in point],
            "r_max": float(r_max), "avg_num_neighbors": float(avg), "step": run["step"],
            "state_dict": ema if ema is not None else model.state_dict(),
            "extra": {"training": {
                "identity": identity, "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "run": dict(run),
            }},
        }
        save_checkpoint(payload, path)

    last_validation: dict[str, Any] = {}

    def validate() -> None:
        """Metrics of the EMA weights (swapped into the model for the time of the validation)."""
        nonlocal last_validation
        raw = None
        if ema is not None:
            raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ema)
        try:
            predictor = Graph2MatPredictor(model, processor, basis, settings, target, coefficients, point)
            evaluation = evaluate_graph2mat(predictor, (read(k) for k in val_idx), eigenvalues=settings.val_eigenvalues)
        finally:
            if raw is not None:
                model.load_state_dict(raw)
        last_validation = validation_record(evaluation)
        log.append({"step": run["step"], "epoch": run["epoch"], "val": last_validation})
        score = last_validation["mean"]["h_mae_meV"]
        if score < run["best"]:
            run["best"] = score
            save(best_path)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=run["step"], desc="train graph2mat", unit="step", dynamic_ncols=True)
    start, elapsed_before = time.perf_counter(), run["elapsed_s"]
    validated_at = -1
    while run["step"] < max_steps:
        batches = atom_batches(sizes, batch_atoms, seed, run["epoch"])
        batch = batches[run["batch_in_epoch"]]
        if settings.threads is not None and torch.get_num_threads() != settings.threads:
            torch.set_num_threads(settings.threads)  # numba's OpenMP kernels (H0) can reset it
        t0, c0 = time.perf_counter(), time.process_time()
        graph = _batch([items[k] for k in sorted(batch)])
        model.train()
        optimizer.zero_grad(set_to_none=True)
        # TorchScript's profiling executor re-optimises e3nn's scripted modules after their first calls
        # (another float summation order): off, so that a resumed run repeats the uninterrupted one exactly
        with torch.jit.optimized_execution(False):
            out = model(graph)
            loss = _loss(settings.loss, out, graph)
            loss.backward()
        grad_norm = float("nan")
        if settings.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        current_lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if ema is not None:  # as HForge's trainer: lerp the parameters, copy the buffers
            weights = model.state_dict()
            averaged = {name for name, value in weights.items() if name in parameter_names and value.is_floating_point()}
            update_ema(
                ((ema[name], weights[name]) for name in averaged),
                ((ema[name], weights[name]) for name in weights if name not in averaged),
                ema_decay(run["step"], settings.ema_decay),
            )
        run["train_time_s"] += time.perf_counter() - t0
        run["cpu_s"] += time.process_time() - c0
        atoms = sum(sizes[k] for k in batch)
        run["structures_seen"] += len(batch)
        run["atoms_seen"] += atoms
        run["step"] += 1
        run["batch_in_epoch"] += 1
        if run["batch_in_epoch"] == len(batches):
            run["epoch"], run["batch_in_epoch"] = run["epoch"] + 1, 0
        run["elapsed_s"] = elapsed_before + time.perf_counter() - start
        value = float(loss.detach())
        if run["step"] % settings.log_every == 0:
            log.append({"step": run["step"], "epoch": run["epoch"], "loss": value, "loss_h": value, "lr": current_lr,
                        "grad_norm": grad_norm, "structures": len(batch), "atoms": atoms})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3g}", lr=f"{current_lr:.2g}")
        if run["step"] % settings.val_every == 0:
            validate()
            validated_at = run["step"]
        if run["step"] % settings.checkpoint_every == 0:
            save(last_path)
    if bar is not None:
        bar.close()
    if validated_at != run["step"]:
        validate()
    save(last_path)
    _finish(out_dir, run, last_validation, log.records(), best_path, last_path)
    return last_path


def _finish(out_dir: Path, run: dict[str, Any], validation: dict[str, Any], records: list[dict[str, Any]],
            best_path: Path, last_path: Path) -> None:
    """``summary.json`` (strict JSON, atomic) and ``learning_curve.png``, as HForge's trainer writes them."""
    from hforge.files import write_json
    from hforge.train.curves import plot_learning_curves

    seconds = run["train_time_s"]
    summary = {
        "out_dir": str(out_dir), "last": str(last_path), "best": str(best_path) if best_path.is_file() else None,
        "steps": run["step"], "validation": validation,
        "throughput": {
            "train_time_s": seconds, "cpu_s": run["cpu_s"],
            "s_per_step": seconds / run["step"] if run["step"] else float("nan"),
            "structures_per_s": run["structures_seen"] / seconds if seconds else float("nan"),
            "atoms_per_s": run["atoms_seen"] / seconds if seconds else float("nan"),
            "load_average": list(os.getloadavg()),
        },
    }
    write_json(out_dir / "summary.json", summary)
    plot_learning_curves(records, out_dir / "learning_curve.png", title="graph2mat")
