"""Every field an experiment config has, with its default; each file in ``experiments/configs``
starts from ``get_base()`` and overrides some. Unknown fields are refused (the config is locked).
"""

import ml_collections


def get_base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # fixes data generation, traces, selection, shuffling and training
  c.rounds = 100  # server rounds (server steps in async mode)
  c.clients_per_round = 50  # K: updates aggregated per round (the FedBuff buffer size in async mode)

  c.data = ml_collections.ConfigDict()
  c.data.kind = "synthetic"  # 'synthetic' (generated into WORKDIR/data) or 'directory' (a converted dataset)
  c.data.path = ""  # for 'directory': a root holding train/ (and test/) in the fedjaxscale layout
  c.data.num_clients = 1000  # synthetic: population size
  c.data.alpha = 1.0  # synthetic: spread of the clients' models
  c.data.beta = 1.0  # synthetic: spread of the clients' features
  c.data.iid = False  # synthetic: Synthetic-IID instead
  c.data.max_size = 1000  # synthetic: cap on a client's examples (0: none)
  c.data.seed = 0  # synthetic: data generation seed

  c.model = ml_collections.ConfigDict()
  c.model.name = "logistic_regression"  # see fedjaxscale/training/validation.py MODELS
  c.model.num_classes = 10  # output classes
  c.model.hidden = (200, 200)  # mlp: hidden widths
  c.model.dense = 2048  # femnist_cnn: width of the dense layer
  c.model.vocab_size = 0  # sequence models: vocabulary without the special ids (0: the model's default)
  c.model.embed_dim = 0  # sequence models: embedding width (0: the model's default)
  c.model.lstm_sizes = ()  # sequence models: LSTM widths (empty: the model's default)
  c.model.width = 64  # resnet18_gn: width of the first stage
  c.model.groups = 2  # resnet18_gn: group-norm groups
  # Local training's compute dtype: 'float32', or 'bfloat16' (parameters, deltas and the aggregate
  # stay float32). Measured 1.9x slower for the FEMNIST CNN on an AVX-512/AMX CPU under XLA:CPU,
  # so float32 is the default; sequence models compute in float32 only.
  c.model.compute_dtype = "float32"

  c.algorithm = ml_collections.ConfigDict()
  c.algorithm.name = "fedavg"  # 'fedavg', 'fedprox', 'fedyogi', 'fedadam', 'fedadagrad', 'scaffold' or 'ditto'
  c.algorithm.client_lr = 0.05  # client SGD learning rate
  c.algorithm.client_momentum = 0.0  # client SGD momentum (0: none)
  c.algorithm.client_lr_decay = 1.0  # multiply the client lr by this every client_lr_decay_every rounds
  c.algorithm.client_lr_decay_every = 10  # rounds between decays
  c.algorithm.client_lr_min = 0.0  # floor of the decayed client lr
  c.algorithm.server_lr = 1.0  # server learning rate (eta for the adaptive servers)
  c.algorithm.server_momentum = 0.0  # fedavg/fedprox server SGD momentum (0: none)
  c.algorithm.mu = 0.0  # fedprox: proximal coefficient
  c.algorithm.beta1 = 0.9  # adaptive servers: momentum decay
  c.algorithm.beta2 = 0.99  # adaptive servers: second-moment decay
  c.algorithm.tau = 1e-3  # adaptive servers: adaptivity
  c.algorithm.initial_v = 0.0  # adaptive servers: v_0 (0: tau**2, as Reddi et al.)
  c.algorithm.weighting = "num_examples"  # 'num_examples' (n_k-weighted mean) or 'uniform'
  c.algorithm.lam = 0.1  # ditto: lambda of the personal models' proximal term
  c.algorithm.personal_lr = 0.0  # ditto: the personal models' SGD learning rate (0: client_lr)

  c.local = ml_collections.ConfigDict()
  c.local.batch_size = 10  # examples per local step
  c.local.local_steps = 0  # fixed local steps per client (FedScale); 0 to use local_epochs
  c.local.local_epochs = 1.0  # local passes over each client's data; 0 to use local_steps

  c.system = ml_collections.ConfigDict()
  c.system.traces = "traces/synthetic_10k.npz"  # trace file ('' generates traces for the population)
  c.system.always_online = False  # keep the traces' speeds but make every client available all the time
  c.system.mapping = "modulo"  # population member i -> trace entry: 'modulo', 'fedscale' or 'identity'
  c.system.mode = "sync"  # 'sync' or 'async' (FedBuff)
  c.system.selection = "random"  # 'random' among online clients, 'oort', or 'poisson' (see sampling_rate)
  c.system.sampling_rate = 0.0  # poisson: q, each online client joins a round with this probability, in (0, 1]
  c.system.overcommit = 1.3  # sync: select ceil(overcommit * K) clients
  c.system.overcommit_rounding = "ceil"  # sync: 'ceil' of overcommit * K, or FedScale's 'floor' (its int())
  c.system.deadline_s = 0.0  # sync: aggregate whoever finishes by this many seconds (0: the first K)
  c.system.availability_mode = "window"  # 'window' (online throughout), 'endpoints' (FedScale's), 'start' (async only)
  c.system.stragglers = "drop"  # 'drop' late clients, or keep their 'partial' work (FedProx)
  c.system.backward_factor = 3.0  # compute time = samples x ms/sample x this
  c.system.compression = 1.0  # upload size = model size x this (a bare ratio; compression.encoder simulates one)
  c.system.max_concurrency = 100  # async: clients in flight
  c.system.max_staleness = 5  # async: discard updates staler than this
  c.system.async_aggregation = "deltas"  # async: average client 'deltas' (FedBuff), or client 'models' (FedScale)

  c.privacy = ml_collections.ConfigDict()  # DP-FedAvg (McMahan et al. 2018), user level; sync rounds only
  c.privacy.enabled = False  # clip each client's update, add Gaussian noise, divide by the expected cohort
  c.privacy.clip_norm = 1.0  # C: L2 bound of a client's update (the initial one with adaptive clipping)
  c.privacy.noise_multiplier = 1.0  # z: the noise on the update sum has std z * C
  c.privacy.target_epsilon = 0.0  # > 0: z is computed from this, delta, rounds and the sampling rate
  c.privacy.delta = 1e-5  # epsilon is reported at this delta, in (0, 1)
  c.privacy.accountant = "rdp"  # dp-accounting's 'rdp' or 'pld' (Poisson sampling only)
  c.privacy.adaptive_quantile = 0.0  # > 0: adapt C towards this quantile of update norms (Andrew et al.)
  c.privacy.adaptive_lr = 0.2  # adaptive clipping: eta_C of the geometric update
  c.privacy.count_noise = 0.0  # adaptive clipping: std of the noise on the unclipped count (0: cohort / 20)

  c.compression = ml_collections.ConfigDict()  # what a client uploads (applied on device, sized for the scheduler)
  c.compression.encoder = "none"  # 'none' (float32), 'quantize' (stochastic, bits) or 'topk'
  c.compression.bits = 8  # quantize: bits per number, 1..32 (32: float32)
  c.compression.rotate = False  # quantize: random Hadamard rotation first (Suresh et al. 2017)
  c.compression.rotation_block = 4096  # rotate: the largest block (a power of 2); shorter ones where they cut padding
  c.compression.topk = 0  # topk: entries kept, 1..the update's size
  c.compression.error_feedback = False  # keep each client's encoding residual in the client-state store (EF)

  c.secagg = ml_collections.ConfigDict()  # secure aggregation, simulated: fixed-point modular sums
  c.secagg.enabled = False  # encode updates as integers mod 2**bits and sum them modularly
  c.secagg.bits = 20  # integer width, 2..32; the upload is this many bits a number
  c.secagg.range = 0.0  # sums are representable in [-range, range) (0: clip_norm x expected cohort, with DP)

  c.eval_every = 5  # evaluate on the test clients every this many rounds (0: never)
  c.eval_batch_size = 1024  # examples per evaluation batch
  c.eval_train = False  # also evaluate the global model on the training clients (the FedProx paper's training loss)
  c.eval_personal = (
    ""  # also evaluate per-client models: 'personal' (Ditto's), 'adapt' (global + local fine-tuning), '' none
  )
  c.eval_adapt_steps = 5  # 'adapt': local steps of fine-tuning on the client's training data before its test
  c.eval_adapt_lr = 0.0  # 'adapt': fine-tuning SGD learning rate (0: algorithm.client_lr)
  c.target_accuracy = 0.0  # report the simulated time to reach this test accuracy (0: none)
  c.checkpoint_every = 10  # rounds between checkpoints, and one at the end (0: none)
  c.plots = True  # draw WORKDIR/plots at the end of the run (False: later, with `fedjaxscale plot WORKDIR`)

  c.engine = ml_collections.ConfigDict()
  c.engine.backend = "vmap"  # 'vmap', 'loop' or 'debug'
  c.engine.max_clients_per_chunk = 0  # lanes per compiled call (0: as many as the memory budget allows)
  c.engine.strategy = "auto"  # 'auto' (measured), 'vmap', 'map' or 'map:<k>', optionally with '+patches'
  # Synchronous rounds with uniform selection, planned and gathered ahead and trained as one compiled
  # program of up to this many rounds (blocks end at evaluations and checkpoints; 1: a round a call).
  c.engine.rounds_per_call = 1
  c.engine.compilation_cache = True  # JAX's persistent compilation cache (a second run compiles nothing)
  c.engine.compilation_cache_dir = ""  # '': the user's cache dir (see training/compilation.py)

  c.state = ml_collections.ConfigDict()  # the client-state store of stateful algorithms (scaffold, ditto)
  c.state.backing = "auto"  # 'memory', 'memmap' (files in WORKDIR/client_states) or 'auto' (by size)
  c.state.storage_dtype = "native"  # 'native', or 'bfloat16'/'float16'/'float32' for floating leaves
  c.state.budget_mb = 0.0  # refuse a run whose store could exceed this many MiB (0: no budget)
  c.state.memory_limit_mb = 1024.0  # 'auto': memory-mapped when the store could exceed this
  return c
