"""Settings that are valid but have no effect, or an effect the user likely did not mean: the
warnings `plan`, `validate` and `plan --json` show (never errors)."""

from __future__ import annotations

from hvdtrain.recipe import PowerSGDConfig, Recipe


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but have no effect, or an effect the user likely did not mean."""
    out = []
    opt, train, data, hv = recipe.optimizer, recipe.train, recipe.data, recipe.horovod
    if opt.warmup_epochs > train.epochs:
        out.append(f"optimizer.warmup_epochs ({opt.warmup_epochs:g}) is longer than training "
                   f"(train.epochs={train.epochs}): the LR never reaches its peak")
    if data.data_dir and data.dataset in ("digits", "synthetic"):
        out.append(f"data.data_dir is set but data.dataset={data.dataset} reads no files: it is "
                   "ignored")
    if hv.autotune_log_file and not hv.autotune:
        out.append("horovod.autotune_log_file is set but horovod.autotune is false: nothing is "
                   "logged")
    unused = sorted(recipe.model.model_fields_set & {"arch", "width", "depth", "dropout"})
    if recipe.model.component and unused:
        out.append(f"model.component is set: model.{', model.'.join(unused)} "
                   f"{'is' if len(unused) == 1 else 'are'} not used")
    image_keys = sorted(data.model_fields_set & {"image_size", "augment", "mean", "std",
                                                 "on_bad_image"})
    if data.dataset != "imagefolder" and image_keys:
        out.append(f"data.{', data.'.join(image_keys)} appl{'ies' if len(image_keys) == 1 else 'y'}"
                   f" to dataset: imagefolder only (dataset is {data.dataset})")
    tracking = sorted(k for k in recipe.tracking.model_fields_set - {"mlflow"}
                      if getattr(recipe.tracking, k) is not None)
    if tracking and not recipe.tracking.mlflow:
        out.append(f"tracking.{', tracking.'.join(tracking)} {'is' if len(tracking) == 1 else 'are'}"
                   " set but tracking.mlflow is false: nothing is logged to MLflow")
    if opt.decay == "step" and max(opt.decay_epochs) >= train.epochs:
        late = [m for m in opt.decay_epochs if m >= train.epochs]
        out.append(f"optimizer.decay_epochs {late} are at or after the last epoch "
                   f"({train.epochs}): those drops never happen")
    default = PowerSGDConfig()
    tuned = sorted(k for k in hv.powersgd.model_fields_set
                   if getattr(hv.powersgd, k) != getattr(default, k))
    if tuned and hv.compression != "powersgd":
        out.append(f"horovod.powersgd.{', horovod.powersgd.'.join(tuned)} "
                   f"appl{'ies' if len(tuned) == 1 else 'y'} to compression: powersgd only "
                   f"(compression is {hv.compression})")
    return out
