"""NumPy references for the algorithms' math, on a linear softmax model (logistic regression).

Independent of JAX and flax: gradients are written out by hand, batches are formed the way the
cohort docs say (the client's examples in data order, repeated, cut into batches), and the
server rules are Reddi et al.'s Algorithm 2 line by line.
"""

import numpy as np


def softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def loss_and_grad(w, b, x, y):
  """Mean softmax cross-entropy of logits x @ w + b, and its gradients."""
  p = softmax(x @ w + b)
  n = len(y)
  loss = -np.log(p[np.arange(n), y]).mean()
  d = p.copy()
  d[np.arange(n), y] -= 1.0
  d /= n
  return loss, x.T @ d, d.sum(0)


def batches(n, batch_size, *, local_steps=None, local_epochs=None):
  """Index batches of one client, unshuffled: repeat(E).batch(B), or S steps of min(B, n)."""
  if local_steps is not None:
    width = min(batch_size, n)
    stream = np.arange(local_steps * width) % n
    return [stream[s * width : (s + 1) * width] for s in range(local_steps)]
  total = int(np.ceil(local_epochs * n - 1e-9))
  stream = np.arange(total) % n
  return [stream[i : i + batch_size] for i in range(0, total, batch_size)]


def client_update(w, b, x, y, lr, batch_size, mu=0.0, **mode):
  """Local SGD (with FedProx's proximal gradient when mu > 0); returns the delta x - x_k."""
  w0, b0 = w.copy(), b.copy()
  for idx in batches(len(y), batch_size, **mode):
    _, gw, gb = loss_and_grad(w, b, x[idx], y[idx])
    gw = gw + mu * (w - w0)
    gb = gb + mu * (b - b0)
    w, b = w - lr * gw, b - lr * gb
  return w0 - w, b0 - b


def mean_delta(clients, w, b, lr, batch_size, weighting="num_examples", mu=0.0, **mode):
  dws, dbs, ws = [], [], []
  for x, y in clients:
    dw, db = client_update(w, b, x, y, lr, batch_size, mu, **mode)
    dws.append(dw)
    dbs.append(db)
    ws.append(len(y) if weighting == "num_examples" else 1.0)
  ws = np.asarray(ws, np.float64)
  return (np.tensordot(ws, np.stack(dws), 1) / ws.sum(), np.tensordot(ws, np.stack(dbs), 1) / ws.sum())


class ServerRule:
  """x <- x - lr * g for FedAvg ('sgd'); Reddi et al.'s adaptive rules on Delta = -g otherwise."""

  def __init__(self, rule, lr, b1=0.9, b2=0.99, tau=1e-3):
    self.rule, self.lr, self.b1, self.b2, self.tau = rule, lr, b1, b2, tau
    self.m = self.v = None

  def step(self, params, delta):
    """params: list of arrays; delta: the mean client delta x - x_k (a gradient)."""
    if self.rule == "sgd":
      return [p - self.lr * d for p, d in zip(params, delta)]
    if self.m is None:
      self.m = [np.zeros_like(p) for p in params]
      self.v = [np.full_like(p, self.tau**2) for p in params]
    out = []
    for i, (p, d) in enumerate(zip(params, delta)):
      D = -d  # Reddi's Delta_t = mean(x_k) - x
      self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * D
      if self.rule == "adagrad":
        self.v[i] = self.v[i] + D * D
      elif self.rule == "adam":
        self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * D * D
      else:
        self.v[i] = self.v[i] - (1 - self.b2) * D * D * np.sign(self.v[i] - D * D)
      out.append(p + self.lr * self.m[i] / (np.sqrt(self.v[i]) + self.tau))
    return out
