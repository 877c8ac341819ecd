"""The reach anomaly model: an Isolation Forest over actor-window reach features.

Why an Isolation Forest (docs/design.md question 3; docs/detection-background.md §2 "Per-identity ML
baseline", "Peer-group baseline"): reach features are counts with heavy tails and no labels; the
forest needs no scaling and no distribution assumption, isolates rows that are extreme on *any*
combination of features, and trains in well under a second on a month of actor-days. The model
only *ranks*; :mod:`ztaudit.detectors.reach` then requires a robust, explainable excess over the
actor's own history and over its peers before a finding is raised
(:func:`ztaudit.detectors.reach_scoring.explain`), so the finding text never depends on the
forest's internals.

scikit-learn conventions: parameters are set in ``__init__`` and stored unchanged, learned
attributes end in ``_``, ``random_state`` is fixed (config ``reach.random_state``).

Persistence: ``LAKE/_state/reach-model-v<VERSION>.pkl`` plus ``.json`` metadata (version, feature
names, training range, row count, library versions, sha256 of the pickle). The pickle is only
loaded when the metadata matches *and* the sha256 matches, so a truncated or swapped file is
retrained rather than trusted; the lake's ``_state`` directory must be as trusted as the code
itself (pickle loading executes code), which is why it is written 0600 like the rest of the lake.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest

from ztaudit.core.files import makedirs, write_bytes_atomic

#: Bump when the feature vector or the estimator changes: old persisted models are then ignored.
MODEL_VERSION = 3

FloatArray = npt.NDArray[np.float64]


class ReachModel(BaseEstimator):  # type: ignore[misc]
    """Isolation Forest scoring actor-windows; ``score_samples`` is higher for more anomalous rows.

    ``threshold_`` is the (1 - contamination) quantile of the training scores: rows at or above it
    are what the model alone would call anomalous.
    """

    def __init__(self, n_estimators: int = 200, max_samples: int | str = "auto",
                 contamination: float = 0.001, random_state: int = 7) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.random_state = random_state

    def fit(self, X: FloatArray, y: Any = None) -> ReachModel:
        """Fit the forest on baseline rows ``X`` (n_samples × n_features)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError("ReachModel.fit needs a non-empty 2-D array")
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, max_samples=self.max_samples,
            random_state=self.random_state, n_jobs=1,
        ).fit(X)
        train = -self.forest_.score_samples(X)
        self.threshold_ = float(np.quantile(train, 1.0 - self.contamination))
        self.train_median_ = float(np.median(train))
        #: training-score quantiles 0, 0.001, ..., 1 (for :meth:`threshold_for`)
        self.score_quantiles_ = np.quantile(train, np.linspace(0.0, 1.0, 1001))
        self.n_features_in_ = X.shape[1]
        self.n_samples_fit_ = X.shape[0]
        return self

    def score_samples(self, X: FloatArray) -> FloatArray:
        """Anomaly score per row: higher is more anomalous (sklearn's sign, flipped)."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        return np.asarray(-self.forest_.score_samples(X), dtype=np.float64)

    def threshold_for(self, top_share: float) -> float:
        """Score at which a row is among the ``top_share`` most anomalous training rows."""
        q = min(1.0, max(0.0, 1.0 - float(top_share)))
        return float(np.interp(q, np.linspace(0.0, 1.0, 1001), self.score_quantiles_))

    def predict(self, X: FloatArray) -> npt.NDArray[np.bool_]:
        """True where the score reaches ``threshold_``."""
        return np.asarray(self.score_samples(X) >= self.threshold_)


def _paths(lake: str | os.PathLike[str]) -> tuple[Path, Path]:
    state = Path(lake) / "_state"
    return state / f"reach-model-v{MODEL_VERSION}.pkl", state / f"reach-model-v{MODEL_VERSION}.json"


def save_model(model: ReachModel, lake: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Persist ``model`` and its metadata under ``LAKE/_state`` (atomic rename, 0600)."""
    pkl, js = _paths(lake)
    makedirs(pkl.parent)  # 0700 whatever the umask, like every lake directory
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    full = {**meta, "version": MODEL_VERSION, "sha256": hashlib.sha256(blob).hexdigest(),
            "sklearn": sklearn.__version__, "numpy": np.__version__,
            "threshold": model.threshold_, "n_samples": model.n_samples_fit_,
            "params": model.get_params()}
    for path, data in ((pkl, blob), (js, json.dumps(full, sort_keys=True, default=str).encode())):
        write_bytes_atomic(path, data)
    return pkl


def load_model(lake: str | os.PathLike[str], expect: dict[str, Any]) -> ReachModel | None:
    """The persisted model when its metadata matches ``expect`` (and the file hash), else None."""
    pkl, js = _paths(lake)
    try:
        meta = json.loads(js.read_text())
        blob = pkl.read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("version") != MODEL_VERSION or meta.get("sklearn") != sklearn.__version__:
        return None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        return None
    if any(json.dumps(meta.get(k), default=str) != json.dumps(v, default=str) for k, v in expect.items()):
        return None
    model = pickle.loads(blob)  # noqa: S301 - hash-checked file in the lake's own _state directory
    return model if isinstance(model, ReachModel) else None


def feature_matrix(values: dict[str, Sequence[float]], names: Sequence[str]) -> FloatArray:
    """Stack named columns into an (n × len(names)) float matrix, NaN → 0."""
    cols = [np.nan_to_num(np.asarray(values[n], dtype=np.float64)) for n in names]
    if not cols:
        return np.zeros((0, 0))
    return np.column_stack(cols)
