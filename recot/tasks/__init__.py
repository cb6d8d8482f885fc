"""LightningModules, one per task family; a method is an nn.Module passed in as ``model``."""
from recot.tasks.autoencoder import AutoencoderTask
from recot.tasks.base import Task
from recot.tasks.classification import ClassificationTask
from recot.tasks.ranking import RankingTask

__all__ = ["Task", "RankingTask", "ClassificationTask", "AutoencoderTask"]
