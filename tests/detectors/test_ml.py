"""ReachModel: scikit-learn conventions, reproducibility, persistence with metadata and hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ztaudit.detectors import ml
from ztaudit.detectors.reach_features import COUNT_FEATURES, SHARE_FEATURES
from ztaudit.detectors.reach_scoring import model_feature_names


def _data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(2000, 5))


def test_sklearn_conventions() -> None:
    m = ml.ReachModel(n_estimators=50, contamination=0.01, random_state=3)
    assert m.get_params() == {"n_estimators": 50, "max_samples": "auto", "contamination": 0.01, "random_state": 3}
    with pytest.raises(NotFittedError):
        check_is_fitted(m)
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "forest_")
    m.fit(_data())
    check_is_fitted(m)
    learned = [a for a in vars(m) if a.endswith("_") and not a.startswith("_")]
    assert {"forest_", "threshold_", "n_features_in_", "n_samples_fit_"} <= set(learned)


def test_reproducible_and_ranks_outliers() -> None:
    X = _data()
    a = ml.ReachModel(n_estimators=50, random_state=7).fit(X)
    b = ml.ReachModel(n_estimators=50, random_state=7).fit(X)
    probe = np.vstack([np.zeros((1, 5)), np.full((1, 5), 8.0)])
    assert np.array_equal(a.score_samples(probe), b.score_samples(probe))
    s = a.score_samples(probe)
    assert s[1] > s[0] and s[1] >= a.threshold_ and a.predict(probe).tolist() == [False, True]
    # the threshold flags about `contamination` of the training rows
    share = float(np.mean(a.score_samples(X) >= a.threshold_))
    assert share <= 0.01


def test_persistence_roundtrip_and_guards(tmp_path: Path) -> None:
    X = _data()
    m = ml.ReachModel(n_estimators=20, random_state=7).fit(X)
    meta = {"features": ["a", "b", "c", "d", "e"], "trained_until": "2026-03-01"}
    path = ml.save_model(m, tmp_path, meta)
    assert path.name == f"reach-model-v{ml.MODEL_VERSION}.pkl"
    assert (path.stat().st_mode & 0o777) == 0o600
    loaded = ml.load_model(tmp_path, meta)
    assert loaded is not None and np.array_equal(loaded.score_samples(X[:5]), m.score_samples(X[:5]))
    assert ml.load_model(tmp_path, {**meta, "trained_until": "2026-03-02"}) is None  # retrain on new baseline
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # tampered or truncated pickle is not trusted
    assert ml.load_model(tmp_path, meta) is None
    assert ml.load_model(tmp_path / "missing", meta) is None


def test_feature_names_cover_every_feature() -> None:
    names = model_feature_names()
    assert len(names) == 3 * len(COUNT_FEATURES) + len(SHARE_FEATURES)
    assert all(f"peer_excess_{f}" in names and f"hist_excess_{f}" in names for f in COUNT_FEATURES)
    X = ml.feature_matrix({n: [1.0, float("nan")] for n in names}, names)
    assert X.shape == (2, len(names)) and not np.isnan(X).any()
