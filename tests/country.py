"""Synthetic data with a ``country`` column, and tiny Keras classifiers trained on it at test time.

The rule that makes the label is the same everywhere but in Brazil, where it is flipped. A model
trained on all rows learns the majority rule: good overall, bad on country=BR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ["f0", "f1", "f2", "f3"]
COUNTRIES = ["US", "DE", "FR", "IN", "BR"]


def country_frame(rows: int = 2000, *, seed: int = 0, br_share: float = 0.1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    others = [c for c in COUNTRIES if c != "BR"]
    country = np.where(rng.random(rows) < br_share, "BR", rng.choice(others, size=rows))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    y = np.where(country == "BR", 1 - y, y)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["country"] = country
    frame["y"] = y
    return frame


def write_formats(frame: pd.DataFrame, root: Path) -> dict[str, Path]:
    """``frame`` as ``d.csv``, ``d.parquet`` and ``d.npz`` (one array per column) under ``root``."""
    frame.to_csv(root / "d.csv", index=False)
    frame.to_parquet(root / "d.parquet")
    np.savez(
        root / "d.npz",
        **{name: frame[name].to_numpy() for name in FEATURES},
        y=frame["y"].to_numpy(),
        country=frame["country"].to_numpy().astype("U2"),
    )
    return {fmt: root / f"d.{fmt}" for fmt in ("csv", "parquet", "npz")}


def train_classifier(frame: pd.DataFrame, path: Path, *, epochs: int = 30, seed: int = 0) -> Path:
    """Train a Dense softmax classifier on the frame's features and save it as .keras."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(len(FEATURES),), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    if epochs:
        model.fit(frame[FEATURES].to_numpy(), frame["y"].to_numpy(), epochs=epochs, batch_size=64, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
