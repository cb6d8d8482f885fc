import numpy as np
import pytest

from datamodules.folds import fold_split, stratified_folds


def test_stratified_folds_partition_and_balance():
    labels = np.array([0] * 23 + [1] * 11 + [2] * 6)
    folds = stratified_folds(labels, 5, seed=3)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(3):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert (stratified_folds(labels, 5, seed=3) == folds).all()
    assert not (stratified_folds(labels, 5, seed=4) == folds).all()


def test_fold_split_is_disjoint_covers_everything_and_tests_each_item_once():
    labels = np.array([0] * 30 + [1] * 12)
    tested = []
    for fold in range(4):
        train, val, test = fold_split(labels, fold, 4, 0.1, seed=0)
        assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
        assert len(train) + len(val) + len(test) == labels.size
        assert set(labels[val]) == {0, 1}  # stratified validation
        tested.extend(test)
    assert sorted(tested) == list(range(labels.size))


@pytest.mark.parametrize("kwargs, message", [(dict(fold=4), "fold must be in 0..3"),
                                             (dict(val_fraction=1.0), "val_fraction must be in")])
def test_bad_fold_arguments(kwargs, message):
    args = dict(labels=np.arange(10) % 2, fold=0, num_folds=4, val_fraction=0.1, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        fold_split(**args)
