"""emovec: emotion steering of Hugging Face causal language models at inference time.

>>> from emovec import load_model, EmotionVectors, steer
>>> model, tok = load_model()
>>> vecs = EmotionVectors.load("vectors/smollm2-135m-instruct.safetensors")
>>> with steer(model, vecs, joy=1.0):
...     model.generate(...)
"""

from emovec._version import __version__
from emovec.control_vectors import export_control_vector, load_control_vector
from emovec.datasets import BASIC_EMOTIONS, PromptPair, default_pairs, read_pairs
from emovec.extraction import extract
from emovec.layers import BlockDiscoveryError, find_blocks
from emovec.models import load_model
from emovec.steering import Schedule, Steering, VectorModelMismatchError, steer
from emovec.training import train
from emovec.vectors import EmotionVectors, Placement, SteeringVector, VectorFileError

__all__ = [
    "BASIC_EMOTIONS",
    "BlockDiscoveryError",
    "EmotionVectors",
    "Placement",
    "PromptPair",
    "Schedule",
    "Steering",
    "SteeringVector",
    "VectorFileError",
    "VectorModelMismatchError",
    "__version__",
    "default_pairs",
    "export_control_vector",
    "extract",
    "find_blocks",
    "load_control_vector",
    "load_model",
    "read_pairs",
    "steer",
    "train",
]
