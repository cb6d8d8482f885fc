"""torch.nn modules: recommenders (MF, LightGCN, ...) and the building blocks of the OT methods."""
from recot.nn.base import EmbeddingTables, GraphData, Recommender, take_rows
from recot.nn.classifiers import BagClassifier, GraphClassifier, GraphSetClassifier
from recot.nn.gotnet import GOTNet
from recot.nn.gtn import GTN
from recot.nn.item_cost import ItemCosineCost
from recot.nn.lightgcn import LightGCN
from recot.nn.ltocf import LTOCF
from recot.nn.mf import MF
from recot.nn.mostpop import MostPop
from recot.nn.neumf import NeuMF
from recot.nn.ngcf import NGCF
from recot.nn.pinsage import PinSage
from recot.nn.uservec import FactorizationRows, UserVectorModel
from recot.nn.vae import MultDAE, MultVAE

__all__ = ["Recommender", "EmbeddingTables", "GraphData", "take_rows", "MF", "LightGCN", "MostPop", "LTOCF",
           "NeuMF", "NGCF", "PinSage", "GOTNet", "GraphClassifier", "BagClassifier", "GraphSetClassifier",
           "UserVectorModel", "FactorizationRows", "MultVAE", "MultDAE", "ItemCosineCost", "GTN"]
