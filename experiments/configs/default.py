"""Default experiment: MNIST-1D (generated offline), 10% random forgetting, 3 seeds.

The first run: 1,000 MNIST-1D training examples and a 64-64 MLP trained for 60 epochs
memorise the forget set (original forget accuracy 100%; retraining without it about 44%),
so the summary's table can rank methods by how close they come to retraining. Digits (the
small embedded scikit-learn set, `--dataset=digits`) is kept; there the original barely
memorises, and the summary says so.

    python -m experiments.unlearn --config=experiments/configs/default.py

Top-level flags (--dataset, --model, --scenario, ...) override the fields below;
`--config.train.epochs=20` overrides the training recipe (-1 or "" keeps the recipe's).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "mnist1d"         # mnist1d | digits | image_folder:PATH | cifar10 | cifar100 | ...
  c.data_dir = ""               # tfds data_dir ("" = tfds default / the unlearn_jax cache)
  c.train_subset = -1           # -1: the dataset's default (1,000 for mnist1d, else all);
                                # 0: all; >0: stratified subset (fixed seed), for CPUs
  c.test_subset = 0
  c.model = ""                  # "" = mlp:64-64 on mnist1d, mlp for 8x8 inputs, cnn otherwise
  c.scenario = "random"         # random | class | subclass
  c.forget_fraction = 0.1
  c.forget_classes = ""         # comma list, class/subclass scenarios
  c.stratified = False          # random scenario: stratify the forget set by class
  c.split_seed = 0
  c.methods = ""                # comma list; "" = every registered method
  c.seeds = 3                   # training seeds (--train_seeds is the same flag's alias)
  c.seed = 0                    # first seed; seeds are seed, seed+1, ...
  c.unlearn_seeds = 1           # unlearning keys per trained model: T x U unlearned models
  c.seed_loop = "auto"          # auto | vmap | sequential (see unlearn_jax.driver)
  c.conv = "auto"               # auto | xla | patches | canonical: library models' convolution
  # How original/retrain epochs are compiled (unlearn_jax.train_programs): auto = the
  # fastest measured on this machine (experiments.benchmark --program_table=machine; the
  # default scan where nothing was), or LOOP[:CONV[:STEPS]] by hand.
  c.train_program = "auto"
  # Devices (unlearn_jax.parallel): a ("seeds", "data") mesh; batches split over `data`,
  # vmapped seeds over `seeds` (--seed_loop=vmap only). One visible device: no mesh at all.
  c.mesh_seeds = 0               # 0 = automatic: 1 on one process, across processes otherwise
  c.mesh_data = 0               # 0 = all devices left after the seeds axis
  c.distributed = False         # jax.distributed.initialize() first (multi-process jobs)
  c.heartbeat_seconds = 100     # multi-process: a silent process fails the job after this
  c.stream = False              # train original/retrain from host memory batch by batch
  c.eval_batch_size = 1000
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
  # Anamnesis index (class scenario): relearning on D_f until 95% of the original's FA.
  c.ain = ml_collections.ConfigDict(dict(lr=0.001, batch_size=32, max_steps=200, eval_size=256))
  c.train = ml_collections.ConfigDict(dict(
      epochs=-1, batch_size=-1, lr=-1.0, momentum=-1.0, weight_decay=-1.0, schedule="",
      optimizer="", augment=-1, grad_clip=-1.0))
  # A config file may also set the recipe's other fields (unlearn_jax.train.TrainConfig:
  # nesterov, peak_fraction), as experiments/configs/cifar10_resnet9.py does.
  return c
