"""torch.nn modules: recommenders (MF, LightGCN, ...) and the building blocks of the OT methods."""
from recot.nn.base import EmbeddingTables, GraphData, Recommender, take_rows
from recot.nn.classifiers import BagClassifier, GraphClassifier, GraphSetClassifier
from recot.nn.lightgcn import LightGCN
from recot.nn.ltocf import LTOCF
from recot.nn.mf import MF
from recot.nn.mostpop import MostPop
from recot.nn.neumf import NeuMF
from recot.nn.ngcf import NGCF
from recot.nn.pinsage import PinSage

__all__ = ["Recommender", "EmbeddingTables", "GraphData", "take_rows", "MF", "LightGCN", "MostPop", "LTOCF",
           "NeuMF", "NGCF", "PinSage", "GraphClassifier", "BagClassifier", "GraphSetClassifier"]
