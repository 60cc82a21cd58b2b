"""Evaluation: how emotional, on topic, clean and fluent steered answers are, and calibration.

The core (load → layers → extract → vectors → steer → generate) never imports this package;
it uses the core. Its modules:

- :mod:`~emovec.evaluation.sweep`: :func:`evaluate`, answers under every (recipe, emotion, α);
- :mod:`~emovec.evaluation.recipes`: :class:`Recipe`, the ways of making answers emotional;
- :mod:`~emovec.evaluation.report`: :class:`EvaluationReport`, summaries, tables and plots;
- :mod:`~emovec.evaluation.records`: the typed rows a report holds;
- :mod:`~emovec.evaluation.tolerance`: :class:`Tolerance` and :func:`recommend_alpha`;
- :mod:`~emovec.evaluation.scoring`: the emotion judges (prototypes, nade, classifiers);
- :mod:`~emovec.evaluation.metrics` and :mod:`~emovec.evaluation.topic`: text metrics,
  topic similarity and retention;
- :mod:`~emovec.evaluation.calibration` and :mod:`~emovec.evaluation.trials`:
  :func:`calibrate`, the search for each emotion's placement;
- :mod:`~emovec.evaluation.choice`: the one rule that picks a setting from scored candidates;
- :mod:`~emovec.evaluation.plots`: the success-against-retention front.

It needs the ``[eval]`` extra (and the data packages ``scripts/setup.sh`` installs).
"""

from emovec.evaluation.calibration import calibrate
from emovec.evaluation.recipes import PERSONAS, PROMPT_INSTRUCTIONS, Recipe
from emovec.evaluation.records import SummaryRow
from emovec.evaluation.report import EvaluationReport
from emovec.evaluation.sweep import evaluate
from emovec.evaluation.tolerance import Tolerance, recommend_alpha
from emovec.evaluation.trials import Calibration, Trial

__all__ = [
    "PERSONAS",
    "PROMPT_INSTRUCTIONS",
    "Calibration",
    "EvaluationReport",
    "Recipe",
    "SummaryRow",
    "Tolerance",
    "Trial",
    "calibrate",
    "evaluate",
    "recommend_alpha",
]
