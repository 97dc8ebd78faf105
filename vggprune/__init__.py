"""vggprune: build VGG11, prune it exactly (torch-pruning or by hand), fine-tune, evaluate and time it."""

from vggprune.models import VGG11, VGGSpec, build_from_spec, build_vgg11
from vggprune.pruning import prune

__all__ = ["VGG11", "VGGSpec", "build_from_spec", "build_vgg11", "prune"]
__version__ = "0.1.0"
