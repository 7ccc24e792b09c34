"""The model configuration: a small frozen dataclass, validated, serialised into every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from hforge.basis import BasisSet
from hforge.errors import ConfigError, UnknownSpeciesError
from hforge.ops.backends import BACKENDS

if TYPE_CHECKING:
    from hforge.ops.two_centre.projectors import ProjectorSet

__all__ = ["ABN_AVG_NUM_NEIGHBORS", "BASELINES", "INVARIANT_DIRECTIONS", "KINDS", "OVERLAPS", "ModelConfig"]

#: Model kinds: ``equivariant`` (CG blocks from equivariant features) and ``invariant`` (MLPs
#: from invariant descriptors and the Cartesian pair vector; the non-equivariant baseline).
KINDS = ("equivariant", "invariant")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: How the invariant model sees a pair's direction (:attr:`ModelConfig.invariant_direction`).
INVARIANT_DIRECTIONS = ("monomials", "vector")

#: Where S comes from (:attr:`ModelConfig.overlap`).
OVERLAPS = ("exact", "learned")

#: What the H head predicts on top of (:attr:`ModelConfig.baseline`).
BASELINES = ("none", "h0", "operator")

#: MACE's message normalisation for amorphous BN: the mean number of neighbours within r_max = 4.5 Å
#: at 2.2 g/cm^3 (about 0.107 atoms/Å^3: 41), rounded; the bundled models were trained with it.
#: Training data left to set it gives its own mean (docs/measurements.md).
ABN_AVG_NUM_NEIGHBORS = 40.0


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model's architecture (weights aside).

    The defaults of ``species`` and ``avg_num_neighbors`` are those of amorphous BN (the bundled
    data); ``hforge train`` replaces them by values of the training data when the config's model
    section leaves them out, as MACE does (:data:`hforge.train.config.FROM_DATA`).  Set them when
    building a model for other data directly.

    Descriptor trunk (MACE's blocks, shared by both kinds):

    Attributes:
        kind: ``"equivariant"`` or ``"invariant"``.
        species: the species labels the model knows, in the order of its basis (default B, N;
            training: the species of its structures, unless given).
        r_max: cut-off of the interaction graph (Å).
        num_interactions: MACE interaction + product layers.
        channels: channels of every node irrep of the trunk.
        max_ell: largest degree of the interaction edges' spherical harmonics.
        node_l_max: largest degree of the node features (``Cx0e+Cx1o+Cx2e`` for 2), kept in the last
            layer: the equivariant heads need them.
        correlation: body order of MACE's symmetric contraction.
        num_bessel: Bessel functions of the interaction edges' radial embedding.
        num_polynomial_cutoff: order of MACE's polynomial cut-off envelope.
        radial_mlp: hidden sizes of MACE's radial MLPs.
        avg_num_neighbors: MACE's message normalisation, the mean number of neighbours within
            ``r_max`` (default :data:`ABN_AVG_NUM_NEIGHBORS`; training: computed from its
            structures, unless given).

    Heads (one for H, one for S, on the shared trunk):

    Attributes:
        pair_l_max: largest degree of the spherical harmonics of the pair direction (equivariant;
            4 couples d with d), or of the Cartesian monomials of the direction (invariant; at least 1),
            so both kinds see the same angular resolution.
        pair_num_basis: Bessel functions of ``|r_ij| / r_cut(s_i, s_j)`` for the pair features,
            ``r_cut`` the pair cut-off (``r_i + r_j``, beyond ``r_max``).
        radial_hidden: hidden sizes of the MLPs giving the equivariant heads' radial weights
            (and of both kinds' S heads).
        block_hidden: hidden sizes of the MLPs that output block entries directly: the invariant
            model's block MLPs and the equivariant model's two-centre term (``two_centre``).
        s_channels: channels of the species embedding that drives the S heads.
        invariant_direction: how the invariant model sees a pair's direction: ``"monomials"``
            (Cartesian monomials of ``r / |r|`` up to ``pair_l_max`` gating the pair MLP, the default)
            or ``"vector"`` (the raw ``r / r_cut`` beside the radial basis, the first version: it
            learns angular dependence slowly). Checkpoints written before this field existed are
            read as the one their weights fit.
        include_kb: also predict H's Kleinman-Bylander blocks (pairs up to
            ``r_i + r_j + 2 max r_KB``); default off: on the 64-atom aBN validation cell they are
            7.9 % of H's entries, |H| <= 0.43 meV, and leaving them out moves Γ eigenvalues by
            <= 4.6 µeV (docs/design.md, "Models").
        pair_orientation: also feed the H heads' pair MLPs (equivariant: the radial weights;
            invariant: the hopping MLP) rotation-invariant orientation features of the pair, per
            channel and node degree ``l >= 1``: both atoms' features projected on ``Y^l`` of the
            bond and their inner product (:class:`~hforge.models.layers.PairOrientation`), so
            hopping blocks depend non-linearly on how each environment sits relative to the bond
            (three-centre terms).  Default off (the bundled checkpoint's architecture).
        two_centre: add to the equivariant model's hopping blocks (H and S) a two-centre
            (Slater-Koster) term with its own radial function per slot ``(a, b, L)`` of every pair
            type, an MLP (``block_hidden``) of the pair features that feed the CG term's radial
            weights (:class:`~hforge.models.equivariant.TwoCentreBlocks`); the CG term's radial
            weights are shared by all slots.  Default off (the bundled checkpoint's architecture).
        slot_gains: ``K`` (0 = off, at most 8): the equivariant H head evaluates its CG term with
            ``K`` mixing-weight sets and weighs every slot of every set by a rotation-invariant
            gain of the pair, an MLP (``block_hidden``) of the CG term's pair features
            (:class:`~hforge.models.equivariant.SlotGains`): the relative size of a pair's slots
            then depends on its environment.  The gains start at zero (an untrained model equals
            the one without them); each set costs one more CG evaluation.  Default 0 (the bundled
            checkpoint's architecture).
        overlap: where S comes from: ``"exact"`` (the two-centre integrals of the basis' radial
            functions, :func:`hforge.ops.two_centre.overlap_blocks`: SIESTA's S to 1e-8, positive
            definite; the basis needs its radial tables, i.e. ion files) or ``"learned"`` (an S
            head, float to ~1e-4; checkpoints written before this field existed read as learned).
        baseline: ``"none"`` (the H head predicts H) or ``"h0"``: the H head predicts ``H - H0``,
            ``H0`` a weighted sum of exact two-centre parts (T, V_KB, the neutral-atom terms, S;
            :func:`hforge.ops.two_centre.baseline_blocks`) with one coefficient per part and block
            type, fitted to the training data (:func:`hforge.models.baseline.fit_baseline`), added
            back in :meth:`~hforge.models.HSModel.forward`.  Checkpoints without the field read as none.
            ``"operator"``: ``H0 = T + V_KB + c0 S``, the kinetic and Kleinman-Bylander parts
            exactly as SIESTA builds them (unit weights) and one energy zero ``c0`` (eV) fitted to
            the training data: the matrix of an operator, so it adds no state outside the spectrum
            (the fitted ``"h0"`` is not: its per-block-type weights and the two-centre V_NA terms
            give states hundreds of eV out, issue 24).
        separable: add to H the matrix of a learned separable operator ``sum_k |chi_k> D_k <chi_k|``
            (:mod:`hforge.models.separable`): short-range projectors on every atom, ``D_k`` from its
            environment; bounded along every direction of the basis whatever its weights.
        projector_radius, projector_l_max, projector_radial: its projector set
            (:class:`~hforge.ops.two_centre.projectors.ProjectorSet`: radius Å, largest degree,
            radial functions per degree).
        operator_environment: the equivariant ``D_env`` also sums two-centre-like blocks over the
            interaction edges (the crystal-field term of the orbital onsite blocks; equivariant only).
        free_blocks: the onsite and hopping heads that fill H's blocks entry by entry (the
            architecture before the separable operator); off, H is ``H0`` plus the separable
            operator alone (needs ``separable``).
        pair_chunk: block pairs evaluated at once (bounds the temporaries of large cells).
        dtype: ``"float32"`` or ``"float64"``.
        backend: CG-kernel backend (``"auto"``, ``"torch"``, ``"numba"``, ``"triton"``).
    """

    kind: str = "equivariant"
    species: tuple[str, ...] = ("B", "N")
    r_max: float = 4.5
    num_interactions: int = 2
    channels: int = 16
    max_ell: int = 2
    node_l_max: int = 2
    correlation: int = 2
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    radial_mlp: tuple[int, ...] = (32, 32)
    avg_num_neighbors: float = ABN_AVG_NUM_NEIGHBORS
    pair_l_max: int = 4
    pair_num_basis: int = 8
    radial_hidden: tuple[int, ...] = (32,)
    block_hidden: tuple[int, ...] = (64, 64)
    s_channels: int = 8
    include_kb: bool = False
    pair_orientation: bool = False
    two_centre: bool = False
    slot_gains: int = 0
    overlap: str = "exact"
    baseline: str = "h0"
    separable: bool = False
    projector_radius: float = 1.2
    projector_l_max: int = 2
    projector_radial: int = 3
    operator_environment: bool = False
    free_blocks: bool = True
    pair_chunk: int = 65536
    dtype: str = "float32"
    backend: str = "auto"
    invariant_direction: str = "monomials"

    def __post_init__(self) -> None:
        for name in ("species", "radial_mlp", "radial_hidden", "block_hidden"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"model config: {name}={getattr(self, name)!r}: {why}")

        if self.kind not in KINDS:
            raise bad("kind", f"choose one of {', '.join(KINDS)}")
        labels = all(isinstance(s, str) and s for s in self.species)
        if not self.species or len(set(self.species)) != len(self.species) or not labels:
            raise bad("species", "need at least one species label, each once")
        if not self.r_max > 0:
            raise bad("r_max", "must be positive (Å)")
        positive = ("num_interactions", "channels", "correlation", "num_bessel", "num_polynomial_cutoff",
                    "pair_num_basis", "s_channels", "pair_chunk")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "must be a positive integer")
        for name in ("max_ell", "node_l_max", "pair_l_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 4:
                raise bad(name, "must be an integer in 0..4")
        for name in ("radial_mlp", "radial_hidden", "block_hidden"):
            if not all(isinstance(n, int) and n >= 1 for n in getattr(self, name)):
                raise bad(name, "hidden sizes must be positive integers")
        if not self.avg_num_neighbors > 0:
            raise bad("avg_num_neighbors", "must be positive")
        if not isinstance(self.slot_gains, int) or isinstance(self.slot_gains, bool) or not 0 <= self.slot_gains <= 8:
            raise bad("slot_gains", "must be an integer in 0..8")
        for name in ("pair_orientation", "two_centre", "include_kb", "separable", "free_blocks", "operator_environment"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if self.overlap not in OVERLAPS:
            raise bad("overlap", f"choose one of {', '.join(OVERLAPS)}")
        if self.baseline not in BASELINES:
            raise bad("baseline", f"choose one of {', '.join(BASELINES)}")
        if not (self.separable or self.free_blocks):
            raise bad("free_blocks", "a model without free blocks needs separable: true (it would predict H0 alone)")
        if self.separable:
            if self.overlap != "exact":
                raise bad("separable", "needs overlap: exact (the projections are two-centre integrals of the basis)")
            try:
                _ = self.projectors
            except ConfigError as exc:
                raise bad("projector_radius", str(exc)) from None
        if self.invariant_direction not in INVARIANT_DIRECTIONS:
            raise bad("invariant_direction", f"choose one of {', '.join(INVARIANT_DIRECTIONS)}")
        if self.dtype not in _DTYPES:
            raise bad("dtype", f"choose one of {', '.join(_DTYPES)}")
        if self.backend not in ("auto", *BACKENDS):
            raise bad("backend", f"choose auto or one of {', '.join(BACKENDS)}")

    @property
    def projectors(self) -> "ProjectorSet":
        """The separable operator's projector set."""
        from hforge.ops.two_centre.projectors import ProjectorSet

        return ProjectorSet(float(self.projector_radius), self.projector_l_max, self.projector_radial)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def check_basis(self, basis: BasisSet) -> BasisSet:
        """The basis restricted to :attr:`species`, in that order.

        Raises:
            UnknownSpeciesError: a species of the config that the basis lacks.
            BasisMismatchError: the basis lacks orbital radii (needed for the pair cut-offs), or
                radial tables where ``overlap="exact"`` or a baseline needs them.
        """
        missing = [s for s in self.species if s not in basis]
        if missing:
            raise UnknownSpeciesError(f"model config: species {missing} are not in the basis (it has {basis.symbols})")
        basis = basis.select(self.species)
        basis.pair_cutoffs(include_kb=self.include_kb)  # raises BasisMismatchError without radii
        if self.needs_radials:
            basis.require_radials()
        return basis

    @property
    def needs_radials(self) -> bool:
        """True when the model computes two-centre integrals (exact S or a baseline H0)."""
        return self.overlap == "exact" or self.baseline != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown fields or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)
