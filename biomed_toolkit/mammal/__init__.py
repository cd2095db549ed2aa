"""MAMMAL: multi-domain biomedical T5 (prompts, tokenizer, model, tasks, fine-tuning, demo model).

Everything is imported lazily so that ``import biomed_toolkit.mammal`` stays light.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> bt.mammal.predict(model, "dti", {"protein": ["MKT..."], "smiles": ["CCO"]})  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Public name -> submodule that defines it (add plotting/widgets names here).
_LAZY: dict[str, str] = {
    "load": "loading",
    "MammalModel": "modeling",
    "EncoderOutput": "modeling",
    "DecoderOutput": "modeling",
    "GenerationResult": "modeling",
    "MammalConfig": "configuration",
    "Tokenizer": "tokenizer",
    "Batch": "tokenizer",
    "predict": "tasks",
    "virtual_screen": "tasks",
    "screen_file": "screening",
    "ScreenResult": "screening",
    "TASKS": "tasks",
    "Task": "tasks",
    "finetune": "training",
    "ScalarRegressionModule": "training",
    "GenerationClassificationModule": "training",
    "kiba": "datasets",
    "esol": "datasets",
    "molecules": "plotting",
    "molecule_3d": "plotting",
    "protein": "plotting",
    "affinity_scatter": "plotting",
    "score_distribution": "plotting",
    "DrugTargetExplorer": "widgets",
}
_SUBMODULES = {"prompts", "tokenizer", "configuration", "modeling", "loading", "registry", "metrics", "splits",
               "baselines", "screening", "tasks", "training", "datasets", "plotting", "widgets"}

__all__ = sorted(_LAZY) + ["prompts"]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, submodules=_SUBMODULES)
