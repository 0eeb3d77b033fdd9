"""Every dataset a script can name: the single-concept ones (captions.py) and scenes (scenes.py).

They live apart because scenes' words come from scene_grammar.py, which takes its digit and colour
words from captions.py.
"""

from captions import DATASETS as CONCEPT_DATASETS
from errors import UserError
from scenes import SCENES

DATASETS = CONCEPT_DATASETS | {SCENES.name: SCENES}


def get_dataset(name):
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]
