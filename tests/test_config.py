"""The config loader (YAML <-> typed dataclasses, dotted overrides) and the --opt/--set parsers: exact
results on hand-written inputs, and hypothesis fuzzing with random and hostile input that must end in one
AtrousError line or a valid config, never another exception."""

import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrous.config import (
    Config,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    parse_kv_list,
    parse_value,
    read_yaml,
)
from atrous.errors import AtrousError


def test_yaml_file_flags_and_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {name: deeplabv3, options: {rates: [6, 12, 18], width: 0.25}}\n"
        "data: {train: 'synthetic:shapes', crop_size: 65, scale: [1, 2]}\n"
        "optim: {name: adamw, lr: 1.0e-3}\n"
        "train: {epochs: 3}\n"
    )
    config = load_config(path, {"optim.lr": 0.5, "model.options.output_stride": 8, "train.seed": 7})
    assert config.model.name == "deeplabv3"
    assert config.model.options == {"rates": [6, 12, 18], "width": 0.25, "output_stride": 8}
    assert config.data.scale == (1.0, 2.0) and isinstance(config.data.scale[1], float)
    assert config.optim.name == "adamw" and config.optim.lr == 0.5
    assert config.train.epochs == 3 and config.train.seed == 7
    # Untouched fields keep the dataclass defaults.
    assert config.loss == Config().loss
    # dump -> load gives the same config back.
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrr": 1}, r"unknown key 'optim\.lrr'.*valid keys under optim: name, lr, momentum"),
        ({"trian.epochs": 1}, r"unknown key 'trian\.epochs'.*valid keys: model, data, optim"),
        ({"optim.lr.x": 1}, r"optim\.lr is a value, not a section"),
        ({"optim": 1}, r"optim is a section; set one of its keys"),
        ({"data.scale": 3}, r"data\.scale must be a list of 2"),
        ({"optim.lr": "fast"}, r"optim\.lr must be a number, got str 'fast'"),
        ({"train.epochs": 1.5}, r"train\.epochs must be an integer"),
        ({"train.amp": 1}, r"train\.amp must be true or false"),
        ({"optim.name": "adam"}, r"optim\.name is 'adam'; choose one of sgd, adamw"),
        ({"data.batch_size": 0}, r"data\.batch_size must be positive"),
        ({"train.epochs": 2, "train.iters": 5}, r"not both"),
        ({"optim.lr": float("nan")}, r"optim\.lr must be a finite number"),
        ({"loss.class_weights": [1, -1]}, r"class_weights must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(AtrousError, match=message):
        load_config(None, overrides)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  cropsize: 3\n")
    with pytest.raises(AtrousError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "data.cropsize" in text and "crop_size" in text and "\n" not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model: [1, 2\n", r"not valid YAML at line 2"),
        ("- 1\n- 2\n", r"must be a mapping of sections"),
        ("model: !!python/object/apply:os.system ['echo hi']\n", r"not valid YAML"),
        ("model:\n  name: 3\n", r"model\.name must be a string, got int 3"),
        ("model:\n  options: {1: 2}\n", r"option names are identifiers"),
        ("data: 5\n", r"data must be a mapping"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(AtrousError, match=message):
        load_config(path)


def test_unreadable_files(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("model: {name: caf\xe9}".encode("latin-1"))
    with pytest.raises(AtrousError, match="not UTF-8"):
        read_yaml(tmp_path / "latin1.yaml")
    with pytest.raises(AtrousError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(AtrousError, match="cannot be read"):
        read_yaml(tmp_path)  # a directory


def test_alias_bomb_is_bounded(tmp_path):
    # "Billion laughs": 9 levels of 9 aliases would expand to 9**9 items if copied naively.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("model:\n  options:\n" + "".join(f"    {line}\n" for line in lines))
    with pytest.raises(AtrousError, match="nested too deeply or too large"):
        load_config(tmp_path / "bomb.yaml")


def test_parse_value_and_kv():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("1,2,5") == (1, 2, 5) and parse_value("[1, 2]") == (1, 2)
    assert parse_value("null") is None and parse_value("paper") == "paper"
    assert parse_kv_list(["rates=1,2", "width=0.25", "rates=3"]) == {"rates": 3, "width": 0.25}
    with pytest.raises(AtrousError, match="expects key=value"):
        parse_kv_list(["rates"])
    with pytest.raises(AtrousError, match="not a valid key"):
        parse_kv_list(["a b=1"], flag="--set")


def test_overrides_do_not_modify_the_input():
    data = {"model": {"options": {"rates": [1]}}}
    out = apply_overrides(data, {"model.options.rates": (2, 3)})
    assert data == {"model": {"options": {"rates": [1]}}} and out["model"]["options"]["rates"] == [2, 3]


# ------------------------------------------------------------------------------------------- fuzzing

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_keys = st.one_of(
    st.sampled_from(
        ["model", "data", "optim", "loss", "train", "log", "name", "options", "lr", "rates", "scale"]
    ),
    st.sampled_from([f.name for cls in (Config,) for f in dataclasses.fields(cls)]),
    st.text(max_size=12),
)
_yaml_data = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=30,
)
_fuzz = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line_or_config(fn):
    try:
        result = fn()
    except AtrousError as e:
        assert str(e) and "\n" not in str(e)
        return None
    return result


@_fuzz
@given(_yaml_data)
def test_fuzz_structures_give_config_or_one_line_error(data):
    # Checked either way: a result is a Config whose dump loads back to itself.
    config = _one_line_or_config(lambda: from_dict(data))
    if config is not None:
        assert from_dict(yaml.safe_load(dump_config(config))) == config


@_fuzz
@given(st.text(max_size=200))
def test_fuzz_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    _one_line_or_config(lambda: load_config(path))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1000,
        "a: " + "{b: " * 3000 + "1" + "}" * 3000,
        "model: !!python/name:os.system\n",
        "model: {name: ✓ü😀, options: {größe: 1}}\n",
        "\x00\x01\x02",
        "model: *undefined\n",
        "? [a, b]\n: 1\n",
        "model:\n  options:\n    rates: " + "[" * 100 + "]" * 100 + "\n",
        "train: {epochs: 1e999}\n",
        "train: {seed: 0x1F}\n",
        "data: {mean: [.nan, 1, 2]}\n",
        "%YAML 9.9\n---\na: 1\n",
    ],
)
def test_hostile_yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    _one_line_or_config(lambda: load_config(path))


@_fuzz
@given(st.lists(st.text(max_size=30), max_size=5))
def test_fuzz_kv_parsers_and_overrides(items):
    def run():
        overrides = parse_kv_list(items, flag="--set")
        return load_config(None, overrides)

    _one_line_or_config(run)
    _one_line_or_config(lambda: parse_kv_list(items, flag="--opt"))


@_fuzz
@given(
    st.dictionaries(
        st.sampled_from(["optim.lr", "model.options.rates", "data.scale", "train.epochs"]), _yaml_data
    )
)
def test_fuzz_typed_overrides(overrides):
    _one_line_or_config(lambda: load_config(None, overrides))


@pytest.mark.parametrize(
    "value",
    [
        "[" * 600 + "]" * 600,
        "[" * 400 + "]" * 400,
        "&a [*a]",
        "!!python/object/apply:os.system [ls]",
        "*x",
        "\x00",
        "a" * 100_000,
    ],
)
@pytest.mark.parametrize("key", ["optim.betas", "model.options.rates", "loss.class_weights", "train.out"])
def test_hostile_set_values(key, value):
    _one_line_or_config(lambda: load_config(None, parse_kv_list([f"{key}={value}"], flag="--set")))


def test_shipped_recipes_load_and_build():
    from pathlib import Path

    from atrous.models import build

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        config = load_config(path)
        # The name carries the settings (DESIGN.md): model, output stride/channels, data, crop.
        assert config.model.name in path.stem and str(config.data.crop_size) in path.stem
        assert path.stem in config.train.out
        # The options are valid for the model (building the heavy ones at a tiny width).
        build(config.model.name, 3, **{**config.model.options, "width": 0.125})
