"""LightningDataModules: the data side of every recot task. Loaders take a ``data_dir`` and never write into it."""
from datamodules.errors import DataFormatError
from datamodules.interactions import InteractionData, InteractionDataModule, TableSpec, load_interactions
from datamodules.synthetic import SyntheticSpec

__all__ = ["DataFormatError", "InteractionData", "InteractionDataModule", "TableSpec", "SyntheticSpec",
           "load_interactions"]
