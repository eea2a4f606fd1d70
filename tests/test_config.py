"""Configs are checked before any weights load: unknown keys, wrong types and bad values are named."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm.config import ConfigError, ModelConfig, from_dict, load_yaml


def test_a_typo_names_the_key_and_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.num_latent'; did you mean 'num_latents'\?"):
        from_dict(ModelConfig, {"num_latent": 32}, where="model")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"num_latents": "many"}, "model.num_latents must be an integer"),
        ({"num_latents": 0}, "model.num_latents must be >= 1"),
        ({"spatial_positions": "yes"}, "model.spatial_positions must be true or false"),
        ({"grid_latents": True, "spatial_positions": False}, "model.grid_latents needs model.spatial_positions: true"),
        ({"image_size": [288]}, r"model.image_size must be \[height, width\]"),
        ({"lm_dtype": "float64"}, "model.lm_dtype must be float32, bfloat16 or float16"),
        ({"vision": "resnet50"}, "model.vision must start with 'open_clip:' or 'timm:'"),
        ({"lm": None}, "model.lm must be a string, got None"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data, where="model")


def test_yaml_is_read_safely_and_checked(tmp_path):
    (tmp_path / "bad.yaml").write_text("num_latents: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from([f for f in ModelConfig.__dataclass_fields__]) | st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, values, max_size=5))
def test_any_mapping_gives_a_config_or_a_config_error(data):
    try:
        config = from_dict(ModelConfig, data, where="model")
    except ConfigError:
        return
    assert isinstance(config, ModelConfig)
