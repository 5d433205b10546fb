"""unlearn_jax: machine unlearning in JAX/Flax.

Every method is a pure function from a registry, every metric a pure function of
logits or losses; callers `jit` and `vmap` them. The public API is flat (optax style):

    import unlearn_jax as uj

    adapter = uj.ModelAdapter(my_module, train_kwargs={"train": True},
                              eval_kwargs={"train": False}, head=("Dense_2",))
    ctx = uj.MethodContext(adapter, num_classes=10, input_shape=(32, 32, 3))
    unlearn = uj.ssd(ctx, alpha=10.0)                 # or uj.make_method("ssd", ctx)
    data = uj.select_data(uj.ssd, forget=(xf, yf), retain=(xr, yr), num_classes=10)
    new_variables, aux = jax.jit(unlearn)(variables, data, key)

Every registered method is a top-level name (`uj.finetune`, `uj.scrub`, ...; `help()` on
one shows its update rule, paper, defaults and the data it reads); so are the metrics
(`uj.accuracy`, `uj.per_example_epsilons`, ...), the models, training and data.
Every method is also its steps (`uj.scrub.steps(ctx)`: init, one update per phase,
finalize; `uj.steps` documents the protocol and runs it): a caller may own the loop.
Sub-packages: `uj.methods`, `uj.metrics`, `uj.models`, `uj.data`, `uj.train`, `uj.steps`
(the step protocol and the one driver loop), `uj.attribution` (TRAK and datamodel
scores, DM-Direct), `uj.batching` (batch order, padded last batches), `uj.losses` (CE,
KL), `uj.importance` (weight importances), `uj.parallel`, `uj.driver` (the loop driver
over seeds), `uj.checkpoint`, `uj.tuning` (search spaces run as one vmapped program: K
configurations × S seeds), `uj.sisa` (exact unlearning by sharded, sliced training: S
shard models as one program).
"""

__version__ = "0.2.0"

from unlearn_jax import (attribution, batching, certified, data, langevin, losses, metrics, methods, models,
                         parallel, sisa, steps, train, tuning)
from unlearn_jax.adapter import ModelAdapter, as_adapter, nnx_adapter
from unlearn_jax.attribution import datamodel_scores, dm_direct, oracle_targets, trak_scores
from unlearn_jax.data import (Dataset, Split, SplitSpec, load_dataset, make_split,
                              stratified_subset)
from unlearn_jax.methods import (HyperparameterError, MethodContext, UnlearnData, get_method,
                                 list_methods, make_method, register, select_data)
from unlearn_jax.metrics import *  # noqa: F401,F403  (the metrics' own __all__)
from unlearn_jax.metrics import __all__ as _metric_names
from unlearn_jax.models import (CNN, MLP, Airbench94, Conv, ResNet9, ResNet18, data_init,
                                get_model, init_variables)
from unlearn_jax.population import PopulationProgram
from unlearn_jax.train import (TrainConfig, TrainState, cross_entropy, fit,
                               init_train_state, lookahead_ema, make_optimizer,
                               make_supervised_step, predict, predict_features, predict_tta,
                               scan_epochs)

# Every registered method as a top-level function: uj.finetune(ctx, lr=...), ...
globals().update({_name: get_method(_name) for _name in list_methods()})

__all__ = (["ModelAdapter", "as_adapter", "nnx_adapter", "Dataset", "Split", "SplitSpec", "load_dataset",
            "make_split", "stratified_subset", "HyperparameterError", "MethodContext",
            "UnlearnData", "get_method", "list_methods", "make_method", "register",
            "select_data", "CNN", "MLP", "Conv", "ResNet18", "ResNet9", "Airbench94",
            "get_model", "init_variables", "data_init", "PopulationProgram",
            "TrainConfig", "TrainState", "cross_entropy", "fit", "init_train_state",
            "lookahead_ema", "make_optimizer", "make_supervised_step", "predict",
            "predict_features", "predict_tta",
            "scan_epochs", "attribution", "trak_scores", "datamodel_scores", "dm_direct",
            "oracle_targets", "batching", "certified", "data", "langevin", "losses", "metrics",
            "methods", "models", "parallel", "sisa", "steps", "train", "tuning"]
           + list(_metric_names) + list(list_methods()))
