"""Diagnose and mix: per-layer sensitivity, proxies, and a bit allocator under a size budget."""
from .sensitivity import (activation_sq_means, block_sensitivity, layer_sensitivity, proxy_damage, proxy_table,
                          rank_correlation)

__all__ = ["activation_sq_means", "block_sensitivity", "layer_sensitivity", "proxy_damage", "proxy_table",
           "rank_correlation"]

# --- bisecting a regression (notebook 14) ---
from .bisect import (BAD, GOOD, BisectResult, PlantedRegression, Recipe, bisect_layers,  # noqa: E402
                     choose_half, plant_regression, restore_report, split_halves, swap_evaluator)

__all__ += ["BAD", "GOOD", "BisectResult", "PlantedRegression", "Recipe", "bisect_layers", "choose_half",
            "plant_regression", "restore_report", "split_halves", "swap_evaluator"]
