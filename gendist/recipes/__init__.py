"""Model families. Each recipe builds its players and declares its phases; no distributed code here."""
from __future__ import annotations

from gendist.config import RunConfig
from gendist.data.info import DataInfo
from gendist.recipes.base import Batch, Nets, Phase, Recipe


def build_recipe(config: RunConfig, data_info: DataInfo) -> Recipe:
    from gendist.recipes.bigan import BiGANRecipe
    from gendist.recipes.cyclegan import CycleGANRecipe
    from gendist.recipes.gan import GANRecipe
    from gendist.recipes.vae import VAERecipe

    recipes = {"gan": GANRecipe, "vae": VAERecipe, "bigan": BiGANRecipe, "cyclegan": CycleGANRecipe}
    return recipes[config.model.recipe](config, data_info)


__all__ = ["Batch", "Nets", "Phase", "Recipe", "build_recipe"]
