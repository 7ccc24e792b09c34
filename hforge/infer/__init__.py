"""Inference: trained models as predictors of H and S, from small molecules to cells of 10^4+ atoms.

- :func:`load`: a checkpoint path or a bundled model name (``"abn-dzp"``) -> :class:`Predictor`,
  on ``device="cuda"`` or ``"cpu"`` (default: CUDA when usable).
- :meth:`Predictor.predict`: structure -> ``sisl.Hamiltonian`` (H with S), whole cell, streamed by
  atom ranges or in spatial chunks with a halo (bounded memory, same result);
  :meth:`Predictor.predict_csr` (the CSR where it was assembled: CuPy on CUDA); :meth:`Predictor.predict_many`.
- :func:`predict_hamiltonian`: a model (not a checkpoint) and a structure -> ``sisl.Hamiltonian``
  (the predictor's whole-cell route, on the model's device).
- :func:`predict_distributed` / :func:`merge_parts`: chunks spread over torch.distributed ranks.
- :func:`write_hamiltonian`: ``.TSHS`` / ``.nc`` written atomically.

The predictor's parts, each readable alone: :mod:`~hforge.infer.problem` (structure -> pairs and
output layout), :mod:`~hforge.infer.plan` (mode and parts within a memory budget),
:mod:`~hforge.infer.passes` (the model's passes into the output buffers), :mod:`~hforge.infer.report`.
"""

from __future__ import annotations

from hforge.infer.load import PRETRAINED_DIR, load, pretrained_names
from hforge.infer.output import check_output_path, write_hamiltonian
from hforge.infer.predictor import Predictor, predict_hamiltonian
from hforge.infer.problem import read_frames, read_structure
from hforge.infer.report import PREDICTION_STAGES, PredictionReport, peak_rss_bytes

__all__ = [
    "PREDICTION_STAGES",
    "PRETRAINED_DIR",
    "PredictionReport",
    "Predictor",
    "check_output_path",
    "load",
    "peak_rss_bytes",
    "predict_hamiltonian",
    "pretrained_names",
    "read_frames",
    "read_structure",
    "write_hamiltonian",
]
