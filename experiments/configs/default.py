"""The default experiment: MNIST-1D (generated offline), 10% random forgetting, 3 seeds.

The first run: 1,000 MNIST-1D training examples and a 64-64 MLP trained for 60 epochs
memorise the forget set (original forget accuracy 100%; retraining without it about 44%),
so the summary's table can rank methods by how close they come to retraining. The small
embedded scikit-learn digits set is `--config=digits`; there the original barely
memorises, and the summary says so.

    python -m experiments.unlearn --config=default --config.seeds=5
    python -m experiments.unlearn --config.train.epochs=20 --config.methods.scrub.lr=0.01

Every field below is a setting; `--config.<field>=value` overrides it (`--methods` and
`--seeds` are the fields `methods` and `seeds` by a shorter name). The other shipped
configs start from this one and change what differs.
"""

import ml_collections
from ml_collections import config_dict

from unlearn_jax import methods as methods_lib
from unlearn_jax_experiments.configs import recipes


def methods_config(names=None) -> ml_collections.ConfigDict:
  """{method: its hyperparameters at the registry's defaults} for `names` (a comma list or
  a sequence; None: every registered method), the value of a config's `methods`."""
  if names is None:
    names = methods_lib.list_methods()
  elif isinstance(names, str):
    names = [m.strip() for m in names.split(",") if m.strip()]
  return ml_collections.ConfigDict({m: dict(methods_lib.get_method(m).defaults)
                                    for m in names})


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  _data_model_and_methods(c)
  _seeds_and_devices(c)
  _outputs(c)
  _other_entry_points(c)
  return c


def _data_model_and_methods(c: ml_collections.ConfigDict) -> None:
  # ---- data and split
  c.dataset = "mnist1d"         # mnist1d | digits | image_folder:PATH | cifar10[:PATH] | ...
  c.data_dir = config_dict.placeholder(str)    # tfds data_dir (None: tfds' default)
  # A stratified subset (fixed seed; None: all): 1,000 of MNIST-1D's 4,000, which the MLP
  # memorises.
  c.train_subset = config_dict.FieldReference(1000, field_type=int)
  c.test_subset = config_dict.placeholder(int)   # None: all
  c.scenario = "random"         # random | class | subclass
  c.forget_fraction = 0.1       # random scenario: the fraction of train to forget
  c.forget_classes = ""         # class/subclass scenarios: a comma list of class ids
  c.stratified = False          # random scenario: stratify the forget set by class
  c.split_seed = 0
  # ---- model and training recipe (unlearn_jax.train.TrainConfig: every field)
  c.model = "mlp:64-64"         # mlp | cnn | resnet9 | resnet18 | vit | airbench94 [:widths]
  c.train = recipes.mlp(epochs=60)
  # ---- methods: the ones to run and their hyperparameters (--methods=a,b keeps a and b).
  # A listed method that cannot run in the scenario or on the model is skipped with a note.
  c.methods = methods_config()
  c.tuned_hparams = config_dict.placeholder(str)  # a tuned.json (experiments.tune): its
  # choices replace the defaults above (a value set on the command line still wins)


def _seeds_and_devices(c: ml_collections.ConfigDict) -> None:
  # ---- seeds
  c.seeds = 3                   # trained models (original and retrain) per run
  c.seed = 0                    # first seed; seeds are seed, seed+1, ...
  c.unlearn_seeds = 1           # unlearning keys per trained model: seeds x U unlearned models
  c.seed_loop = "auto"          # auto | vmap | sequential (see unlearn_jax.driver)
  # Where every stage caches its trained references (originals, retrained models, oracles),
  # one directory per population and fingerprint; a later stage with the same data, split,
  # model, recipe, seeds and N restores them. None: train them every time, cache nothing.
  c.references_dir = config_dict.placeholder(str)
  # ---- how it is compiled and where it runs
  c.conv = "auto"               # auto | xla | patches | canonical: library models' convolution
  # How original/retrain epochs are compiled (unlearn_jax.train_programs): auto = the
  # fastest measured on this machine (experiments.benchmarks.benchmark --program_table=machine; the
  # default scan where nothing was), or LOOP[:CONV[:STEPS]] by hand.
  c.train_program = "auto"
  # Devices (unlearn_jax.parallel): a ("seeds", "data") mesh; batches split over `data`,
  # vmapped seeds over `seeds` (seed_loop=vmap only). One visible device: no mesh at all.
  c.mesh_seeds = config_dict.placeholder(int)  # None: 1 on one process, else the processes
  c.mesh_data = config_dict.placeholder(int)   # None: every device left after `seeds`
  c.distributed = False         # jax.distributed.initialize() first (cluster detected)
  c.coordinator_address = config_dict.placeholder(str)  # host:port of process 0 (no cluster)
  c.num_processes = config_dict.placeholder(int)        # with coordinator_address
  c.process_id = config_dict.placeholder(int)           # with coordinator_address: 0..N-1
  c.heartbeat_seconds = 100     # multi-process: a silent process fails the job after this
  c.stream = False              # train original/retrain from host memory batch by batch
  c.eval_batch_size = 1000


def _outputs(c: ml_collections.ConfigDict) -> None:
  # ---- what is written
  c.save_checkpoints = True
  # Resumable runs: train states every N epochs (and each finished method) go to a hidden
  # sibling of the workdir, `.<name>.resume/`; rerunning the same command resumes there.
  c.checkpoint_every = 1
  # Mid-method checkpoints (a long method resumes inside itself): every N epochs of a
  # method's phase (cycles of SCRUB / SalUn's schedule; 10·N data-free steps); 0 = only
  # after each method, which keeps each method one compiled program.
  c.method_checkpoint_every = 0
  c.plots = True
  # Forget/retain accuracy along each method's steps (plots/along_steps.png): every N epochs
  # of each phase, on at most `along_examples` of each set; 0 = off.
  c.along_every = 1
  c.along_examples = 512
  c.tensorboard_dir = config_dict.placeholder(str)  # also write TensorBoard event files
  c.wandb_project = config_dict.placeholder(str)    # also log to Weights & Biases
  # Anamnesis index (class scenario): relearning on D_f until 95% of the original's FA.
  c.ain = ml_collections.ConfigDict(dict(lr=0.001, batch_size=32, max_steps=200, eval_size=256))


def _other_entry_points(c: ml_collections.ConfigDict) -> None:
  # ---- the other entry points' settings
  c.evaluate = ml_collections.ConfigDict(dict(   # experiments.evaluate and .klom_curve
      num_models=16,            # models per population (originals, retrained, unlearned)
      mia_models=16,            # models per population that fit SalUn's SVC attack
      bootstrap=200,            # redraws of the models behind every interval (0: none)
      bootstrap_epsilon=30,     # of those, the redraws that recompute per-example ε
      chunk=config_dict.placeholder(int),  # models per vmapped chunk; None: all at once
      sizes="8,16,32,64"))      # experiments.klom_curve: population sizes N, increasing
  c.matching = ml_collections.ConfigDict(dict(    # experiments.evaluate: the matching methods
      oracles=10,               # oracle_matching: models retrained without D_f it matches (mean)
      oracle_seed=10_000,       # the oracles' seeds: seed + oracle_seed + j (not the retrained)
      dm_direct=True,           # with dmm, also report DM-Direct (a logit prediction) as a row
      trak_models=4,            # dmm, dm_direct: the first originals, TRAK's ensemble
      proj_dim=512,             # TRAK's projection dimension
      damping=1e-3,             # added to TRAK's kernel (needed once proj_dim >= the rank)
      chunk=64,                 # examples whose gradients TRAK holds at once
      multiplier=1.0,           # DM-Direct: logits - multiplier * sum of the forget rows
      fit_multiplier=False))    # True: the multiplier fitted to the oracles (TRAK has no unit)
  c.tune = ml_collections.ConfigDict(dict(        # experiments.tune
      budget=16,                # configurations per method (the defaults are the first)
      select="no_retrain",      # no_retrain | retrain_gap
      selection_fraction=0.2,   # the fraction of D_f and of D_r selection may read
      search_loop="auto",       # auto | vmap | sequential
      min_retain=0.9))          # keep configurations holding this fraction of retain acc.
  c.requests = ml_collections.ConfigDict(dict(    # experiments.requests
      methods="sisa,finetune,scrub,salun,ssd",  # SISA (exact), retraining and these methods
      count=10,                 # deletion requests K
      size=0.01,                # examples per request: a fraction of train (< 1) or a count
      kind="random",            # random | class (forget_classes split into requests)
      sisa_shards=4, sisa_slices=4,
      sisa_epochs_per_slice=config_dict.placeholder(int)))  # None: the recipe's epochs / R
