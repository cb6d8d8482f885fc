"""LightningDataModules: the data side of every recot task. Loaders take a ``data_dir`` and never write into it."""
from datamodules.alignment import AlignmentDataModule
from datamodules.errors import DataFormatError
from datamodules.ged import GEDDataModule, SyntheticGED
from datamodules.graph_sets import GraphSetDataModule, SyntheticGraphSets
from datamodules.interactions import InteractionData, InteractionDataModule, TableSpec, load_interactions
from datamodules.mil import MILDataModule, SyntheticBags
from datamodules.synthetic import SyntheticSpec
from datamodules.tu import TUGraphDataModule, TUGraphPretrainDataModule
from datamodules.user_vectors import UserVectorData, UserVectorDataModule, load_user_vectors

__all__ = ["DataFormatError", "InteractionData", "InteractionDataModule", "TableSpec", "SyntheticSpec",
           "load_interactions", "TUGraphDataModule", "TUGraphPretrainDataModule", "MILDataModule", "SyntheticBags",
           "GraphSetDataModule",
           "SyntheticGraphSets", "UserVectorData", "UserVectorDataModule", "load_user_vectors", "GEDDataModule",
           "SyntheticGED", "AlignmentDataModule"]
