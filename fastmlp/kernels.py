"""The fast path: Numba kernels for a network with one hidden layer.

Layout
------
The hidden units are the last, contiguous axis of every array that has them,
so that every inner loop of the kernels runs along a row of hidden units::

    X  (m, n_x)     W1 (n_x, n_h)   b1 (n_h,)   A1 (m, n_h)
                    W2 (n_y, n_h)   b2 (n_y,)   A2 (m, n_y)

Examples are rows (scikit-learn's layout, the transpose of the notebook's);
``W1`` is the notebook's ``W1.T`` and ``W2`` is the notebook's ``W2``, so
``Z1 = X @ W1 + b1`` and ``Z2 = A1 @ W2.T + b2``.
One output unit means a logistic output (binary classification, as in
scikit-learn); two or more mean a softmax.

Rules every kernel follows
--------------------------
* A kernel allocates nothing: it writes into buffers the caller passes.
* Each output element is summed in an order fixed by the data alone, never by
  the number of threads: parallel loops either own whole output rows or
  reduce over a number of chunks set by the batch size alone
  (:func:`_n_chunks`), combined in order. The trained weights are therefore
  bitwise identical for any thread count.
* Constants take the dtype of the data (``A.dtype.type(1)``): a bare ``1.0``
  would promote float32 arithmetic to float64.
* The parameters and their gradients live in one flat vector each (see
  :func:`unpack`), so that one update kernel serves all four arrays.
* Training arithmetic flushes subnormal numbers to zero (see
  :func:`_flush_subnormals`); NumPy's, in the reference path, keeps them.
* Arrays are filled with explicit loops (:func:`_copy`) rather than
  ``a[:] = b``: Numba's broadcasting assignment adds about a second to every
  cold compile for an error message it never needs here.

Every public kernel has a twin of the same name in :mod:`fastmlp.reference`.
Sample weights, which only the estimator uses, have no twin there: the tests
check them against repeated examples and against scikit-learn's MLP.
"""

from __future__ import annotations

import math
import platform
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import get_thread_id, literally, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import kernel

LOGISTIC, TANH, RELU = 0, 1, 2
"""Hidden activations, by code (kernels take integers, not strings)."""

ACTIVATIONS = {"logistic": LOGISTIC, "tanh": TANH, "relu": RELU}

SGD, MOMENTUM, ADAM = 0, 1, 2
"""Update rules, by code."""

N_CHUNKS = 16
"""Reductions over examples are split into this many chunks, whatever the
number of threads, and the chunks are added in order (fewer for a small
batch: see :func:`_n_chunks`)."""

CHUNK_MIN = 8
"""The fewest examples in a chunk of a batch too small for :data:`N_CHUNKS`
chunks of this many."""

# Positions in the ``hyper`` vector of optimiser settings.
LEARNING_RATE, MOMENTUM_COEF, NESTEROV, BETA1, BETA2, EPSILON, L2 = range(7)
N_HYPER = 7


# --------------------------------------------------------------------------
# Subnormal numbers
# --------------------------------------------------------------------------
_X86 = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}

_MXCSR_FLUSH = 0x8040
"""Flush-to-zero (bit 15: a subnormal result becomes zero) and
denormals-are-zero (bit 6: a subnormal operand counts as zero), the two bits
of x86's floating-point control register, MXCSR, that training sets."""


def _mxcsr_codegen(builder, new_value):
    """Read this thread's MXCSR, write ``new_value(builder, old)`` into it,
    and return the old value (as int64)."""
    i32 = ir.IntType(32)
    slot = cgutils.alloca_once(builder, i32)
    address = builder.bitcast(slot, cgutils.voidptr_t)
    signature = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t])
    read = builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", (), signature)
    write = builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", (), signature)
    builder.call(read, [address])
    old = builder.load(slot)
    builder.store(new_value(builder, old), slot)
    builder.call(write, [address])
    return builder.zext(old, ir.IntType(64))


@intrinsic
def _flush_subnormals(typingctx):
    """Make this thread's arithmetic treat subnormal numbers as zero, and
    return the setting before, for :func:`_restore_subnormals`.

    The kernels of a training step run with it: each parallel loop's body
    on the thread that runs it, and the update outside ``W1``. Never a whole
    kernel that starts a parallel loop: the first such loop starts Numba's
    threads, which would keep the setting of the thread that started them.

    On x86 CPUs an operation with a subnormal operand or result takes a slow
    path, and long runs make such numbers all the time: Adam with an L2
    penalty drives the weights of an input that is always zero (MNIST's
    border pixels, 15% of them) towards zero without end, until their
    gradients and first moments are all subnormal (after 2,500 steps in
    float32), and the update then takes three times as long. A subnormal
    number lies below the last bit of any weight above 2e-31 in float32
    (2e-292 in float64), so flushing it changes only weights that are all
    but zero already. TensorFlow and JAX run their CPU kernels the same way.
    Elsewhere than on x86 this does nothing.
    """

    def codegen(context, builder, signature, args):
        if not _X86:
            return ir.Constant(ir.IntType(64), 0)
        return _mxcsr_codegen(builder, lambda b, old: b.or_(old, old.type(_MXCSR_FLUSH)))

    return types.int64(), codegen


@intrinsic
def _restore_subnormals(typingctx, saved):
    """Put back the treatment of subnormal numbers that :func:`_flush_subnormals`
    found (and keep whatever else changed in the register since, such as the
    flags of exceptions raised)."""

    def codegen(context, builder, signature, args):
        if _X86:
            flush = ir.IntType(32)(_MXCSR_FLUSH)
            saved = builder.and_(builder.trunc(args[0], flush.type), flush)
            _mxcsr_codegen(builder, lambda b, old: b.or_(b.and_(old, b.not_(flush)), saved))
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@kernel
def _n_chunks(m):
    """How many chunks ``m`` examples are split into: :data:`N_CHUNKS`, or as
    many chunks of at least :data:`CHUNK_MIN` examples as ``m`` allows, a
    number that depends on ``m`` alone. A chunk costs a pass over a
    ``dW2``-sized partial sum, and its output layer runs as one vectorised
    loop over its examples: at batches of 32, chunks of two examples cost
    more than their arithmetic."""
    return max(1, min(N_CHUNKS, m // CHUNK_MIN))


# --------------------------------------------------------------------------
# Parameter vector
# --------------------------------------------------------------------------
@kernel
def unpack(theta, n_x, n_h, n_y):
    """Views ``W1, b1, W2, b2`` into the flat parameter (or gradient) vector."""
    i = n_x * n_h
    j = i + n_h
    k = j + n_y * n_h
    return (
        theta[:i].reshape((n_x, n_h)),
        theta[i:j],
        theta[j:k].reshape((n_y, n_h)),
        theta[k : k + n_y],
    )


@kernel
def _copy(source, target):
    for i in range(target.size):
        target[i] = source[i]


# --------------------------------------------------------------------------
# exp, vectorised
# --------------------------------------------------------------------------
# libm's exp is a call per element, which keeps every loop around it scalar.
# Here exp(x) = 2**n exp(r), with n = round(x / ln 2) and r = x - n ln 2, so
# |r| <= ln(2) / 2 and a Taylor polynomial of degree 12 gives exp(r) to float64
# precision. ln 2 is split in two (Cody and Waite) so that n * hi is exact.
_EXP_RANGE_64 = (6.93147180369123816490e-01, 1.90821492927058770002e-10, -708.3964, 1000.0)
_EXP_RANGE_32 = (0.693359375, -2.12194440e-4, -87.33654, 150.0)
"""``(hi, lo, low, high)``: ``hi + lo = ln 2``; below ``low`` exp(x) is 0 here
(NumPy's is subnormal, or 0), and above ``high`` it is inf."""
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13))


@intrinsic
def _power_of_two(typingctx, n, like):
    """``2.0 ** n`` in the float type of ``like``, for a normal result (the
    exponent field written directly)."""
    if like == types.float64:
        float_type, int_type, mantissa, bias = ir.DoubleType(), ir.IntType(64), 52, 1023
    else:
        float_type, int_type, mantissa, bias = ir.FloatType(), ir.IntType(32), 23, 127

    def codegen(context, builder, signature, args):
        exponent = args[0] if int_type.width == 64 else builder.trunc(args[0], int_type)
        biased = builder.add(exponent, ir.Constant(int_type, bias))
        return builder.bitcast(builder.shl(biased, ir.Constant(int_type, mantissa)), float_type)

    return like(types.int64, like), codegen


@kernel(reassociate=False)
def _expm1_reduced(u, t, ln2_hi, ln2_lo):
    """``(n, e**r - 1)`` with ``u = n ln 2 + r`` and ``|r| <= ln(2) / 2``, in
    the float type ``t``. The polynomial has no constant term, so e**r - 1 is
    exact to rounding even where it is tiny."""
    n = np.floor(u * t(1.4426950408889634) + t(0.5))
    r = (u - n * ln2_hi) - n * ln2_lo
    q = t(_EXP_TAYLOR[12])
    for k in range(11, 0, -1):
        q = q * r + t(_EXP_TAYLOR[k])
    return np.int64(n), q * r


@kernel
def _exp_range(z):
    """``_EXP_RANGE_64`` or ``_EXP_RANGE_32``, in ``z``'s float type."""
    t = z.dtype.type
    hi, lo, low, high = _EXP_RANGE_64 if z.itemsize == 8 else _EXP_RANGE_32
    return t(hi), t(lo), t(low), t(high)


@kernel(reassociate=False)
def _exp_row(z):
    """``z = exp(z)`` elementwise, in ``z``'s precision, to 2 units in the last
    place; inf and NaN where NumPy's exp gives them, and 0 where it is below
    the smallest normal number."""
    t = z.dtype.type
    hi, lo, low, high = _exp_range(z)
    one, zero = t(1), t(0)
    for i in range(z.size):
        x = z[i]
        # Clamped, so that no step makes a subnormal number (which costs the
        # processor a slow assist each); comparisons with NaN are false.
        n, expm1_r = _expm1_reduced(high if x > high else (low if x < low else x), t, hi, lo)
        # 2**n in two halves, each a normal number for any n here: their
        # product overflows to inf where exp(x) does.
        n_half = n >> 1
        y = (one + expm1_r) * _power_of_two(n_half, x) * _power_of_two(n - n_half, x)
        z[i] = x if x != x else (zero if x < low else y)


@kernel(reassociate=False)
def _tanh_row(z):
    """``z = tanh(z)`` elementwise, in ``z``'s precision, to a few units in the
    last place: with ``u = 2|z|``, tanh = (e**u - 1) / (e**u + 1), where
    e**u - 1 = 2**n (e**r - 1) + (2**n - 1) needs no subtraction of nearly
    equal numbers when ``z`` is small."""
    t = z.dtype.type
    hi, lo, _, _ = _exp_range(z)
    one, two = t(1), t(2)
    limit = t(20)  # tanh(20) rounds to 1 in both precisions
    for i in range(z.size):
        x = z[i]
        a = abs(x)
        n, expm1_r = _expm1_reduced(two * (limit if a > limit else a), t, hi, lo)
        scale = _power_of_two(n, x)
        expm1 = scale * expm1_r + (scale - one)
        z[i] = x if x != x else np.copysign(expm1 / (expm1 + two), x)


# --------------------------------------------------------------------------
# Activations, applied in place to one row
# --------------------------------------------------------------------------
@kernel
def _logistic_row(z):
    # 1 / (1 + exp(-z)) is already stable: for z < -88 (float32) or -709
    # (float64) exp(-z) overflows to inf and the result is exactly 0.
    one = z.dtype.type(1)
    for i in range(z.size):
        z[i] = -z[i]
    _exp_row(z)
    for i in range(z.size):
        z[i] = one / (one + z[i])


@kernel
def _activate_row(z, activation):
    if activation == LOGISTIC:
        _logistic_row(z)
    elif activation == TANH:
        _tanh_row(z)
    else:
        zero = z.dtype.type(0)
        for i in range(z.size):
            z[i] = max(z[i], zero)


@kernel
def _derivative_row(a, activation):
    """Overwrite ``a = f(z)`` with ``f'(z)``, which each activation gives from ``a``."""
    one = a.dtype.type(1)
    if activation == LOGISTIC:
        for i in range(a.size):
            a[i] = a[i] * (one - a[i])
    elif activation == TANH:
        for i in range(a.size):
            a[i] = one - a[i] * a[i]
    else:
        zero = a.dtype.type(0)
        for i in range(a.size):
            a[i] = one if a[i] > zero else zero


@kernel
def _softmax_rows(Z):
    """Softmax of each row of the C-contiguous block ``Z``, in place.

    The exponentials are taken over the whole block at once: a row of ten
    classes is too short for a vectorised loop, a block of rows is not.
    """
    # Subtracting the maximum keeps exp from overflowing; the largest term
    # becomes exp(0) = 1, so the sum is at least 1.
    for r in range(Z.shape[0]):
        z = Z[r]
        largest = z[0]
        for i in range(1, z.size):
            largest = max(largest, z[i])
        for i in range(z.size):
            z[i] -= largest
    _exp_row(Z.reshape(Z.size))
    for r in range(Z.shape[0]):
        z = Z[r]
        total = z.dtype.type(0)
        for i in range(z.size):
            total += z[i]
        for i in range(z.size):
            z[i] /= total


@kernel(parallel=True)
def sigmoid(Z, out):
    """``out = 1 / (1 + exp(-Z))``, elementwise; exact 0 and 1 in the limits."""
    for r in prange(Z.shape[0]):
        _copy(Z[r], out[r])
        _logistic_row(out[r])


@kernel(parallel=True)
def sigmoid_deriv(A, out):
    """``out = A * (1 - A)``: the sigmoid's derivative from its output ``A``."""
    for r in prange(A.shape[0]):
        _copy(A[r], out[r])
        _derivative_row(out[r], LOGISTIC)


@kernel(parallel=True)
def softmax(Z, out):
    """Softmax of each row of ``Z`` (each example), stable for any finite
    logits; ``out`` is C-contiguous."""
    m = Z.shape[0]
    for c in prange(N_CHUNKS):
        start, end = c * m // N_CHUNKS, (c + 1) * m // N_CHUNKS
        for r in range(start, end):
            _copy(Z[r], out[r])
        _softmax_rows(out[start:end])


# --------------------------------------------------------------------------
# Weighted sums of rows: the only place that touches W1 or X element by element
#
# ``out`` is always a row of another buffer than the rows it gains (A1 from W1
# and X, dW1 from A1 and X), which these kernels declare (``noalias``) so that
# their short loops run without run-time overlap checks.
# --------------------------------------------------------------------------
@kernel(noalias=True)
def _add_scaled(out, x, v):
    """``out += x * v``."""
    for h in range(out.size):
        out[h] += x * v[h]


@kernel(noalias=True)
def _add_rows(out, weights, M):
    """``out += weights @ M``: add row ``k`` of ``M`` times ``weights[k]``."""
    n = weights.size
    k = 0
    # Four rows per pass: ``out`` is loaded and stored once for four rows
    # instead of once per row, which halves the memory traffic.
    while k + 4 <= n:
        x0, x1, x2, x3 = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
        m0, m1, m2, m3 = M[k], M[k + 1], M[k + 2], M[k + 3]
        for h in range(out.size):
            out[h] += (x0 * m0[h] + x1 * m1[h]) + (x2 * m2[h] + x3 * m3[h])
        k += 4
    while k < n:
        _add_scaled(out, weights[k], M[k])
        k += 1


HIDDEN_BLOCK = 64
"""The hidden units that the sums over rows add at once: over an example's
or a feature's nonzeros (:func:`_add_selected_rows`, :func:`_add_listed_rows`,
:func:`_add_marked_rows`; four at a time over a dense input's, the block
is :func:`_by_four_block`'s). A constant, so that LLVM unrolls the loop
over them and keeps their sums in registers across all the rows, instead
of loading and storing them for every few rows (64 float32 fill four of
AVX-512's 32 registers, 64 float64 eight). Against eight rows per
pass into ``out`` in memory, on one thread with MNIST's digits: a full
batch's first layer 1.14x (float32) and 1.3x (float64) faster, its sum
into ``dW1`` by feature 1.25x and 1.16x; with the passes' loops reordered
to use them (see :func:`_first_layer_parts` and :func:`backward`), W2
1.12x and 1.3x faster, W3 1.03x-1.23x, W1 1.04x-1.22x (alternating
processes, two threads).

Each writes its loops out, and they differ only in how a row's weight and
number are found: with the block's step in a helper kernel (and
a slice of ``out`` for the rest), Numba compiled it as a call that counts
references to the arrays passed, and the sums went back to memory.

A layer that is not a whole number of blocks (scikit-learn's default of
100 units) sums its last units in one more block, which ends where the
layer ends and so overlaps the block before: its sums of the units that
block already summed are masked out (``out + w * m if h >= done else out``,
which LLVM compiles to AVX-512's masked multiply-adds), so that every unit
is still summed once, in order, in registers. The dense sums, four rows at
once, mask the row instead (``m[h] if h >= done else 0``: those units gain
zeros, which leave them as they were, but for the sign of a zero sum), as
with four selects LLVM kept three of the four sums in memory.
Before, those units were added row by row in memory, and a layer of 68 or
100 units cost more than one of 128. Against that, in fresh processes
taking turns (4-5 pairs): FastMLPClassifier's Adam fit on 8,000 digits
with 100 hidden units 1.20x faster in float32 and 1.02x in float64, on the
same digits standardised (dense) 1.35x and 1.26x, W1 with 100 units 1.31x
and 1.11x, W2 1.26x and 1.00x; with 64 units 0.98x-1.04x. Saving the
overlapped units on the stack and putting them back instead made Numba
count references to every argument at every call (W2 0.9x).

A layer narrower than a block is summed row by row, in memory
(:func:`_add_scaled`; the dense sums four rows in one loop, and only
below 128 bytes: see :func:`_by_four_block`). The
overlapping block reads each row through a slice that starts where the
block does (``M[k, s:]``), not by an index from there (``m[s + h]``), which
Numba cannot prove non-negative and so guards: loops indexed that way
compiled to scalar code (the units after the last whole block, once summed
so, made 32 or 100 units 3x-6x slower than 64 or 128: a full batch's first
layer of 2,000 digits in float32, 32 units 6.1 ms against 1.0 ms with
slices, 100 units 8.2 ms against 2.9 ms)."""


@kernel(noalias=True)
def _add_selected_rows(out, x, M, columns):
    """``out += sum_{k in columns} x[k] * M[k]``: ``_add_rows`` over the
    entries ``columns`` of ``x`` alone (its nonzeros), added in order, by
    blocks of :data:`HIDDEN_BLOCK` hidden units summed in registers.
    """
    n_h, h0 = out.size, 0
    while h0 + HIDDEN_BLOCK <= n_h:
        for p in range(columns.size):
            k = columns[p]
            xk, m = x[k], M[k]
            for h in range(HIDDEN_BLOCK):
                out[h0 + h] += xk * m[h0 + h]
        h0 += HIDDEN_BLOCK
    if n_h < HIDDEN_BLOCK:
        for p in range(columns.size):
            k = columns[p]
            _add_scaled(out, x[k], M[k])
    elif h0 < n_h:
        s = n_h - HIDDEN_BLOCK
        last, done = out[s:], h0 - s
        for p in range(columns.size):
            k = columns[p]
            xk, m = x[k], M[k, s:]
            for h in range(HIDDEN_BLOCK):
                last[h] = last[h] + xk * m[h] if h >= done else last[h]


@intrinsic
def _by_four_block(typingctx, like, sum_bytes):
    """The hidden units that the dense sums four at a time add at once
    (:func:`_add_dense_rows_by_four`, :func:`_add_dense_columns_by_four`):
    ``sum_bytes`` of each sum in the dtype of the array ``like``, a constant,
    so that LLVM keeps the sums in registers. ``sum_bytes`` must be a literal
    (the kernels ask Numba for one with ``literally``: a version per value).

    256 bytes (64 float32 units, 32 float64) lets the four sums take 16 of
    AVX-512's 32 registers. With :data:`HIDDEN_BLOCK` in float64 they took
    all 32, and LLVM kept three of the four sums in memory (read in the
    assembly). FastMLPClassifier's Adam fit on the digits standardised
    (dense), 5 epochs, fresh processes in turns, 5 pairs, with blocks of 32
    in float64: 1.50x faster at 32 hidden units, 1.53x at 48, 1.38x at 64 and
    1.19x at 100; in float32 blocks of 32 were 0.93x and 0.89x at 64 and 100
    units (4 pairs).

    A layer of 128 to 255 bytes (32 to 63 float32 units, 16 to 31 float64)
    goes in blocks of 128 bytes (:func:`_half_blocks`), so its sums too stay
    in registers instead of memory. The same fits, 5 pairs: float32 1.93x
    faster at 32 units and 1.85x at 48, float64 1.72x at 16 and 1.78x at
    24; other sizes 0.98x-1.01x. Below 128 bytes the sums stay in memory as
    before: given blocks of 128 bytes there, LLVM compiled that loop for
    fewer units at a time, and 24 float32 units ran 0.69x as fast (4
    pairs). The sums are the same whatever the block."""
    if not isinstance(sum_bytes, types.IntegerLiteral):
        return None  # Numba types the kernel again with the literal
    block = sum_bytes.literal_value // (like.dtype.bitwidth // 8)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, block)

    return types.intp(like, sum_bytes), codegen


@kernel
def _half_blocks(M):
    """Whether the dense sums four at a time over rows of ``M`` go in blocks
    of 128 bytes rather than 256 (see :func:`_by_four_block`)."""
    row_bytes = M.shape[1] * M.itemsize
    return 128 <= row_bytes < 256


@kernel(noalias=True)
def _add_dense_rows_by_four(out0, out1, out2, out3, x0, x1, x2, x3, M, sum_bytes):
    """``out_e += x_e @ M`` for four dense rows ``x_e`` (examples) at once:
    each row of ``M`` (of ``W1``) is read once for the four instead of once
    for each, by blocks of ``sum_bytes`` (256 or 128, a constant at the
    call) of hidden units summed in registers (:func:`_by_four_block`), the
    rows added in order (so an example's sums are those of
    :func:`_add_scaled` row by row). Against :func:`_add_rows` an example at
    a time, a batch of 200 examples of 500 dense features with 64 hidden
    units, two threads, in blocks of 64 units: 37 against 123 us in float32,
    103 against 217 us in float64 (two examples at a time: 50 and 96 us)."""
    n_h, h0, block = out0.size, 0, _by_four_block(out0, literally(sum_bytes))
    while h0 + block <= n_h:
        for k in range(x0.size):
            a, b, c, d, m = x0[k], x1[k], x2[k], x3[k], M[k]
            for h in range(block):
                out0[h0 + h] += a * m[h0 + h]
                out1[h0 + h] += b * m[h0 + h]
                out2[h0 + h] += c * m[h0 + h]
                out3[h0 + h] += d * m[h0 + h]
        h0 += block
    if n_h < block:
        for k in range(x0.size):
            a, b, c, d, m = x0[k], x1[k], x2[k], x3[k], M[k]
            for h in range(n_h):
                out0[h] += a * m[h]
                out1[h] += b * m[h]
                out2[h] += c * m[h]
                out3[h] += d * m[h]
    elif h0 < n_h:
        s, zero = n_h - block, out0.dtype.type(0)
        last0, last1, last2, last3, done = out0[s:], out1[s:], out2[s:], out3[s:], h0 - s
        for k in range(x0.size):
            a, b, c, d, m = x0[k], x1[k], x2[k], x3[k], M[k, s:]
            for h in range(block):
                m_h = m[h] if h >= done else zero
                last0[h] += a * m_h
                last1[h] += b * m_h
                last2[h] += c * m_h
                last3[h] += d * m_h


@kernel(noalias=True)
def _add_dense_columns_by_four(out0, out1, out2, out3, X, rows, k, M, sum_bytes):
    """``out_e += sum_r X[rows[r], k + e] * M[r]`` for the four features
    ``k`` to ``k + 3`` at once (four rows of ``dW1``): each row of ``M`` (of
    ``dZ1``) is read once for the four, the examples added in order, as
    :func:`_add_dense_rows_by_four` does for examples (and with its
    ``sum_bytes``)."""
    n_h, h0, block = out0.size, 0, _by_four_block(out0, literally(sum_bytes))
    while h0 + block <= n_h:
        for r in range(rows.size):
            x, m = X[rows[r]], M[r]
            a, b, c, d = x[k], x[k + 1], x[k + 2], x[k + 3]
            for h in range(block):
                out0[h0 + h] += a * m[h0 + h]
                out1[h0 + h] += b * m[h0 + h]
                out2[h0 + h] += c * m[h0 + h]
                out3[h0 + h] += d * m[h0 + h]
        h0 += block
    if n_h < block:
        for r in range(rows.size):
            x, m = X[rows[r]], M[r]
            a, b, c, d = x[k], x[k + 1], x[k + 2], x[k + 3]
            for h in range(n_h):
                out0[h] += a * m[h]
                out1[h] += b * m[h]
                out2[h] += c * m[h]
                out3[h] += d * m[h]
    elif h0 < n_h:
        s, zero = n_h - block, out0.dtype.type(0)
        last0, last1, last2, last3, done = out0[s:], out1[s:], out2[s:], out3[s:], h0 - s
        for r in range(rows.size):
            x, m = X[rows[r]], M[r, s:]
            a, b, c, d = x[k], x[k + 1], x[k + 2], x[k + 3]
            for h in range(block):
                m_h = m[h] if h >= done else zero
                last0[h] += a * m_h
                last1[h] += b * m_h
                last2[h] += c * m_h
                last3[h] += d * m_h


@kernel(noalias=True)
def _add_listed_rows(out, weights, M, rows):
    """``out += sum_p weights[p] * M[rows[p]]``: :func:`_add_selected_rows`
    for weights listed alongside their rows (a feature's values with the
    examples that have them, or an example's values with their features)
    rather than indexed by them, in the same order and so with the same
    sums. A separate kernel: choosing the indexing at run time cost 21% of
    the float32 forward pass.
    """
    n_h, h0 = out.size, 0
    while h0 + HIDDEN_BLOCK <= n_h:
        for p in range(rows.size):
            w, m = weights[p], M[rows[p]]
            for h in range(HIDDEN_BLOCK):
                out[h0 + h] += w * m[h0 + h]
        h0 += HIDDEN_BLOCK
    if n_h < HIDDEN_BLOCK:
        for p in range(rows.size):
            _add_scaled(out, weights[p], M[rows[p]])
    elif h0 < n_h:
        s = n_h - HIDDEN_BLOCK
        last, done = out[s:], h0 - s
        for p in range(rows.size):
            w, m = weights[p], M[rows[p], s:]
            for h in range(HIDDEN_BLOCK):
                last[h] = last[h] + w * m[h] if h >= done else last[h]


@kernel(noalias=True)
def _add_marked_rows(out, values, at, M, bits):
    """``out += sum_b values[at[b]] * M[b]`` over the set bits ``b`` of
    ``bits`` (a word of a mask, up to 64 rows), in increasing order:
    :func:`_add_selected_rows` for rows marked by bits rather than listed,
    which saves listing them (for MNIST's words of about 12 nonzeros, listing
    first made the first layer 1.6x slower in float32). ``at`` says where
    each row's weight is: :data:`BITS` for an example's values in a word
    (the first layer), or the batch's examples for a feature's column of
    ``X`` (a row of ``dW1``)."""
    n_h, h0 = out.size, 0
    one = np.uint64(1)
    while h0 + HIDDEN_BLOCK <= n_h:
        left = bits
        while left:
            b = _trailing_zeros(left)
            w, m = values[at[b]], M[b]
            for h in range(HIDDEN_BLOCK):
                out[h0 + h] += w * m[h0 + h]
            left &= left - one
        h0 += HIDDEN_BLOCK
    if n_h < HIDDEN_BLOCK:
        left = bits
        while left:
            b = _trailing_zeros(left)
            _add_scaled(out, values[at[b]], M[b])
            left &= left - one
    elif h0 < n_h:
        s = n_h - HIDDEN_BLOCK
        last, done, left = out[s:], h0 - s, bits
        while left:
            b = _trailing_zeros(left)
            w, m = values[at[b]], M[b, s:]
            for h in range(HIDDEN_BLOCK):
                last[h] = last[h] + w * m[h] if h >= done else last[h]
            left &= left - one


BITS = np.arange(64)
"""The bit numbers of a word, 0 to 63: the ``at`` of :func:`_add_marked_rows`
when the values are an example's, from the word's first feature on."""


@kernel(noalias=True)
def _scatter_row(out, weights, rows, v):
    """``out[rows[p]] += weights[p] * v`` for each ``p``: one example's terms
    in the gradient rows of its nonzero features. A kernel of its own for
    ``noalias``: with it, the listed backward pass on 8,000 MNIST digits went
    from as fast as the marked one to 0.8 ms an epoch faster in float64, and
    from 0.9 to 0.2-0.4 ms slower in float32 (the two taking turns in one
    process).

    By blocks of :data:`HIDDEN_BLOCK` units, each block of ``v`` kept in
    registers across the rows. The units after the last whole block go in
    one more block that starts where they do and so runs past the end of
    the row; the condition ``h < rest`` makes LLVM mask that block's loads
    and stores (AVX-512's masked moves), so nothing past the row is read or
    written: the next row may be another thread's. Before, each row was
    added whole, its last units in LLVM's remainder loops, 8 and then 1 at a
    time in float32. Against that (``compare.py --workloads
    fit,fit:32,fit:200:100``, 6 pairs): FastMLPClassifier's Adam fit with
    100 hidden units 1.08x faster in float32 and 1.01x in float64, with 64
    units 1.01x-1.02x. A layer narrower than a block still adds whole rows:
    there the masked block alone was 0.92x-0.98x (24 and 32 units, 4 pairs)."""
    n_h, h0 = v.size, 0
    while h0 + HIDDEN_BLOCK <= n_h:
        u = v[h0:]
        for p in range(rows.size):
            r, x = out[rows[p], h0:], weights[p]
            for h in range(HIDDEN_BLOCK):
                r[h] += x * u[h]
        h0 += HIDDEN_BLOCK
    if n_h < HIDDEN_BLOCK:
        for p in range(rows.size):
            _add_scaled(out[rows[p]], weights[p], v)
    elif h0 < n_h:
        u, rest = v[h0:], n_h - h0
        for p in range(rows.size):
            r, x = out[rows[p], h0:], weights[p]
            for h in range(HIDDEN_BLOCK):
                if h < rest:
                    r[h] += x * u[h]


# --------------------------------------------------------------------------
# Sparse input: the MNIST pixels are about 81 % zeros
# --------------------------------------------------------------------------
class Nonzeros(NamedTuple):
    """Where the nonzeros of the input are, in the forms the kernels read.

    Three forms, for three uses; arrays of a form not in use are empty, and
    all empty means a dense input (the first layer reads ``X`` as it is).

    ``mask`` and ``turned``: for mini-batches seen once, made anew for each batch.
        ``mask`` (batch size x ``ceil(n_x / 64)``, ``uint64``) is filled by
        :func:`forward` and read by :func:`backward`; ``turned`` (one row of
        64 ``uint64`` per thread Numba may start) is scratch where
        :func:`backward` turns 64 examples' words of the mask around.
    ``listed``: for mini-batches over the same ``X`` for many epochs, made once.
        Every example's nonzeros and their values, ``(wordptr, indices,
        values)`` from :func:`list_nonzeros`, which both passes read instead
        of the rows of ``X``: a fraction of their size (MNIST's 8,000
        training images: 50 MB as rows, 12.8 MB listed, in float64). The
        one form that reads no row of ``X``, which lets a scipy.sparse input
        train without being made dense.
    ``csr`` and ``csc``: for full batches, made once and read by every step.
        Where the nonzeros are, by example, ``(indptr, indices)`` from
        :func:`compress_rows`, and by feature, ``(colptr, rowidx, values)``
        from :func:`transpose_sparse`. The forward pass reads the values from
        the rows of ``X``; the backward pass, which goes feature by feature,
        reads the copy in ``values``, since a column of ``X`` is spread over
        as many cache lines as it has nonzeros.

    Every form adds an example's nonzeros in increasing order of feature.
    ``mask`` and ``listed`` sum them in the same parts of the features (see
    :func:`_first_layer_parts`), and give the same first layer and the same
    gradients, bitwise; ``csr`` sums them in one part, in the same passes,
    as the dense form does with all of its inputs.

    Column numbers (the ``indices`` of ``listed`` and
    ``csr``) share one unsigned integer type, the smallest that numbers the
    inputs; example numbers (``rowidx``) the smallest that numbers the
    examples.
    """

    mask: np.ndarray
    turned: np.ndarray
    listed: tuple
    csr: tuple
    csc: tuple


@intrinsic
def _trailing_zeros(typingctx, word):
    """Position of the lowest set bit of a nonzero ``uint64`` (one instruction)."""

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


@kernel
def _transpose_bits(words):
    """Transpose the 64 x 64 bit matrix ``words`` in place: bit ``j`` of
    ``words[i]`` becomes bit ``i`` of ``words[j]``.

    Swaps the two off-diagonal blocks of ever smaller squares (32, 16, ...,
    1 bits wide), all rows of a square at once: 192 swaps of a few
    instructions instead of one step per bit.
    """
    width = np.uint64(32)
    low = np.uint64(0xFFFFFFFF)  # the lower half of each square's bits
    while width:
        for i in range(64):
            if i & np.int64(width) == 0:
                j = i + np.int64(width)
                swap = ((words[i] >> width) ^ words[j]) & low
                words[j] ^= swap
                words[i] ^= swap << width
        width >>= np.uint64(1)
        low ^= low << width


CACHE_LINE = 64
"""Bytes in a cache line of x86 and most Arm cores."""


@intrinsic
def _prefetch(typingctx, array, index):
    """Start loading the cache line that holds ``array[index]``: a hint to
    the CPU, with no effect on any result."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        address = cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])
        address = builder.bitcast(address, cgutils.voidptr_t)
        i32 = ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch",
            [cgutils.voidptr_t],
            ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32]),
        )
        # A read, to be kept in every cache level, of data.
        builder.call(prefetch, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, types.intp), codegen


@kernel
def _prefetch_row(x):
    """Start loading every cache line of the contiguous row ``x``."""
    for i in range(0, x.size, CACHE_LINE // x.itemsize):
        _prefetch(x, i)


PREFETCH_AHEAD = 2
"""How many examples ahead of the one it sums :func:`_first_layer_parts`
asks for its part of a row of ``X`` (or of the list of nonzeros)."""

N_PARTS = 2
"""A mini-batch's first layer, read through a mask or a list of its
nonzeros, is summed in this many fixed parts of the features (whole words
of 64), whatever the number of threads, and the parts are added in order.
More parts would let more threads share it, but each call then sums fewer
rows: four parts made W2 in float32 1.03x faster on two threads, two 1.07x
(5 pairs of processes)."""

PART_GROUP = 256
"""The examples whose parts of the first layer are summed before they are
added: it bounds the memory the parts take (a full batch goes in groups)."""


@kernel
def _part_words(part, n_words):
    """The words ``w0:w1`` (of 64 features) in part ``part`` of :data:`N_PARTS`."""
    return part * n_words // N_PARTS, (part + 1) * n_words // N_PARTS


@kernel
def reads_by_word(nonzeros):
    """Whether ``nonzeros`` (a :class:`Nonzeros`) reads the input by word of 64
    features: through a mask or a list. Then :func:`forward` sums the first
    layer by parts of whole words and :func:`backward` gives each thread
    blocks of ``dW1`` within one word."""
    return nonzeros.mask.shape[0] > 0 or nonzeros.listed[0].size > 0


@kernel
def _nonzero_bits(chunk):
    """Bit ``b`` set where ``chunk[b] != 0`` (NaN counts as nonzero), for a
    chunk of at most 64 values."""
    word = np.uint64(0)
    for b in range(chunk.size):
        word |= np.uint64(chunk[b] != 0) << np.uint64(b)
    return word


@kernel
def _mark_nonzeros(x, mask_row):
    """Mark the nonzeros of one example: bit ``b`` of ``mask_row[w]`` is set
    where ``x[64 w + b] != 0``.

    One bit per input: 1/64 of the input's size in float64, and cheap to
    make - vectorised, with no counting beforehand.
    """
    for w in range(mask_row.size):
        # A slice and an index from 0 give contiguous, vectorised loads;
        # x[64 * w + b] would compile to gathers (the index might be negative).
        mask_row[w] = _nonzero_bits(x[64 * w : 64 * w + 64])


@kernel
def compress_rows(X, indptr, indices):
    """Write the columns of the nonzeros of each row of ``X`` in CSR form;
    return how many there are. ``indices`` needs room for one more entry."""
    n = 0
    indptr[0] = 0
    for r in range(X.shape[0]):
        x = X[r]
        for k in range(x.size):
            # Branch-free: always write, advance only past a nonzero.
            indices[n] = k
            n += x[k] != 0
        indptr[r + 1] = n
    return n


@kernel
def list_nonzeros(X, wordptr, indices, values):
    """List the nonzeros of each row of ``X`` with their values, by word of 64
    features: row ``r``'s nonzeros among features ``64 w`` to ``64 w + 63``
    are entries ``wordptr[r, w]`` to ``wordptr[r, w + 1] - 1`` of
    ``indices`` (their features) and ``values``; ``wordptr`` is ``m`` x
    ``ceil(n_x / 64) + 1``. Returns how many there are."""
    n = 0
    n_words = wordptr.shape[1] - 1
    for r in range(X.shape[0]):
        x = X[r]
        for w in range(n_words):
            wordptr[r, w] = n
            chunk = x[64 * w : 64 * w + 64]
            bits = _nonzero_bits(chunk)
            while bits:
                b = _trailing_zeros(bits)
                indices[n] = np.uint64(64 * w) + b
                values[n] = chunk[b]
                n += 1
                bits &= bits - np.uint64(1)
        wordptr[r, n_words] = n
    return n


@kernel
def transpose_sparse(X, indptr, indices, colptr, rowidx, values):
    """The positions of ``X``'s nonzeros listed by :func:`compress_rows`,
    grouped by column with rows in increasing order, and their values: CSC
    form. ``colptr`` has one entry per column, and one more."""
    n_cols = colptr.size - 1
    colptr[:] = 0
    for p in range(indptr[-1]):
        colptr[indices[p] + 1] += 1
    for k in range(n_cols):
        colptr[k + 1] += colptr[k]
    # colptr[k] serves as the write cursor of column k, then is shifted back.
    for r in range(indptr.size - 1):
        for p in range(indptr[r], indptr[r + 1]):
            k = indices[p]
            rowidx[colptr[k]] = r
            values[colptr[k]] = X[r, k]
            colptr[k] += 1
    for k in range(n_cols, 0, -1):
        colptr[k] = colptr[k - 1]
    colptr[0] = 0


# --------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------
@kernel
def _dot(a, b):
    total = a[0] * 0
    for i in range(a.size):
        total += a[i] * b[i]
    return total


@kernel
def _affine_row(out, M, v, b):
    """``out = M @ v + b``, four rows of ``M`` per pass over ``v``.

    Each row is a sum across one vector, which ends in a sum across its
    lanes; four at a time share the loads of ``v`` and the loop's set-up
    (output layer of MNIST's network: 1.75x faster in float32, 1.23x in
    float64, than one row at a time; eight at a time is no faster).
    """
    n = out.size
    zero = v.dtype.type(0)
    o = 0
    while o + 4 <= n:
        m0, m1, m2, m3 = M[o], M[o + 1], M[o + 2], M[o + 3]
        s0 = s1 = s2 = s3 = zero
        for h in range(v.size):
            s0 += m0[h] * v[h]
            s1 += m1[h] * v[h]
            s2 += m2[h] * v[h]
            s3 += m3[h] * v[h]
        out[o], out[o + 1], out[o + 2], out[o + 3] = (
            b[o] + s0,
            b[o + 1] + s1,
            b[o + 2] + s2,
            b[o + 3] + s3,
        )
        o += 4
    while o < n:
        out[o] = b[o] + _dot(M[o], v)
        o += 1


@kernel
def _output_layer(A1, activation, W2, b2, A2):
    """From ``A1 = Z1`` of a C-contiguous block of examples: activate it, then
    ``A2 = out(A1 W2.T + b2)``.

    A block at a time, so that the activation and the output's exponentials
    each run as one vectorised loop over the block (per example, 35% faster
    in float32 than one example at a time, with the same results).
    """
    _activate_row(A1.reshape(A1.size), activation)
    for r in range(A1.shape[0]):
        _affine_row(A2[r], W2, A1[r], b2)
    if A2.shape[1] == 1:
        _logistic_row(A2.reshape(A2.size))
    else:
        _softmax_rows(A2)


@kernel(parallel=True)
def forward(X, rows, nonzeros, W1, b1, W2, b2, activation, A1, A2, part_sums):
    """Forward pass on the examples ``X[rows]``.

    Writes ``A1 = f(X W1 + b1)`` and ``A2 = softmax(A1 W2.T + b2)``, one row
    per example. ``nonzeros`` (a :class:`Nonzeros`) lets the first layer
    skip the zeros: a full batch's prepared forms must be those of
    ``X[rows]``, listed nonzeros those of ``X`` (which may then have no
    columns: the listed values are all the pass reads); a mask is filled
    here, row by row, for the backward pass to read. ``A1`` and ``A2`` are
    C-contiguous.

    Through a mask or a list, the first layer is summed by parts of the
    features (see :func:`_first_layer_parts`) into ``A1`` and ``part_sums``
    (``N_PARTS - 1`` x ``min(len(rows), PART_GROUP)`` x ``n_h``, scratch),
    then the parts are added and the output layer computed by chunks of
    examples; in the other forms, each example by one thread at once.
    """
    mask, _, _, (indptr, indices), _ = nonzeros
    m = rows.size
    by_parts = reads_by_word(nonzeros)
    half = _half_blocks(W1)
    group = min(m, PART_GROUP) if by_parts else m
    for g0 in range(0, m, max(group, 1)):
        g1 = min(m, g0 + group)
        if by_parts:
            _first_layer_parts(X, rows[g0:g1], nonzeros, W1, b1, A1[g0:g1], part_sums, mask[g0:g1])
        n, one = g1 - g0, A1.dtype.type(1)
        n_chunks = _n_chunks(n)
        for c in prange(n_chunks):
            saved = _flush_subnormals()
            start, end = g0 + c * n // n_chunks, g0 + (c + 1) * n // n_chunks
            first = start
            if not by_parts and indptr.size == 0:  # dense: four examples at a time
                while first + 4 <= end:
                    r = first
                    for e in range(4):
                        _copy(b1, A1[r + e])
                    a0, a1, a2, a3 = A1[r], A1[r + 1], A1[r + 2], A1[r + 3]
                    x0, x1, x2, x3 = X[rows[r]], X[rows[r + 1]], X[rows[r + 2]], X[rows[r + 3]]
                    if half:  # the block is a constant in each call
                        _add_dense_rows_by_four(a0, a1, a2, a3, x0, x1, x2, x3, W1, 128)
                    else:
                        _add_dense_rows_by_four(a0, a1, a2, a3, x0, x1, x2, x3, W1, 256)
                    first += 4
            for r in range(first, end):
                a1 = A1[r]
                if by_parts:
                    for q in range(N_PARTS - 1):
                        _add_scaled(a1, one, part_sums[q, r - g0])
                    continue
                x = X[rows[r]]
                _copy(b1, a1)
                if indptr.size > 0:
                    _add_selected_rows(a1, x, W1, indices[indptr[r] : indptr[r + 1]])
                else:  # the sums of a group of four, row by row
                    for k in range(x.size):
                        _add_scaled(a1, x[k], W1[k])
            _output_layer(A1[start:end], activation, W2, b2, A2[start:end])
            _restore_subnormals(saved)


@kernel(parallel=True)
def _first_layer_parts(X, rows, nonzeros, W1, b1, A1, part_sums, mask):
    """The first layer of the examples ``X[rows]`` read through a mask (which
    this marks: ``mask`` is the examples' rows of it) or a list of nonzeros,
    by :data:`N_PARTS` parts of the features: ``A1 = b1 + X W1`` over the
    first part, ``part_sums[q] = X W1`` over part ``q + 1``.

    Each thread sums whole parts, so it reads mostly its own rows of ``W1``,
    those the backward pass gave it to update, rather than rows the other
    core has just updated. Against summing each example at once (measured
    in alternating processes on two threads, the CPUs near): W2 1.06x faster
    in float32 (8 pairs) and 1.12x in float64 (6), the estimator's benchmark
    1.08x (SGD, float32) and 1.06x (Adam, float64); on one thread W2 is
    about 3% slower, for the second pass over each batch.

    Through a mask, each thread first marks its part of every example's
    row, then sums word by word, so that a word's 64 rows of ``W1`` stay in
    the nearest cache while all the batch's examples add them (see
    :data:`HIDDEN_BLOCK`); a list, whose calls per word cost more than they
    save, is summed an example's part at a time.

    A batch's examples lie anywhere in ``X``, so each thread asks for its
    part of the row (or of the list) :data:`PREFETCH_AHEAD` examples ahead
    of the one it marks or sums: W2 1.06x-1.20x faster in float32 (5 pairs of
    processes) and 1.04x-1.09x in float64 (4), the estimator's benchmark
    1.06x-1.14x; the rows otherwise cost about a third of the first layer's
    time on one thread.
    """
    _, _, (wordptr, listed, values), _, _ = nonzeros
    n_words = mask.shape[1] if mask.shape[0] > 0 else wordptr.shape[1] - 1
    zero = A1.dtype.type(0)
    for part in prange(N_PARTS):
        saved = _flush_subnormals()
        w0, w1 = _part_words(part, n_words)
        for r in range(rows.size):
            out = A1[r] if part == 0 else part_sums[part - 1, r]
            if part == 0:
                _copy(b1, out)
            else:
                for h in range(out.size):
                    out[h] = zero
            ahead = rows[min(r + PREFETCH_AHEAD, rows.size - 1)]
            if mask.shape[0] > 0:
                _prefetch_row(X[ahead][64 * w0 : 64 * w1])
                _mark_nonzeros(X[rows[r]][64 * w0 :], mask[r, w0:w1])
            else:
                p0, p1 = wordptr[ahead, w0], wordptr[ahead, w1]
                _prefetch_row(values[p0:p1])
                _prefetch_row(listed[p0:p1])
                p0, p1 = wordptr[rows[r], w0], wordptr[rows[r], w1]
                _add_listed_rows(out, values[p0:p1], W1, listed[p0:p1])
        if mask.shape[0] > 0:
            # Word by word: a word's rows of W1 stay in the nearest cache
            # while all the examples add them.
            for w in range(w0, w1):
                for r in range(rows.size):
                    out = A1[r] if part == 0 else part_sums[part - 1, r]
                    _add_marked_rows(out, X[rows[r]][64 * w :], BITS, W1[64 * w :], mask[r, w])
        _restore_subnormals(saved)


# --------------------------------------------------------------------------
# Backward pass
# --------------------------------------------------------------------------
@kernel
def _output_delta_row(a2, label):
    """``a2 := dZ2 = A2 - Y`` for one example; return its cross-entropy.

    Probabilities are clipped to ``[eps, 1 - eps]`` inside the logarithm, as
    scikit-learn does, so the loss stays finite when a class gets probability 0.
    """
    one = a2.dtype.type(1)
    eps = np.finfo(a2.dtype).eps
    if a2.size == 1:
        p = min(max(a2[0], eps), one - eps)
        loss = -np.log(p) if label == 1 else -np.log(one - p)
        a2[0] -= label
    else:
        p = min(max(a2[label], eps), one - eps)
        loss = -np.log(p)
        a2[label] -= one
    return np.float64(loss)


@kernel(noalias=True)
def _hidden_delta_row(W2, activation, a1, dz2, db1, back):
    """``a1 := dZ1 = (dZ2 @ W2) * f'(Z1)`` for one example, from ``a1 = f(Z1)``
    and its (scaled) ``dz2``, and ``db1 += dZ1``; ``back`` is scratch. Its
    arrays never overlap, which it declares (``noalias``: the per-example
    step it was part of measured 16% faster in float64 with it).
    """
    back[:] = 0
    _add_rows(back, dz2, W2)
    _derivative_row(a1, activation)
    for h in range(a1.size):
        a1[h] *= back[h]
        db1[h] += a1[h]


@kernel(noalias=True)
def _backprop_rows(y, weights, rows, inv_total, W2, activation, A1, A2, sums):
    """The backward pass's share of the examples ``rows`` (a chunk of a
    batch), whose activations are the rows of ``A1, A2``; returns the sum of
    their losses, weighted.

    Each example's share is its weight times ``inv_total`` (``1/m``
    unweighted). Turns ``A2`` into ``share (A2 - Y)`` and ``A1`` into
    ``share dZ1``, and adds the examples' terms into ``sums``: ``dW2``
    (``n_y*n_h``), ``db2`` (``n_y``), ``db1`` (``n_h``), followed by ``n_h``
    entries of scratch. Scaling here, once per example, makes every sum a
    (weighted) mean as it is added, so no pass over the gradients is needed
    afterwards.
    """
    n_y, n_h = W2.shape
    dW2 = sums[: n_y * n_h].reshape((n_y, n_h))
    db2 = sums[n_y * n_h : n_y * n_h + n_y]
    db1 = sums[n_y * n_h + n_y : n_y * n_h + n_y + n_h]
    back = sums[n_y * n_h + n_y + n_h :]
    loss = 0.0
    for r in range(rows.size):
        weight = 1.0 if weights.size == 0 else weights[rows[r]]
        dz2 = A2[r]
        loss += weight * _output_delta_row(dz2, y[rows[r]])
        share = dz2.dtype.type(weight * inv_total)
        for o in range(n_y):
            dz2[o] *= share
            db2[o] += dz2[o]
    # dW2 += dZ2.T @ A1 a row at a time, before A1 is overwritten: each pass
    # over a row of dW2 gains four examples, where one example at a time
    # loaded and stored all of dW2 for each (this part of W1's backward pass:
    # 1.2x faster in float32, 1.16x in float64).
    for o in range(n_y):
        _add_rows(dW2[o], A2[:, o], A1)
    for r in range(rows.size):
        _hidden_delta_row(W2, activation, A1[r], A2[r], db1, back)
    return loss


@kernel
def _finite(loss, grads):
    # inf * 0 and nan * 0 are nan, finite * 0 is 0: one pass, no branches.
    flat = grads.reshape(grads.size)
    total = loss * 0.0
    for i in range(flat.size):
        total += flat[i] * 0
    return total == 0


@kernel
def _sum_of_squares(M):
    flat = M.reshape(M.size)
    total = 0.0
    for i in range(flat.size):
        total += flat[i] * flat[i]
    return total


@kernel
def _add_chunks(partial, partial_loss, total, W2, l2, penalty, dW2, db2, db1):
    """Add the chunks' sums in order into ``dW2, db2, db1``, add the L2 term
    (``penalty W2``) to ``dW2`` and return the loss but for ``W1``'s L2 term;
    ``total`` is the batch's total weight."""
    k, n_y, n_h = W2.size, W2.shape[0], W2.shape[1]
    gW2 = dW2.reshape(k)
    gW2[:] = 0
    db2[:] = 0
    db1[:] = 0
    for c in range(partial.shape[0]):
        sums = partial[c]
        gW2 += sums[:k]
        db2 += sums[k : k + n_y]
        db1 += sums[k + n_y : k + n_y + n_h]
    if total == 0:
        return 0.0
    loss = partial_loss.sum() / total
    if l2 > 0:
        _add_scaled(gW2, penalty, W2.reshape(k))
        loss += 0.5 * l2 * _sum_of_squares(W2) / total
    return loss


@kernel
def _total_weight(weights, rows):
    """The weight of the examples ``rows``: their count, without weights."""
    if weights.size == 0:
        return np.float64(rows.size)
    total = 0.0
    for r in range(rows.size):
        total += weights[rows[r]]
    return total


L1_BYTES = 32 * 1024
"""The data cache closest to each core: 32 KB on most x86 and Arm cores."""


@kernel
def _feature_block(n_h, itemsize):
    """How many features of ``dW1`` the backward pass gives a thread at a
    time when it reads a mini-batch's mask or list: the most, up to one
    word of the mask (64), whose rows fit in :data:`L1_BYTES`.

    Measured on MNIST against a fixed 16, when each example added its terms
    into the block's rows: the sum over features alone 14-31% faster with
    hidden 64 (64 features), the whole backward pass 3-8%; with hidden 256,
    16 (float64) and 32 (float32) features were the fastest. Since a mask's
    blocks go feature by feature with the sums in registers, whole words
    for every hidden size made W3 slower (0.84x-1.01x, alternating processes).
    """
    size = 64
    while size > 1 and size * n_h * itemsize > L1_BYTES:
        size //= 2
    return size


@kernel
def _part_of_columns(colptr, part, n_parts):
    """The columns ``k0:k1`` of part ``part`` of ``n_parts`` that hold about
    equal numbers of nonzeros (``colptr`` from :func:`transpose_sparse`)."""
    starts, nnz = colptr[:-1], colptr[-1]
    k0 = 0 if part == 0 else np.searchsorted(starts, part * nnz // n_parts)
    k1 = (
        starts.size if part == n_parts - 1 else np.searchsorted(starts, (part + 1) * nnz // n_parts)
    )
    return k0, k1


@kernel
def _dW1_blocks(nonzeros, n_x, n_h, itemsize):
    """How :func:`backward` splits the rows of ``dW1`` between threads:
    returns the block size, the number of blocks and whether the blocks are
    a mask's or a list's (see :func:`_block_rows`).

    Blocks of features own their rows of ``dW1`` and add the examples in
    order, so neither the thread count nor the blocks ever change a sum. Each
    form of the input gets the blocks that suit it:

    * a mask or listed nonzeros: see :func:`_feature_block`; a block lies
      within one word of 64 features. The blocks come in :data:`N_PARTS`
      parts of the same words as :func:`_first_layer_parts`' parts, each
      padded to the same number of blocks with empty ones, so that a
      thread of the parallel loop sums (and updates) the rows of ``W1``
      that the same thread reads in the forward pass.
    * a prepared full batch costs per nonzero, so its blocks hold equal
      numbers of them (images have more in some rows of pixels than in
      others; full-batch backward 2-6% faster than blocks of 16 features).
    * a dense input costs the same for every feature: blocks of 16 share
      them evenly between threads (64: 15-19% slower in float64).
    """
    colptr = nonzeros.csc[0]
    if colptr.size > 0:
        return 16, N_CHUNKS, False
    if reads_by_word(nonzeros):
        size = _feature_block(n_h, itemsize)
        w0, w1 = _part_words(N_PARTS - 1, (n_x + 63) // 64)  # the last part is the largest
        return size, N_PARTS * (w1 - w0) * (64 // size), True
    return 16, (n_x + 15) // 16, False


@kernel
def _block_rows(block, n_blocks, size, colptr, n_x, by_word):
    """The rows ``k0:k1`` of ``dW1`` (features) in block ``block`` of
    :func:`_dW1_blocks` (``by_word``: of a mask or list; may be empty)."""
    if colptr.size > 0:
        return _part_of_columns(colptr, block, n_blocks)
    if by_word:
        per_part = n_blocks // N_PARTS
        w0, w1 = _part_words(block // per_part, (n_x + 63) // 64)
        end = min(n_x, 64 * w1)
        k0 = 64 * w0 + (block % per_part) * size
        return min(k0, end), min(k0 + size, end)
    return block * size, min(n_x, block * size + size)


@kernel(parallel=True)
def backward(
    X,
    rows,
    nonzeros,
    y,
    weights,
    W1,
    W2,
    activation,
    l2,
    A1,
    A2,
    dW1,
    db1,
    dW2,
    db2,
    partial,
    partial_loss,
    finite,
):
    """All six gradients of the mean cross-entropy (plus ``l2/2m`` times the
    squared weights) for the examples ``X[rows]`` with labels ``y[rows]``.

    With ``weights`` (one per example of ``X``, float64; empty for none) the
    mean is weighted and ``m`` is the total weight of ``rows``, as in
    scikit-learn's MLP; a batch of total weight 0 has no gradient and no loss.
    ``A1, A2`` come from :func:`forward` and are overwritten with ``dZ1 / m,
    dZ2 / m``.
    ``nonzeros`` is the :class:`Nonzeros` that :func:`forward` read.
    ``partial`` (``N_CHUNKS`` x ``n_y*n_h + n_y + 2*n_h``) and ``partial_loss``
    (float64, ``N_CHUNKS`` entries or one per block of :func:`_dW1_blocks`,
    whichever is more: the chunks' losses, then the blocks' squared weights)
    are scratch. ``finite`` (bool, one entry per block or more) receives
    whether each block of ``dW1`` is finite, for :func:`_update_if_finite`.
    Returns the loss.

    Each block's thread sums its rows' squared weights for the L2 term of the
    loss, as it adds their L2 term to ``dW1``. One thread summing all of ``W1``
    after the loop read the rows the other thread had just updated, from its
    cache: the estimator's Adam epochs at batches of 32 in float32 took
    twice as long with its default penalty as without.
    """
    m = rows.size
    total = _total_weight(weights, rows)
    inv_total = 1.0 / total if total != 0 else 0.0
    penalty = W1.dtype.type(l2 / total if total != 0 else 0.0)
    n_chunks = _n_chunks(m)
    for c in prange(n_chunks):
        saved = _flush_subnormals()
        start, end = c * m // n_chunks, (c + 1) * m // n_chunks
        partial[c] = 0
        partial_loss[c] = _backprop_rows(
            y, weights, rows[start:end], inv_total, W2, activation, A1[start:end],
            A2[start:end], partial[c],
        )  # fmt: skip
        _restore_subnormals(saved)
    loss = _add_chunks(
        partial[:n_chunks], partial_loss[:n_chunks], total, W2, l2, penalty, dW2, db2, db1
    )
    # dW1 = X.T @ dZ1 (see _dW1_blocks), and whether each block is finite,
    # checked while it is in this thread's cache.
    mask, turned, (wordptr, listed, listed_values), _, (colptr, rowidx, values) = nonzeros
    n_x, n_h = W1.shape
    size, n_blocks, by_word = _dW1_blocks(nonzeros, n_x, n_h, W1.itemsize)
    word_mask = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - size)
    half = _half_blocks(W1)
    for block in prange(n_blocks):
        k0, k1 = _block_rows(block, n_blocks, size, colptr, n_x, by_word)
        finite[block] = True
        partial_loss[block] = 0.0
        if k0 == k1:  # a part's padding
            continue
        saved = _flush_subnormals()
        dW1[k0:k1] = 0
        if colptr.size > 0:
            for k in range(k0, k1):
                p0, p1 = colptr[k], colptr[k + 1]
                _add_listed_rows(dW1[k], values[p0:p1], A1, rowidx[p0:p1])
        elif wordptr.size > 0:
            word = k0 // 64
            for r in range(m):
                p0, p1 = wordptr[rows[r], word], wordptr[rows[r], word + 1]
                if size < 64:  # the block is part of its word
                    while p0 < p1 and listed[p0] < k0:
                        p0 += 1
                    while p1 > p0 and listed[p1 - 1] >= k1:
                        p1 -= 1
                _scatter_row(dW1, listed_values[p0:p1], listed[p0:p1], A1[r])
        elif mask.shape[0] > 0:
            word, shift = k0 // 64, np.uint64(k0 % 64)
            # By feature, from the examples that have it, 64 examples at a
            # time: their words of the mask, turned around.
            by_feature = turned[get_thread_id()]
            for g0 in range(0, m, 64):
                g1 = min(m, g0 + 64)
                for r in range(64):
                    by_feature[r] = 0
                for r in range(g0, g1):
                    by_feature[r - g0] = (mask[r, word] >> shift) & word_mask
                _transpose_bits(by_feature)
                for k in range(k0, k1):
                    _add_marked_rows(dW1[k], X[:, k], rows[g0:g1], A1[g0:g1], by_feature[k - k0])
        else:  # dense: four features at a time, then the rest example by example
            first = k0
            while first + 4 <= k1:
                k = first
                d0, d1, d2, d3 = dW1[k], dW1[k + 1], dW1[k + 2], dW1[k + 3]
                if half:  # the block is a constant in each call
                    _add_dense_columns_by_four(d0, d1, d2, d3, X, rows, k, A1, 128)
                else:
                    _add_dense_columns_by_four(d0, d1, d2, d3, X, rows, k, A1, 256)
                first += 4
            if first < k1:  # only the last block, if short, can leave features over
                for r in range(m):
                    x, dz1 = X[rows[r]], A1[r]
                    for k in range(first, k1):
                        _add_scaled(dW1[k], x[k], dz1)
        if l2 > 0:
            for k in range(k0, k1):
                _add_scaled(dW1[k], penalty, W1[k])
            partial_loss[block] = _sum_of_squares(W1[k0:k1])
        finite[block] = _finite(0.0, dW1[k0:k1])
        _restore_subnormals(saved)
    if l2 > 0 and total != 0:
        squares = 0.0
        for block in range(n_blocks):
            squares += partial_loss[block]
        loss += 0.5 * l2 * squares / total
    return loss


# --------------------------------------------------------------------------
# Parameter updates, in place on the flat parameter vector
# --------------------------------------------------------------------------
@kernel
def sgd_update(theta, grads, learning_rate):
    """``theta -= learning_rate * grads``."""
    lr = theta.dtype.type(learning_rate)
    for i in range(theta.size):
        theta[i] -= lr * grads[i]


@kernel
def momentum_update(theta, grads, velocity, learning_rate, momentum, nesterov):
    """``v = momentum v - lr g``; ``theta += v``, or with Nesterov's look-ahead
    ``theta += momentum v - lr g`` (scikit-learn's SGDOptimizer)."""
    lr = theta.dtype.type(learning_rate)
    mu = theta.dtype.type(momentum)
    for i in range(theta.size):
        velocity[i] = mu * velocity[i] - lr * grads[i]
        if nesterov:
            theta[i] += mu * velocity[i] - lr * grads[i]
        else:
            theta[i] += velocity[i]


@kernel
def adam_update(theta, grads, m, v, learning_rate, beta1, beta2, epsilon, t):
    """Adam's step ``t`` (counted from 1), with its bias correction folded into
    the learning rate as in scikit-learn's AdamOptimizer."""
    one = theta.dtype.type(1)
    b1, b2 = theta.dtype.type(beta1), theta.dtype.type(beta2)
    eps = theta.dtype.type(epsilon)
    lr = theta.dtype.type(learning_rate * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))
    for i in range(theta.size):
        g = grads[i]
        m[i] = b1 * m[i] + (one - b1) * g
        v[i] = b2 * v[i] + (one - b2) * (g * g)
        theta[i] -= lr * m[i] / (np.sqrt(v[i]) + eps)


@kernel
def _update_range(theta, grads, i0, i1, solver, hyper, state, t):
    """The optimiser's update of ``theta[i0:i1]``; ``t`` is Adam's step."""
    p, g = theta[i0:i1], grads[i0:i1]
    if solver == ADAM:
        adam_update(
            p, g, state[0, i0:i1], state[1, i0:i1], hyper[LEARNING_RATE], hyper[BETA1],
            hyper[BETA2], hyper[EPSILON], t,
        )  # fmt: skip
    elif solver == MOMENTUM:
        momentum_update(
            p, g, state[0, i0:i1], hyper[LEARNING_RATE], hyper[MOMENTUM_COEF],
            hyper[NESTEROV] != 0,
        )  # fmt: skip
    else:
        sgd_update(p, g, hyper[LEARNING_RATE])


@kernel(parallel=True)
def _update_blocks(
    theta, grads, solver, hyper, state, t, n_x, n_h, size, n_blocks, colptr, by_word
):
    """The update of ``W1``, the first ``n_x * n_h`` parameters, by the blocks
    of :func:`backward`'s gradient: the parallel loop gives each thread the
    same blocks as there, so each updates rows whose gradient it has just
    summed, in its own cache."""
    for block in prange(n_blocks):
        saved = _flush_subnormals()
        k0, k1 = _block_rows(block, n_blocks, size, colptr, n_x, by_word)
        _update_range(theta, grads, k0 * n_h, k1 * n_h, solver, hyper, state, t)
        _restore_subnormals(saved)


@kernel
def _update_if_finite(loss, theta, grads, optimizer, n_x, n_h, nonzeros, finite):
    """Apply the optimiser's update unless the loss or a gradient is not
    finite; then leave the parameters as they are and return False.

    ``finite`` holds :func:`backward`'s check of each block of ``dW1``, so
    that only the other gradients (``db1, dW2, db2``, a small part) are
    checked here. ``W1`` is updated by :func:`_update_blocks`, the rest by
    one thread. Until 2026-11-30 one thread checked and updated all of it,
    reading the half of ``dW1`` the other thread had summed, which then read
    the rows of ``W1`` it needed back. Without that traffic between the
    cores, W2 in float32 runs 1.10x faster when the two cores are near (30
    ns from one to the other) and 1.27x when they are far apart (170 ns), as
    they sometimes are on this project's virtual machine.
    """
    solver, hyper, state, step = optimizer
    colptr = nonzeros.csc[0]
    size, n_blocks, by_word = _dW1_blocks(nonzeros, n_x, n_h, theta.itemsize)
    n_w1 = n_x * n_h
    ok = _finite(loss, grads[n_w1:])
    for block in range(n_blocks):
        ok = ok and finite[block]
    if not ok:
        return False
    if solver == ADAM:
        step[0] += 1
    _update_blocks(
        theta, grads, solver, hyper, state, step[0], n_x, n_h, size, n_blocks, colptr, by_word
    )
    saved = _flush_subnormals()
    _update_range(theta, grads, n_w1, theta.size, solver, hyper, state, step[0])
    _restore_subnormals(saved)
    return True


# --------------------------------------------------------------------------
# Training: one entry point, so that a run compiles its loop once
# --------------------------------------------------------------------------
@kernel
def train_epoch(
    X, y, weights, order, batch_size, theta, grads, activation, optimizer, work, nonzeros
):
    """One epoch: a forward pass, backward pass and update per batch of ``order``.

    ``weights`` are the examples' weights (float64), or empty (see :func:`backward`).

    ``optimizer`` is ``(solver, hyper, state, step)``; ``work`` is ``(A1, A2,
    part_sums, partial, partial_loss, finite)`` with room for ``batch_size`` examples;
    ``nonzeros`` is a :class:`Nonzeros`: with a mask, :func:`forward` marks
    each batch when it comes; the prepared forms serve a single batch of all of
    ``order`` (one step of full-batch gradient descent).

    Returns the sum over batches of loss times batch size, and the index of
    the batch whose loss or gradient was not finite (the epoch stops there,
    with the parameters as they were before that batch), or -1.
    """
    A1, A2, part_sums, partial, partial_loss, finite = work
    n_h, n_y = A1.shape[1], A2.shape[1]
    n_x = (theta.size - n_h - n_y * n_h - n_y) // n_h  # X may have no columns
    W1, b1, W2, b2 = unpack(theta, n_x, n_h, n_y)
    dW1, db1, dW2, db2 = unpack(grads, n_x, n_h, n_y)
    l2 = optimizer[1][L2]
    total = 0.0
    for batch, start in enumerate(range(0, order.size, batch_size)):
        rows = order[start : start + batch_size]
        m = rows.size
        a1, a2 = A1[:m], A2[:m]
        forward(X, rows, nonzeros, W1, b1, W2, b2, activation, a1, a2, part_sums)
        loss = backward(
            X, rows, nonzeros, y, weights, W1, W2, activation, l2, a1, a2,
            dW1, db1, dW2, db2, partial, partial_loss, finite,
        )  # fmt: skip
        if not _update_if_finite(loss, theta, grads, optimizer, n_x, n_h, nonzeros, finite):
            return total, batch
        total += loss * m
    return total, -1
