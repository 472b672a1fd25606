import pytest

from spherear.config import RecipeError, recipe_from_dict
from spherear.models.registry import resolve_ar


def test_registry_fills_and_checks_sizes():
    filled = resolve_ar(recipe_from_dict({"ar": {"size": "H"}}).ar)
    assert (filled.depth, filled.width, filled.head_groups) == (40, 1280, 3)
    custom = resolve_ar(recipe_from_dict({"ar": {"size": "B", "depth": 2}}).ar)
    assert (custom.depth, custom.width) == (2, 768)
    with pytest.raises(RecipeError, match="unknown ar.size 'b'; did you mean 'B'"):
        resolve_ar(recipe_from_dict({"ar": {"size": "b"}}).ar)
    with pytest.raises(RecipeError, match="head dimension divisible by 4"):
        resolve_ar(recipe_from_dict({"ar": {"size": "B", "num_heads": 5}}).ar)
