"""LightningModules, one per task family; a method is an nn.Module passed in as ``model``."""
from recot.tasks.alignment import AlignmentTask
from recot.tasks.autoencoder import AutoencoderTask
from recot.tasks.base import Task
from recot.tasks.classification import ClassificationTask
from recot.tasks.contrastive import ContrastiveTask
from recot.tasks.ranking import RankingTask
from recot.tasks.regression import GraphDistanceTask

__all__ = ["Task", "RankingTask", "ClassificationTask", "ContrastiveTask", "AutoencoderTask", "GraphDistanceTask",
           "AlignmentTask"]
