"""An example gendist plugin: your own generator (`networks.ResidualMLPGenerator`) and your own recipe
(`recipes.GMMNRecipe`, entry point `gmmn`), used without editing gendist."""
