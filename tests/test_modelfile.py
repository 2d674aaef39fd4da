"""Model files: a round trip, and every way a file can be wrong."""

import pickle

import numpy as np
import pytest
from _support import sparse_data

import fastmlp
from fastmlp import ModelFileError, modelfile


@pytest.fixture
def model(rng):
    X, y = sparse_data(rng, 60, 12, 3, np.float32)
    return fastmlp.train(X, np.array(["a", "b", "c"])[y], hidden=5, iterations=20)


def test_round_trip_keeps_everything_that_predicts(model, tmp_path, rng):
    path = modelfile.save_model(model, tmp_path / "m")
    assert path.name == "m.npz"
    loaded = modelfile.load_model(path)
    for name in ("W1", "b1", "W2", "b2", "classes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.dtype == np.float32 and loaded.activation == model.activation
    X = rng.random((7, 12))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def read(path):
    with np.load(path, allow_pickle=False) as archive:
        return dict(archive)


def rewrite(path, **changes):
    fields = read(path)
    fields.update(changes)
    fields["digest"] = np.array(modelfile._digest(fields))
    np.savez(path, **fields)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(version=np.array(2)), "format version 2; this fastmlp reads version 1"),
        (dict(format=np.array("other")), "not a fastmlp model file"),
        (dict(activation=np.array("swish")), "unknown activation 'swish'"),
        (dict(dtype=np.array("float16")), "dtype 'float16'"),
        (dict(n_features=np.array(13)), "W1 has shape (5, 12), expected (5, 13)"),
        (dict(classes=np.array(["a", "b"])), "2 class labels do not fit 3 output units"),
        (dict(b2=np.full((3, 1), np.nan, np.float32)), "b2 holds NaN"),
        (dict(W2=np.zeros((3, 5))), "W2 should be a 2-D float32 array"),
    ],
)
def test_inconsistent_files_are_rejected(model, tmp_path, changes, message):
    path = modelfile.save_model(model, tmp_path / "m.npz")
    rewrite(path, **changes)
    with pytest.raises(ModelFileError, match=str(path)) as caught:
        modelfile.load_model(path)
    assert message in str(caught.value)


def test_altered_truncated_foreign_and_pickled_files(model, tmp_path):
    path = modelfile.save_model(model, tmp_path / "m.npz")
    fields = read(path)
    fields["W1"] = fields["W1"] * 2  # altered without updating the digest
    np.savez(tmp_path / "altered.npz", **fields)
    with pytest.raises(ModelFileError, match="do not match their digest"):
        modelfile.load_model(tmp_path / "altered.npz")

    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="not a readable .npz model file"):
        modelfile.load_model(tmp_path / "cut.npz")

    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(ModelFileError, match="not a fastmlp model file"):
        modelfile.load_model(tmp_path / "foreign.npz")

    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ModelFileError, match="not a zip archive"):
        modelfile.load_model(tmp_path / "text.npz")

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    fields = read(path)
    fields["classes"] = np.array([Boom(), "b", "c"], dtype=object)
    np.savez(tmp_path / "pickled.npz", **fields)
    with pytest.raises(ModelFileError, match="pickled objects"):
        modelfile.load_model(tmp_path / "pickled.npz")
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ModelFileError, match="not a zip archive"):
        modelfile.load_model(tmp_path / "pickle.npz")

    with pytest.raises(ModelFileError, match="no such file"):
        modelfile.load_model(tmp_path / "missing.npz")
