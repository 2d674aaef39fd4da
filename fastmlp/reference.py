"""The reference path: the notebook's NumPy code, kept plain so it can be trusted.

Everything here is written as in ``seed-notebook.md``: examples are columns
(``X`` is ``n_x`` x ``m``), ``b1`` and ``b2`` are column vectors, and
``Y`` is one-hot with one column per example. With the notebook's settings
it computes exactly what the notebook computes, bit for bit; the test suite
runs the notebook's own cells beside it to show that.

Each function is the twin of the kernel of the same name in
:mod:`fastmlp.kernels` (which keeps examples in rows); the tests compare
the two on random inputs. The notebook's ``forward_prop``, ``backward_prop``
and ``update_params`` are :func:`forward`, :func:`backward` and
:func:`update_params` here, generalised to the other activations, an L2
penalty and a logistic output for two classes, all off by default.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adam_update",
    "backward",
    "cross_entropy",
    "forward",
    "init_params",
    "momentum_update",
    "sgd_update",
    "sigmoid",
    "sigmoid_deriv",
    "softmax",
    "train_epoch",
    "update_params",
]


# ---- activations ---------------------------------------------------------
def sigmoid(Z):
    # For Z < -709, exp(-Z) overflows to inf and 1 / (1 + inf) is exactly 0,
    # the right limit: the overflow is harmless, so it is not reported.
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-Z))


def sigmoid_deriv(A):
    return A * (1 - A)


def softmax(Z):
    expZ = np.exp(Z - np.max(Z, axis=0, keepdims=True))  # subtract max for stability
    return expZ / np.sum(expZ, axis=0, keepdims=True)


def tanh(Z):
    return np.tanh(Z)


def tanh_deriv(A):
    return 1 - A**2


def relu(Z):
    return np.maximum(Z, 0)


def relu_deriv(A):
    return (A > 0).astype(A.dtype)


ACTIVATIONS = {"logistic": sigmoid, "tanh": tanh, "relu": relu}
DERIVATIVES = {"logistic": sigmoid_deriv, "tanh": tanh_deriv, "relu": relu_deriv}


# ---- the network ---------------------------------------------------------
def init_params(n_x, n_h, n_y, seed=1, dtype=np.float64):
    """The notebook's initialisation, from its own random stream.

    ``np.random.seed(1)`` followed by ``np.random.randn`` is the stream of
    ``np.random.RandomState(1)``; using the latter leaves NumPy's global
    random state alone.
    """
    rng = np.random.RandomState(seed)
    W1 = rng.randn(n_h, n_x) * 0.1
    b1 = np.zeros((n_h, 1))
    W2 = rng.randn(n_y, n_h) * 0.1
    b2 = np.zeros((n_y, 1))
    return tuple(p.astype(dtype, copy=False) for p in (W1, b1, W2, b2))


def forward(W1, b1, W2, b2, X, activation="logistic"):
    Z1 = W1.dot(X) + b1
    A1 = ACTIVATIONS[activation](Z1)
    Z2 = W2.dot(A1) + b2
    # One output unit is a logistic unit (two classes), as in scikit-learn.
    A2 = softmax(Z2) if W2.shape[0] > 1 else sigmoid(Z2)
    return Z1, A1, Z2, A2


def cross_entropy(A2, Y):
    """Mean cross-entropy, with probabilities clipped to ``[eps, 1 - eps]``."""
    eps = np.finfo(A2.dtype).eps
    P = np.clip(A2, eps, 1 - eps)
    m = Y.shape[1]
    if A2.shape[0] == 1:
        return float(-np.sum(Y * np.log(P) + (1 - Y) * np.log(1 - P)) / m)
    return float(-np.sum(Y * np.log(P)) / m)


def backward(Z1, A1, Z2, A2, W1, W2, X, Y, activation="logistic", l2=0.0):
    m = X.shape[1]

    dZ2 = A2 - Y
    dW2 = (1 / m) * dZ2.dot(A1.T)
    db2 = (1 / m) * np.sum(dZ2, axis=1, keepdims=True)

    dA1 = W2.T.dot(dZ2)
    dZ1 = dA1 * DERIVATIVES[activation](A1)
    dW1 = (1 / m) * dZ1.dot(X.T)
    db1 = (1 / m) * np.sum(dZ1, axis=1, keepdims=True)

    if l2:
        dW1 += (l2 / m) * W1
        dW2 += (l2 / m) * W2
    return dW1, db1, dW2, db2


def update_params(W1, b1, W2, b2, dW1, db1, dW2, db2, alpha):
    W1 -= alpha * dW1
    b1 -= alpha * db1
    W2 -= alpha * dW2
    b2 -= alpha * db2
    return W1, b1, W2, b2


# ---- the other update rules (scikit-learn's SGDOptimizer and AdamOptimizer)
def sgd_update(theta, grads, learning_rate):
    theta -= learning_rate * grads


def momentum_update(theta, grads, velocity, learning_rate, momentum, nesterov):
    velocity[...] = momentum * velocity - learning_rate * grads
    if nesterov:
        theta += momentum * velocity - learning_rate * grads
    else:
        theta += velocity


def adam_update(theta, grads, m, v, learning_rate, beta1, beta2, epsilon, t):
    m[...] = beta1 * m + (1 - beta1) * grads
    v[...] = beta2 * v + (1 - beta2) * grads**2
    lr = learning_rate * np.sqrt(1 - beta2**t) / (1 - beta1**t)
    theta -= lr * m / (np.sqrt(v) + epsilon)


def one_hot(labels, n_y):
    """Targets for ``n_y`` outputs: one-hot columns, or the 0/1 row when ``n_y == 1``."""
    if n_y == 1:
        return labels.reshape(1, -1).astype(float)
    return np.eye(n_y)[labels].T


def train_epoch(
    params,
    X,
    labels,
    order,
    batch_size,
    solver="sgd",
    state=None,
    *,
    learning_rate=0.01,
    momentum=0.0,
    nesterov=False,
    beta1=0.9,
    beta2=0.999,
    epsilon=1e-8,
    step=0,
    activation="logistic",
    l2=0.0,
):
    """One epoch of mini-batch training, in place on ``params = [W1, b1, W2, b2]``.

    ``order`` lists the examples (columns of ``X``) in the order they are
    used; ``labels`` are integer class indices. ``state`` holds one (SGD with
    momentum) or two (Adam) arrays per parameter. Returns the sum over
    batches of loss times batch size, the updated Adam step count, and the
    index of the batch whose loss or gradient was not finite (the epoch stops
    there, before updating), or -1.
    """
    total = 0.0
    n_y = params[2].shape[0]
    for batch, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        Xb = X[:, rows]
        Yb = one_hot(labels[rows], n_y).astype(Xb.dtype)
        Z1, A1, Z2, A2 = forward(*params, Xb, activation)
        W1, W2 = params[0], params[2]
        loss = cross_entropy(A2, Yb)
        if l2:
            loss += 0.5 * l2 * (np.sum(W1**2) + np.sum(W2**2)) / len(rows)
        grads = backward(Z1, A1, Z2, A2, W1, W2, Xb, Yb, activation, l2)
        if not all_finite(loss, grads):
            return total, step, batch
        step += solver == "adam"
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if solver == "adam":
                adam_update(
                    p, g, state[0][i], state[1][i], learning_rate, beta1, beta2, epsilon, step
                )
            elif momentum:
                momentum_update(p, g, state[0][i], learning_rate, momentum, nesterov)
            else:
                sgd_update(p, g, learning_rate)
        total += loss * len(rows)
    return total, step, -1


def all_finite(loss, grads):
    return bool(np.isfinite(loss)) and all(np.isfinite(g).all() for g in grads)
