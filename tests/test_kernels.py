"""Every kernel against its twin in the reference path, in float32 and float64."""

import subprocess
import sys
import textwrap
import warnings

import numba
import numpy as np
import pytest
import scipy.sparse
from _support import (
    DTYPES,
    FORMS,
    NO_WEIGHTS,
    assert_close,
    input_nonzeros,
    kernel_gradients,
    loss_function,
    sparse_data,
)

from fastmlp import engine, kernels, reference

ACTIVATIONS = list(kernels.ACTIVATIONS)


def make_network(rng, n_x, n_h, n_y, dtype):
    """Notebook-layout parameters with nonzero biases, so that biases are tested."""
    W1, b1, W2, b2 = reference.init_params(n_x, n_h, n_y, seed=3, dtype=dtype)
    b1 += rng.normal(0, 0.1, b1.shape).astype(dtype)
    b2 += rng.normal(0, 0.1, b2.shape).astype(dtype)
    return W1, b1, W2, b2


def kernel_layout(W1, b1, W2, b2):
    return np.ascontiguousarray(W1.T), b1.ravel().copy(), W2.copy(), b2.ravel().copy()


# ---- elementwise kernels -----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_is_within_two_ulp_of_numpy_and_agrees_on_inf_and_nan(dtype):
    """The kernels' own exp (libm's would keep the activation loops scalar)."""
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-30, 88.7, 88.8, -104.0, 709.8, -745.2]
    x = np.concatenate([np.linspace(-800, 800, 200_001), special]).astype(dtype)
    z = x.copy()
    kernels._exp_row(z)
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(x)
    for test in (np.isnan, np.isinf):
        np.testing.assert_array_equal(test(z), test(expected))
    tiny = np.finfo(dtype).tiny
    normal = np.isfinite(expected) & (expected >= tiny)
    relative = np.abs(z[normal] - expected[normal]) / expected[normal]
    assert relative.max() <= 2 * np.finfo(dtype).eps
    # Below the normal range: 0, never a slow subnormal.
    assert (z[np.isfinite(expected) & ~normal] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_is_within_a_few_ulp_of_numpy_down_to_tiny_inputs(dtype):
    tiny = np.finfo(dtype).tiny
    magnitudes = np.concatenate([np.linspace(0, 30, 200_001), np.geomspace(tiny, 1, 2_000)])
    x = np.concatenate([magnitudes, -magnitudes, [np.inf, -np.inf, np.nan, -0.0]]).astype(dtype)
    z = x.copy()
    kernels._tanh_row(z)
    expected = np.tanh(x)
    np.testing.assert_array_equal(np.isnan(z), np.isnan(expected))
    np.testing.assert_array_equal(np.signbit(z), np.signbit(expected))  # -0.0 too
    nonzero = np.isfinite(expected) & (expected != 0)
    relative = np.abs(z[nonzero] - expected[nonzero]) / np.abs(expected[nonzero])
    assert relative.max() <= 5 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_matches_reference(rng, dtype):
    Z = rng.normal(0, 5, (37, 19)).astype(dtype)
    out = np.empty_like(Z)
    kernels.sigmoid(Z, out)
    assert out.dtype == dtype
    assert_close(out, reference.sigmoid(Z))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_deriv_matches_reference(rng, dtype):
    A = rng.random((23, 11)).astype(dtype)
    out = np.empty_like(A)
    kernels.sigmoid_deriv(A, out)
    assert_close(out, reference.sigmoid_deriv(A))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_reference(rng, dtype):
    Z = rng.normal(0, 4, (31, 10)).astype(dtype)
    out = np.empty_like(Z)
    kernels.softmax(Z, out)
    assert_close(out, reference.softmax(Z.T).T)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_limits_are_exact_and_silent(dtype):
    Z = np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]], dtype=dtype)
    out = np.empty_like(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.sigmoid(Z, out)
        expected = reference.sigmoid(Z)
    assert out[0, 0] == 0.0 and out[0, -1] == 1.0 and out[0, 2] == 0.5
    assert np.array_equal(out, expected)
    assert not np.isnan(out).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_huge_logits_is_finite_and_exact(dtype):
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    out = np.empty_like(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.softmax(Z, out)
        expected = reference.softmax(Z.T).T
    assert np.isfinite(out).all()
    assert_close(out.sum(axis=1), np.ones(3, dtype))
    third = dtype(1) / dtype(3)
    np.testing.assert_array_equal(out, np.array([[1, 0, 0], [third] * 3, [0.5, 0.5, 0]], dtype))
    assert_close(out, expected)


# ---- sparse input ------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_x", [29, 64, 130])
def test_forward_marks_exactly_the_nonzeros(rng, dtype, n_x):
    X, _ = sparse_data(rng, 40, n_x, 3, dtype, density=0.3)
    X[5] = 0  # an empty row
    X[:, 7] = 0  # an empty column
    X[6, :3] = [np.nan, -0.0, np.inf]  # NaN and inf are nonzero; -0.0 is zero
    rows = rng.permutation(40)[:25]
    params = kernels.unpack(np.zeros(n_x * 4 + 4 + 3 * 4 + 3, dtype), n_x, 4, 3)
    nonzeros = engine.batch_input(25, n_x, dtype)
    mask = nonzeros.mask
    mask[:] = np.uint64(2**64 - 1)  # whatever an earlier batch left
    A1, A2, part_sums = engine._work(25, n_x, 4, 3, dtype)[:3]
    kernels.forward(X, rows, nonzeros, *params, kernels.LOGISTIC, A1, A2, part_sums)
    assert mask.shape == (25, -(-n_x // 64))
    bits = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little")
    np.testing.assert_array_equal(bits[:, :n_x], X[rows] != 0)
    assert not bits[:, n_x:].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepared_nonzeros_match_scipy(rng, dtype):
    X, _ = sparse_data(rng, 40, 29, 3, dtype, density=0.3)
    X[5] = 0  # an empty row
    X[:, 7] = 0  # an empty column
    prepared = engine.prepared_input(X)
    csr, csc = prepared.csr, prepared.csc
    expected = scipy.sparse.csr_array(X)
    nnz = expected.nnz
    np.testing.assert_array_equal(csr[0], expected.indptr)
    np.testing.assert_array_equal(csr[1][:nnz], expected.indices)
    by_column = expected.tocsc()
    by_column.sort_indices()
    np.testing.assert_array_equal(csc[0], by_column.indptr)
    np.testing.assert_array_equal(csc[1], by_column.indices)
    np.testing.assert_array_equal(csc[2], by_column.data)
    assert csc[1].dtype == np.uint16 and csc[2].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_listed_nonzeros_match_scipy(rng, dtype):
    X, _ = sparse_data(rng, 40, 150, 3, dtype, density=0.3)
    X[5] = 0  # an empty row
    X[:, 70] = 0  # an empty column
    X[6, :3] = [np.nan, -0.0, np.inf]  # NaN and inf are nonzero; -0.0 is zero
    wordptr, indices, values = engine.listed_input(X).listed
    expected = scipy.sparse.csr_array(np.where(X == 0, 0, X))
    assert wordptr.shape == (40, 4)
    np.testing.assert_array_equal(wordptr[:, 0], expected.indptr[:-1])
    np.testing.assert_array_equal(wordptr[:, -1], expected.indptr[1:])
    np.testing.assert_array_equal(indices, expected.indices)
    np.testing.assert_array_equal(values, expected.data)
    for w in range(1, 3):  # where each row's features from 64 w on start
        np.testing.assert_array_equal(wordptr[:, w], wordptr[:, 0] + (X[:, : 64 * w] != 0).sum(1))
    assert indices.dtype == np.uint16 and values.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_csr_matrix_is_listed_as_its_dense_form(rng, dtype):
    X, _ = sparse_data(rng, 40, 150, 3, dtype, density=0.3)
    X[5] = 0  # an empty row
    expected = engine.listed_input(X).listed
    for csr in (scipy.sparse.csr_matrix(X), scipy.sparse.csr_array(X)):
        for a, b in zip(engine.listed_input(csr).listed, expected, strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    # Unsorted columns and a duplicate (which X.toarray() sums) in the caller's matrix.
    data, columns = np.array([0.5, 0.25, 1.0, 0.125, 2.0, 4.0], dtype), [70, 3, 130, 3, 149, 0]
    messy = scipy.sparse.csr_matrix((data, columns, [0, 4, 4, 6]), shape=(3, 150))
    assert not messy.has_canonical_format
    listed = engine.listed_input(messy).listed
    for a, b in zip(listed, engine.listed_input(messy.toarray()).listed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not messy.has_canonical_format  # left as it was
    network = engine.FastNetwork(np.zeros(150 * 4 + 4 + 2 * 4 + 2), 150, 4, 2, "logistic")
    with pytest.raises(ValueError, match="sparse kernels only"):
        network.mini_batches(messy, np.zeros(3, np.int64), 2, sparse=False)


def test_is_sparse_decides_by_density(rng):
    assert engine.is_sparse(sparse_data(rng, 300, 50, 2, np.float64, density=0.3)[0])
    assert not engine.is_sparse(np.ones((300, 50)))
    assert not engine.is_sparse(sparse_data(rng, 5000, 8, 2, np.float32, density=0.9)[0])
    # float32's dense first layer is the faster from a lower density
    X = sparse_data(rng, 2000, 40, 2, np.float64, density=0.6)[0]
    assert engine.is_sparse(X) and not engine.is_sparse(X.astype(np.float32))


# ---- forward and backward ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_x", [40, 157, 300], ids=["one-word", "three-words", "five-words"])
def test_first_layer_by_parts_depends_on_the_example_alone(rng, dtype, n_x):
    # Through a mask or a list, the first layer is summed in fixed parts of the
    # features, in groups of examples: each example's activations must be the
    # same, bitwise, in a group of any size, by either form, on any number of
    # threads; and close to the reference.
    m, n_h, n_y = 2 * kernels.PART_GROUP + 37, 24, 3
    X, _ = sparse_data(rng, m, n_x, n_y, dtype)
    params = make_network(rng, n_x, n_h, n_y, dtype)
    W1, b1, W2, b2 = kernel_layout(*params)

    def first_layer(form, rows, threads=None):
        A1, A2, part_sums = engine._work(rows.size, n_x, n_h, n_y, dtype)[:3]
        default = numba.get_num_threads()
        numba.set_num_threads(threads or default)
        try:
            nonzeros = input_nonzeros(X, form)
            kernels.forward(X, rows, nonzeros, W1, b1, W2, b2, 0, A1, A2, part_sums)
        finally:
            numba.set_num_threads(default)
        return A1

    every = first_layer("listed", np.arange(m))
    assert_close(every, reference.forward(*params, X.T)[1].T)
    np.testing.assert_array_equal(first_layer("mask", np.arange(m)), every)
    np.testing.assert_array_equal(first_layer("mask", np.arange(m), threads=1), every)
    order = rng.permutation(m)[:50]
    np.testing.assert_array_equal(first_layer("mask", order), every[order])
    for r in order[:5]:
        np.testing.assert_array_equal(first_layer("listed", np.array([r]))[0], every[r])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_h", [24, 48, 64, 100, 136, 192])
def test_sums_over_rows_add_the_rows_in_order(rng, dtype, n_h):
    # Whatever the hidden layer's size, the sums in blocks of HIDDEN_BLOCK
    # units (or _by_four_block's for the dense sums: 32 or 16 float64 units,
    # 64 or 32 float32) are those of adding the rows one by one: a last block
    # that overlaps the one before (48 units in blocks of 32, 100, 136) leaves
    # the units that block summed as they were, and a layer narrower than a
    # block is summed as it goes.
    M = rng.normal(size=(64, n_h)).astype(dtype)
    x = rng.normal(size=64).astype(dtype)
    start = rng.normal(size=n_h).astype(dtype)
    rows = np.sort(rng.choice(64, 40, replace=False)).astype(np.uint16)
    expected = start.copy()
    for k in rows:
        kernels._add_scaled(expected, x[k], M[k])
    sums = {name: start.copy() for name in ("selected", "listed", "marked")}
    kernels._add_selected_rows(sums["selected"], x, M, rows)
    kernels._add_listed_rows(sums["listed"], x[rows], M, rows)
    bits = np.uint64(sum(1 << int(k) for k in rows))
    kernels._add_marked_rows(sums["marked"], x, kernels.BITS, M, bits)
    for name, actual in sums.items():
        np.testing.assert_array_equal(actual, expected, err_msg=name)

    # The dense sums, four rows of X (examples) or four columns (features) at
    # once, in blocks of 256 or 128 bytes a sum.
    X = rng.normal(size=(64, 4)).astype(dtype)
    for sum_bytes in (256, 128):
        by_rows = [start.copy() for _ in range(4)]
        kernels._add_dense_rows_by_four(*by_rows, *X.T.copy(), M, sum_bytes)
        by_columns = [start.copy() for _ in range(4)]
        kernels._add_dense_columns_by_four(*by_columns, X, np.arange(64), 0, M, sum_bytes)
        for e in range(4):
            expected = start.copy()
            for k in range(64):
                kernels._add_scaled(expected, X[k, e], M[k])
            message = f"dense {{}}, blocks of {sum_bytes} bytes"
            np.testing.assert_array_equal(by_rows[e], expected, err_msg=message.format("rows"))
            np.testing.assert_array_equal(
                by_columns[e], expected, err_msg=message.format("columns")
            )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_h", [24, 64, 100, 136, 192])
def test_scatter_adds_each_row_and_nothing_past_it(rng, dtype, n_h):
    # The last block of a row that is not a whole number of blocks runs past
    # the row's end; its masked loads and stores must leave the next row (here
    # the one after the last row given, a guard) as it was.
    grid = rng.normal(size=(33, n_h)).astype(dtype)
    out, guard = grid[:32], grid[32].copy()
    rows = np.array([0, 5, 6, 30, 31], dtype=np.int32)
    weights = rng.normal(size=rows.size).astype(dtype)
    v = rng.normal(size=n_h).astype(dtype)
    expected = out.copy()
    for x, k in zip(weights, rows, strict=True):
        kernels._add_scaled(expected[k], x, v)
    kernels._scatter_row(out, weights, rows, v)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(grid[32], guard)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_h", [64, 100])
def test_dense_first_layer_sums_every_example_alike(rng, dtype, n_h):
    # Dense examples go four at a time, the rest of a chunk one by one, in
    # the same order of sums: an example's output is the same wherever it is.
    m, n_x, n_y = 23, 70, 3
    X = rng.normal(size=(m, n_x)).astype(dtype)
    params = make_network(rng, n_x, n_h, n_y, dtype)
    net = engine.FastNetwork(engine.flatten_params(*params), n_x, n_h, n_y, "tanh")
    together = net.output(X)
    for r in range(m):
        np.testing.assert_array_equal(net.output(X[r : r + 1])[0], together[r])
    _, A1_ref, _, A2_ref = reference.forward(*params, X.T, "tanh")
    assert_close(together, A2_ref.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n_y", [10, 1], ids=["softmax", "logistic-output"])
@pytest.mark.parametrize("n_h", [24, 100])  # below HIDDEN_BLOCK; one block and the rest
def test_forward_and_backward_match_reference(rng, dtype, activation, form, n_y, n_h):
    m, n_x, l2 = 203, 157, 0.3  # n_x: three mask words, the last partial
    X, y = sparse_data(rng, m, n_x, max(n_y, 2), dtype)
    params = make_network(rng, n_x, n_h, n_y, dtype)
    W1, b1, W2, b2 = kernel_layout(*params)
    rows = np.arange(m)
    nonzeros = input_nonzeros(X, form)
    A1, A2, part_sums, *scratch = engine._work(m, n_x, n_h, n_y, dtype)
    for buffer in (part_sums, *scratch):  # the kernels read only what they wrote
        buffer.fill(True if buffer.dtype == bool else np.nan)
    code = kernels.ACTIVATIONS[activation]

    kernels.forward(X, rows, nonzeros, W1, b1, W2, b2, code, A1, A2, part_sums)
    Z1, A1_ref, Z2, A2_ref = reference.forward(*params, X.T, activation)
    assert A1.dtype == A2.dtype == dtype
    assert_close(A1, A1_ref.T)
    assert_close(A2, A2_ref.T)

    grads = [np.empty_like(p) for p in (W1, b1, W2, b2)]
    loss = kernels.backward(
        X, rows, nonzeros, y, NO_WEIGHTS, W1, W2, code, l2, A1, A2, *grads, *scratch
    )
    Y = reference.one_hot(y, n_y).astype(dtype)
    expected = reference.backward(
        Z1, A1_ref, Z2, A2_ref, params[0], params[2], X.T, Y, activation, l2
    )
    expected_loss = (
        reference.cross_entropy(A2_ref, Y)
        + 0.5 * l2 * (np.sum(params[0] ** 2) + np.sum(params[2] ** 2)) / m
    )
    assert_close(grads[0], expected[0].T)
    assert_close(grads[1], expected[1].ravel())
    assert_close(grads[2], expected[2])
    assert_close(grads[3], expected[3].ravel())
    assert_close(loss, expected_loss, dtype)


def test_feature_blocks_fit_in_the_nearest_cache():
    assert kernels._feature_block(24, 8) == 64  # at most one word of the mask
    assert kernels._feature_block(256, 8) == 16
    assert kernels._feature_block(256, 4) == 32
    assert kernels._feature_block(5000, 8) == 1
    for n_h, itemsize in [(24, 8), (200, 8), (1100, 4), (5000, 8)]:
        size = kernels._feature_block(n_h, itemsize)
        assert size * n_h * itemsize <= kernels.L1_BYTES or size == 1


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
def test_parts_of_columns_share_the_nonzeros_evenly(rng, density):
    X, _ = sparse_data(rng, 50, 157, 2, np.float64, density=density)
    X[:, :40] = 0  # like an image's border: columns without nonzeros
    colptr = engine.prepared_input(X).csc[0]
    n_parts = kernels.N_CHUNKS
    parts = [kernels._part_of_columns(colptr, p, n_parts) for p in range(n_parts)]
    assert parts[0][0] == 0 and parts[-1][1] == X.shape[1]
    assert all(parts[p][1] == parts[p + 1][0] for p in range(n_parts - 1))  # they tile
    counts = [colptr[k1] - colptr[k0] for k0, k1 in parts]
    widest = np.diff(colptr).max(initial=0)
    assert max(counts) - min(counts) <= 2 * widest + 1


@pytest.mark.parametrize("n_x", [5, 64, 157, 784, 1000])
@pytest.mark.parametrize("n_h", [24, 256, 5000], ids=["64-features", "16-features", "1-feature"])
def test_blocks_of_a_mask_tile_the_features_within_the_forward_passes_parts(n_x, n_h):
    nonzeros = engine.batch_input(8, n_x, np.float64)
    size, n_blocks, by_word = kernels._dW1_blocks(nonzeros, n_x, n_h, 8)
    assert by_word
    assert size == kernels._feature_block(n_h, 8) and n_blocks % kernels.N_PARTS == 0
    assert n_blocks <= engine._work(8, n_x, n_h, 3, np.float64)[-1].size  # a flag for each
    n_words, per_part = -(-n_x // 64), n_blocks // kernels.N_PARTS
    covered = []
    for block in range(n_blocks):
        k0, k1 = kernels._block_rows(block, n_blocks, size, nonzeros.csc[0], n_x, by_word)
        part = block // per_part
        w0, w1 = part * n_words // kernels.N_PARTS, (part + 1) * n_words // kernels.N_PARTS
        assert 64 * w0 <= k0 <= k1 <= min(64 * w1, n_x) and k1 - k0 <= size
        assert k0 == k1 or k0 // 64 == (k1 - 1) // 64  # within one word
        covered.extend(range(k0, k1))
    assert covered == list(range(n_x))  # every feature once, in order


def test_transposing_bits_turns_the_matrix_around(rng):
    words = rng.integers(0, 2**64, 64, dtype=np.uint64)
    bits = np.unpackbits(words.view(np.uint8).reshape(64, 8), axis=1, bitorder="little")
    turned = words.copy()
    kernels._transpose_bits(turned)
    turned_bits = np.unpackbits(turned.view(np.uint8).reshape(64, 8), axis=1, bitorder="little")
    np.testing.assert_array_equal(turned_bits, bits.T)


@pytest.mark.parametrize("n_h", [24, 200, 1100], ids=["64-features", "16-features", "2-features"])
@pytest.mark.parametrize("form", ["mask", "listed", "dense"])
@pytest.mark.parametrize("m", [37, 150], ids=["one-group", "three-groups"])
def test_mini_batch_gradient_matches_reference_for_every_block_size(rng, n_h, form, m):
    """Every block size of dW1, hidden layers narrower and wider than
    HIDDEN_BLOCK, and batches of one and of several groups of 64 examples
    (the backward pass turns the mask around 64 examples at a time)."""
    n_x, n_y, l2 = 157, 3, 0.3
    X, y = sparse_data(rng, m, n_x, n_y, np.float64)
    params = make_network(rng, n_x, n_h, n_y, np.float64)
    _, grads = kernel_gradients(X, y, kernel_layout(*params), form=form, l2=l2)
    Z1, A1, Z2, A2 = reference.forward(*params, X.T)
    Y = reference.one_hot(y, n_y).astype(np.float64)
    expected = reference.backward(Z1, A1, Z2, A2, params[0], params[2], X.T, Y, l2=l2)
    assert_close(grads[0], expected[0].T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_integer_weights_count_examples_that_many_times(rng, dtype, form):
    m, n_x, n_h, n_y, l2 = 61, 70, 12, 3, 0.2
    X, y = sparse_data(rng, m, n_x, n_y, dtype)
    params = kernel_layout(*make_network(rng, n_x, n_h, n_y, dtype))
    weights = rng.integers(0, 4, m).astype(np.float64)  # zeros included

    loss, grads = kernel_gradients(X, y, params, weights=weights, form=form, l2=l2)
    repeated = np.repeat(np.arange(m), weights.astype(int))
    expected_loss, expected = kernel_gradients(X[repeated], y[repeated], params, form=form, l2=l2)
    for actual, wanted in zip(grads, expected, strict=True):
        assert_close(actual, wanted)
    assert_close(loss, expected_loss, dtype)


def test_a_batch_of_weight_zero_has_no_gradient_and_no_loss(rng):
    X, y = sparse_data(rng, 20, 30, 3, np.float64)
    params = kernel_layout(*make_network(rng, 30, 8, 3, np.float64))
    loss, grads = kernel_gradients(X, y, params, weights=np.zeros(20), l2=0.5)
    assert loss == 0
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n_y", [4, 1], ids=["softmax", "logistic-output"])
def test_backward_matches_finite_differences(rng, activation, n_y):
    m, n_x, n_h, l2 = 9, 6, 5, 0.7
    X = rng.normal(size=(m, n_x))
    y = rng.integers(0, max(n_y, 2), m)
    theta = engine.flatten_params(*make_network(rng, n_x, n_h, n_y, np.float64))
    loss_and_grads = loss_function(X, y, n_h, n_y, activation, l2)
    _, grads = loss_and_grads(theta)
    h = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        numeric[i] = (loss_and_grads(theta + step)[0] - loss_and_grads(theta - step)[0]) / (2 * h)
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-8)


# ---- updates -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["sgd", "momentum", "nesterov", "adam"])
def test_update_rules_match_reference(rng, dtype, rule):
    theta = rng.normal(size=300).astype(dtype)
    expected = theta.copy()
    states = [rng.normal(size=300).astype(dtype), rng.random(300).astype(dtype)]
    expected_states = [s.copy() for s in states]
    for t in range(1, 4):
        grads = rng.normal(size=300).astype(dtype)
        if rule == "sgd":
            kernels.sgd_update(theta, grads, 0.1)
            reference.sgd_update(expected, grads, 0.1)
        elif rule == "adam":
            kernels.adam_update(theta, grads, *states, 0.01, 0.9, 0.999, 1e-8, t)
            reference.adam_update(expected, grads, *expected_states, 0.01, 0.9, 0.999, 1e-8, t)
        else:
            nesterov = rule == "nesterov"
            kernels.momentum_update(theta, grads, states[0], 0.1, 0.9, nesterov)
            reference.momentum_update(expected, grads, expected_states[0], 0.1, 0.9, nesterov)
    assert theta.dtype == dtype
    assert_close(theta, expected)
    assert_close(states[0], expected_states[0])


# ---- whole epochs ------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("form", ["dense", "mask", "listed"])
def test_train_epoch_matches_reference(rng, dtype, solver, form):
    m, n_x, n_h, n_y, batch = 150, 100, 16, 5, 32
    X, y = sparse_data(rng, m, n_x, n_y, dtype)
    params = make_network(rng, n_x, n_h, n_y, dtype)
    momentum = 0.9 if solver == "momentum" else 0.0
    settings = dict(learning_rate=0.05, momentum=momentum, nesterov=True, l2=0.01)
    if solver == "adam":
        settings["learning_rate"] = 0.005
    net = engine.FastNetwork(engine.flatten_params(*params), n_x, n_h, n_y, "tanh")
    optimizer = engine.Optimizer(
        "adam" if solver == "adam" else "sgd", net.theta.size, dtype, **settings
    )
    expected = [p.copy() for p in params]
    shapes = [p.shape for p in params]
    state = [[np.zeros(s, dtype) for s in shapes] for _ in range(2)]
    step = 0
    # Planning one epoch marks each batch's nonzeros; planning more lists them.
    batches = net.mini_batches(X, y, batch, form != "dense", epochs=3 if form == "listed" else 1)
    assert (batches.nonzeros.mask.size > 0) == (form == "mask")
    assert (batches.nonzeros.listed[0].size > 0) == (form == "listed")
    for _ in range(3):
        order = rng.permutation(m)
        total, failed = batches.epoch(order, optimizer)
        expected_total, step, expected_failed = reference.train_epoch(
            expected,
            X.T,
            y,
            order,
            batch,
            "adam" if solver == "adam" else "sgd",
            state,
            step=step,
            activation="tanh",
            **settings,
        )
        assert failed == expected_failed == -1
        assert_close(total, expected_total, dtype)
    for fast, slow in zip(engine.notebook_params(net.theta, n_x, n_h, n_y), expected, strict=True):
        # Three epochs of updates compound the rounding differences.
        np.testing.assert_allclose(fast, slow, rtol=RTOL_EPOCHS[dtype], atol=RTOL_EPOCHS[dtype])


RTOL_EPOCHS = {np.float64: 1e-10, np.float32: 1e-3}


@pytest.mark.parametrize("dtype", DTYPES)
def test_listed_and_marked_nonzeros_train_the_same_weights(rng, dtype):
    # Hidden 200: the backward pass's blocks of features are parts of words.
    m, n_x, n_h, n_y = 90, 150, 200, 4
    X, y = sparse_data(rng, m, n_x, n_y, dtype)
    theta = engine.flatten_params(*make_network(rng, n_x, n_h, n_y, dtype))
    results = []
    for epochs in (1, 3):  # marked, then listed
        net = engine.FastNetwork(theta.copy(), n_x, n_h, n_y, "logistic")
        optimizer = engine.Optimizer(
            "sgd", theta.size, dtype, learning_rate=0.1, momentum=0.9, l2=0.01
        )
        batches = net.mini_batches(X, y, 16, sparse=True, epochs=epochs)
        orders = np.random.default_rng(5)
        for _ in range(3):
            assert batches.epoch(orders.permutation(m), optimizer)[1] == -1
        results.append(net.theta)
    np.testing.assert_array_equal(*results)


def subnormal(a):
    return (a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)


@pytest.mark.skipif(not kernels._X86, reason="the kernels flush subnormals on x86 only")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["mask", "listed"])
def test_training_flushes_subnormal_numbers(rng, dtype, form):
    # Feature 0 is always zero, so Adam with an L2 penalty only shrinks its
    # weights; from just above the smallest normal number, their gradients,
    # moments and weights underflow at once.
    m, n_x, n_h, n_y = 64, 100, 16, 4
    X, y = sparse_data(rng, m, n_x, n_y, dtype)
    X[:, 0] = 0
    params = make_network(rng, n_x, n_h, n_y, dtype)
    params[0][:, 0] = 8 * np.finfo(dtype).tiny  # W1's row of feature 0, in the notebook's layout
    settings = dict(learning_rate=1e-3, l2=1e-3)
    net = engine.FastNetwork(engine.flatten_params(*params), n_x, n_h, n_y, "logistic")
    optimizer = engine.Optimizer("adam", net.theta.size, dtype, **settings)
    batches = net.mini_batches(X, y, 16, sparse=True, epochs=3 if form == "listed" else 1)
    expected = [p.copy() for p in params]
    state = [[np.zeros(p.shape, dtype) for p in params] for _ in range(2)]
    order = rng.permutation(m)
    assert batches.epoch(order, optimizer)[1] == -1
    with np.errstate(under="ignore"):
        reference.train_epoch(expected, X.T, y, order, 16, "adam", state, **settings)
    # NumPy's arithmetic keeps them (in the first moment; whether the weights
    # follow depends on the NumPy version's promotion of Adam's step size).
    assert subnormal(state[0][0][:, 0]).any()
    for values in (net.theta, optimizer.state, net._grads):
        assert not subnormal(values).any()
    fast = engine.notebook_params(net.theta, n_x, n_h, n_y)
    for fast_values, slow in zip(fast, expected, strict=True):
        np.testing.assert_allclose(fast_values, slow, rtol=RTOL_EPOCHS[dtype], atol=1e-30)


# Trains first, so that training starts Numba's threads; then divides the
# smallest normal number by 4 on this thread and on every one of Numba's.
SUBNORMALS_AFTER_TRAINING = textwrap.dedent(
    """
    import numba, numpy as np, fastmlp

    @numba.njit(parallel=True)
    def quarter(x):
        out = np.empty_like(x)
        for i in numba.prange(x.size):  # many more iterations than threads
            out[i] = x[i] / x.dtype.type(4)
        return out

    rng = np.random.default_rng(0)
    X = rng.random((300, 50)); X[X < 0.8] = 0
    fastmlp.train(X, rng.integers(0, 3, 300), hidden=8, iterations=2, batch_size=32)
    tiny = np.full(1000, np.finfo(np.float64).tiny)
    assert (tiny / 4 != 0).all(), "this thread"
    assert (quarter(tiny) != 0).all(), "Numba's threads"
    """
)


@pytest.mark.skipif(not kernels._X86, reason="the kernels flush subnormals on x86 only")
def test_training_leaves_every_thread_treating_subnormals_as_before():
    subprocess.run([sys.executable, "-c", SUBNORMALS_AFTER_TRAINING], check=True, timeout=600)


def test_non_finite_gradient_leaves_parameters_untouched(rng):
    m, n_x, n_h, n_y = 50, 10, 6, 3
    X, y = sparse_data(rng, m, n_x, n_y, np.float64)
    X[17, 3] = np.inf  # kernels trust their input: this is what validation stops
    net = engine.FastNetwork(
        engine.flatten_params(*make_network(rng, n_x, n_h, n_y, np.float64)),
        n_x,
        n_h,
        n_y,
        "logistic",
    )
    before = net.theta.copy()
    optimizer = engine.Optimizer("sgd", net.theta.size, np.float64, learning_rate=0.1)
    total, failed = net.mini_batches(X, y, 10, sparse=False).epoch(np.arange(m), optimizer)
    assert failed == 1  # the batch holding example 17
    batch0 = net.theta.copy()
    assert not np.array_equal(batch0, before)  # batch 0 was applied...
    net2 = engine.FastNetwork(before.copy(), n_x, n_h, n_y, "logistic")
    net2.mini_batches(X[:10], y[:10], 10, sparse=False).epoch(np.arange(10), optimizer)
    np.testing.assert_array_equal(batch0, net2.theta)  # ...and nothing after it


@pytest.mark.parametrize("solver", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("form", FORMS)
def test_a_non_finite_block_of_dW1_alone_stops_every_update(rng, form, solver):
    # Feature 100 has weights 0 and one huge value, so the forward pass, the
    # loss and the other gradients stay finite, and only its row of dW1
    # overflows: the flag of that one block, on whichever thread, must stop
    # the update of every block and of the other parameters. With equal
    # hidden units and output weights +-1e4, the output is 0.5 for every
    # example, far from saturated, and dZ1 is large.
    m, n_x, n_h, n_y = 20, 150, 8, 1
    X, _ = sparse_data(rng, m, n_x, 2, np.float64)
    y = np.ones(m, np.int64)
    X[:, 100] = 0
    X[7, 100] = 1e308
    W1 = np.tile(rng.normal(0, 0.1, n_x), (n_h, 1))  # notebook layout: n_h x n_x
    W1[:, 100] = 0
    b1, b2 = np.zeros((n_h, 1)), np.zeros((n_y, 1))
    W2 = np.tile([1e4, -1e4], (n_y, n_h // 2))
    net = engine.FastNetwork(engine.flatten_params(W1, b1, W2, b2), n_x, n_h, n_y, "logistic")
    before = net.theta.copy()
    optimizer = engine.Optimizer(
        "adam" if solver == "adam" else "sgd",
        net.theta.size,
        np.float64,
        learning_rate=0.1,
        momentum=0.9 if solver == "momentum" else 0.0,
    )
    sparse = form != "dense"
    if form == "prepared":
        total, failed = net.full_batch(X, y, sparse).epoch(np.arange(m), optimizer)
    else:
        batches = net.mini_batches(X, y, m, sparse, epochs=3 if form == "listed" else 1)
        total, failed = batches.epoch(np.arange(m), optimizer)
    assert failed == 0
    np.testing.assert_array_equal(net.theta, before)
    assert np.isfinite(net.grads[n_x * n_h :]).all()  # the other gradients were finite
    assert not np.isfinite(net.grads[: n_x * n_h]).all()


# ---- threads -----------------------------------------------------------------
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_results_do_not_depend_on_the_thread_count(rng, sparse):
    m, n_x, n_h, n_y = 333, 70, 37, 10
    X, y = sparse_data(rng, m, n_x, n_y, np.float32)
    params = make_network(rng, n_x, n_h, n_y, np.float32)
    results = []
    default = numba.get_num_threads()
    try:
        for threads in (1, 2, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            net = engine.FastNetwork(engine.flatten_params(*params), n_x, n_h, n_y, "relu")
            optimizer = engine.Optimizer("adam", net.theta.size, np.float32, learning_rate=0.01)
            for epochs in (1, 2):  # marked, then listed
                net.mini_batches(X, y, 64, sparse, epochs=epochs).epoch(np.arange(m), optimizer)
            batch = net.full_batch(X, y, sparse)
            for _ in range(3):
                batch.step(optimizer)
            results.append(net.theta.copy())
    finally:
        numba.set_num_threads(default)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


@pytest.mark.parametrize("form", ["mask", "listed", "prepared"])
def test_inputs_wider_than_16_bit_column_numbers(rng, form):
    m, n_x, n_h, n_y = 5, (1 << 16) + 70, 3, 2
    X = np.zeros((m, n_x))
    X[:, -70:] = rng.random((m, 70))  # nonzeros beyond column 65,535
    X[:, :5] = rng.random((m, 5))
    y = rng.integers(0, n_y, m)
    params = make_network(rng, n_x, n_h, n_y, np.float64)
    nonzeros = input_nonzeros(X, form)
    column_numbers = nonzeros.listed[1], nonzeros.csr[1]
    assert {numbers.dtype for numbers in column_numbers} == {np.dtype(np.uint32)}
    _, grads = kernel_gradients(X, y, kernel_layout(*params), form=form)
    Z1, A1_ref, Z2, A2_ref = reference.forward(*params, X.T)
    Y = reference.one_hot(y, n_y).astype(np.float64)
    expected = reference.backward(Z1, A1_ref, Z2, A2_ref, params[0], params[2], X.T, Y)
    assert_close(grads[2], expected[2])  # through the forward pass's A1 and A2
    assert_close(grads[0], expected[0].T)


def test_full_batches_beyond_16_bit_example_numbers(rng):
    m, n_x, n_h, n_y = (1 << 16) + 9, 6, 3, 2
    X, y = sparse_data(rng, m, n_x, n_y, np.float64, density=0.5)
    X[-3:, 2] = 0.75  # nonzeros beyond example 65,535
    params = make_network(rng, n_x, n_h, n_y, np.float64)
    assert input_nonzeros(X, "prepared").csc[1].dtype == np.uint32
    _, grads = kernel_gradients(X, y, kernel_layout(*params), form="prepared")
    Z1, A1_ref, Z2, A2_ref = reference.forward(*params, X.T)
    Y = reference.one_hot(y, n_y).astype(np.float64)
    expected = reference.backward(Z1, A1_ref, Z2, A2_ref, params[0], params[2], X.T, Y)
    assert_close(grads[2], expected[2])
    assert_close(grads[0], expected[0].T)
