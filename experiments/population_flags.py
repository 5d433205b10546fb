"""The flags every population entry point shares (`experiments.evaluate`,
`experiments.klom_curve`), defined once: a module is imported once per process, so two
entry points imported together (as the in-process tests do) do not define them twice."""

from absl import flags

flags.DEFINE_integer("chunk", 0, "models per vmapped chunk (0 = all at once)")
flags.DEFINE_string("populations_dir", "runs/populations",
                    "where trained populations are checkpointed and reused ('' = never)")
