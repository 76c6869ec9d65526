"""Model families. Each recipe builds its players and declares its phases; no distributed code here.

`model.recipe` names a built-in family (gan, vae, bigan, cyclegan), a class `package.module:Class`, or an entry
point of the group `gendist.recipes` (a package's `[project.entry-points."gendist.recipes"]`). A recipe class
follows the `Recipe` protocol (gendist.recipes.base): `units`, `ema_networks`, `build_networks()`, `phases()`,
`sample(...)`; it is constructed as `Recipe(config, data_info)`, and its options live in the `recipe:` config
section, checked against its `Config` dataclass when it declares one (`gendist.config.recipe_options`).
"""
from __future__ import annotations

from importlib.metadata import entry_points

from gendist.config import RunConfig
from gendist.data.info import DataInfo
from gendist.errors import UserError
from gendist.recipes.base import Batch, Nets, Phase, Recipe

ENTRY_POINT_GROUP = "gendist.recipes"


def builtin_recipes() -> dict[str, type]:
    from gendist.recipes.bigan import BiGANRecipe
    from gendist.recipes.cyclegan import CycleGANRecipe
    from gendist.recipes.gan import GANRecipe
    from gendist.recipes.vae import VAERecipe

    return {"gan": GANRecipe, "vae": VAERecipe, "bigan": BiGANRecipe, "cyclegan": CycleGANRecipe}


REQUIRED = ("units", "ema_networks", "build_networks", "phases", "sample")


def resolve_recipe(name: str) -> type:
    """The recipe class `model.recipe` names, or a one-line UserError."""
    builtins = builtin_recipes()
    if name in builtins:
        return builtins[name]
    if ":" in name:
        from gendist.nets.registry import import_object

        cls = import_object(name, "model.recipe")
    else:
        found = [point for point in entry_points(group=ENTRY_POINT_GROUP) if point.name == name]
        if not found:
            installed = sorted(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
            raise UserError(f"config: model.recipe must be gan, vae, bigan, cyclegan, package.module:Class or an installed "
                            f"'{ENTRY_POINT_GROUP}' entry point ({', '.join(installed) or 'none installed'}), got {name!r}")
        try:
            cls = found[0].load()
        except Exception as error:  # a plugin's import may fail in any way: name it
            raise UserError(f"config: model.recipe={name}: loading entry point {found[0].value} failed "
                            f"({type(error).__name__}: {error})") from None
    missing = [attribute for attribute in REQUIRED if not hasattr(cls, attribute)]
    if missing:
        raise UserError(f"config: model.recipe={name}: {getattr(cls, '__name__', cls)} is not a recipe (missing "
                        f"{', '.join(missing)}; see gendist.recipes.base.Recipe)")
    return cls


def build_recipe(config: RunConfig, data_info: DataInfo) -> Recipe:
    return resolve_recipe(config.model.recipe)(config, data_info)


__all__ = ["Batch", "ENTRY_POINT_GROUP", "Nets", "Phase", "Recipe", "build_recipe", "resolve_recipe"]
