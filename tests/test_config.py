"""Trial-config parsing: defaults, --set overrides, and one-line refusals naming the key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smoothadv.common.errors import UserError
from smoothadv.trainers.config import (
    TrialConfig,
    apply_overrides,
    load_trial_config,
    parse_trial_config,
)


def test_defaults_are_the_cifar10_recipe():
    c = parse_trial_config({})
    assert (c.arch, c.lr, c.momentum, c.weight_decay, c.batch_size) == (
        "cifar_resnet110", 0.1, 0.9, 1e-4, 256)
    assert (c.epochs, c.lr_step, c.lr_gamma, c.warmup_epochs) == (150, 50, 0.1, 10)
    assert (c.certify.n0, c.certify.n, c.certify.alpha) == (100, 100_000, 0.001)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "trial.yaml"
    path.write_text("dataset: fashion_mnist\narch: lenet\nsigma: 0.5\ncertify:\n  n: 1000\n")
    c = load_trial_config(str(path), ["epsilon=1", "certify.skip=20", "init_from=null",
                                      "multi_noise=true"])
    assert c.dataset == "fashion_mnist" and c.sigma == 0.5 and c.epsilon == 1.0
    assert c.certify.n == 1000 and c.certify.skip == 20 and c.multi_noise is True
    assert isinstance(c.epsilon, float)
    assert parse_trial_config(c.to_dict()) == c


@pytest.mark.parametrize("values,key", [
    ({"sigmaa": 0.25}, "sigmaa"),
    ({"sigma": 0}, "sigma"),
    ({"sigma": -1.0}, "sigma"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"m_train": 0}, "m_train"),
    ({"steps": 0}, "steps"),
    ({"method": "trades"}, "method"),
    ({"attack": "fgsm"}, "attack"),
    ({"arch": "vgg"}, "arch"),
    ({"dataset": "emnist"}, "dataset"),
    ({"m_train": 2.5}, "m_train"),
    ({"multi_noise": "yes"}, "multi_noise"),
    ({"sigma": "0.25"}, "sigma"),
    ({"epsilon": float("inf")}, "epsilon"),
    ({"certify": {"nn": 3}}, "certify.nn"),
    ({"certify": {"alpha": 0.6}}, "certify.alpha"),
    ({"certify": {"n0": 0}}, "certify.n0"),
    ({"certify": {"n0": None}}, "certify.n0"),  # a trial always certifies (PREDICT has none)
    ({"certify": {"batch_size": 0}}, "certify.batch_size"),
    ({"certify": 5}, "certify"),
    ({"reinit_head": True}, "reinit_head"),
    ({"extra_data": "pseudo.pkl", "dataset": "imagenet"}, "extra_data"),
    ({"extra_data": "pseudo.pkl", "batch_size": 255}, "batch_size"),
    ({"extra_weight": -0.5}, "extra_weight"),
    ({"attack": "ddn", "gradient_free": True}, "gradient_free"),
])
def test_bad_values_are_refused_naming_the_key(values, key):
    with pytest.raises(UserError) as info:
        parse_trial_config(values)
    message = str(info.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sigma: 0.25\narch: [lenet\n")
    with pytest.raises(UserError, match=r"bad\.yaml: malformed YAML at line"):
        load_trial_config(str(path))


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        apply_overrides({}, ["sigma"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["sigma", "epsilon", "steps", "m_train", "method",
                                        "arch", "certify", "bogus", "multi_noise"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                 st.text(max_size=5), st.dictionaries(st.text(max_size=3),
                                                                      st.integers()))))
def test_any_mapping_parses_or_gets_a_user_error(values):
    try:
        assert isinstance(parse_trial_config(values), TrialConfig)
    except UserError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("values,message", [
    ({"steps": "3"}, "steps: expected an integer, got '3'"),
    ({"steps": True}, "steps: expected an integer, got True"),
    ({"steps": 3.0}, "steps: expected an integer, got 3.0"),
    ({"lr": True}, "lr: expected a number, got True"),
    ({"lr": float("nan")}, "lr: expected a finite number, got nan"),
    ({"amp": 1}, "amp: expected true or false, got 1"),
    ({"amp": 1.0}, "amp: expected true or false, got 1.0"),
    ({"amp": "true"}, "amp: expected true or false, got 'true'"),
    ({"data_root": 3}, "data_root: expected a string, got 3"),
    ({"arch": None}, "arch: must be set (got null)"),
    ({"certify": {"n": "3"}}, "certify.n: expected an integer, got '3'"),
    ({"certify": {"batch_size": 1.5}}, "certify.batch_size: expected an integer, got 1.5"),
    ({"certify": {"sequential": 0}}, "certify.sequential: expected true or false, got 0"),
    ({"certify": 5}, "certify: expected a mapping, got 5"),
    ({"certify": {"nn": 3}}, "certify.nn: unknown key; did you mean 'n'?"),
    ({"certify": {"skp": 3}}, "certify.skp: unknown key; did you mean 'skip'?"),
    ({"momentun": 0.9}, "momentun: unknown key; did you mean 'momentum'?"),
])
def test_types_are_strict_and_named_in_one_line(values, message):
    """No coercion: a string, a bool or a whole float is no integer, an integer no bool."""
    with pytest.raises(UserError) as info:
        parse_trial_config(values)
    assert str(info.value) == message


def test_an_integer_is_a_number_read_as_a_float_and_optional_keys_take_null():
    c = parse_trial_config({"lr": 1, "sigma": 1, "certify": {"target_radius": 2,
                                                            "batch_size": None}})
    assert (c.lr, c.sigma, c.certify.target_radius) == (1.0, 1.0, 2.0)
    assert all(isinstance(v, float) for v in (c.lr, c.sigma, c.certify.target_radius))
    assert c.certify.batch_size is None
    assert parse_trial_config({"init_from": None}).init_from is None


@pytest.mark.parametrize("values,key", [
    ({"steps": "y", "sigma": "x"}, "steps"),
    ({"sigma": "x", "steps": "y"}, "sigma"),
    ({"certify": {"skip": "s", "n": "n"}, "steps": "y"}, "certify.skip"),
    ({"bogus": 1, "steps": "y"}, "bogus"),
])
def test_of_several_bad_keys_the_first_as_written_is_named(values, key):
    with pytest.raises(UserError) as info:
        parse_trial_config(values)
    assert str(info.value).startswith(f"{key}: ")
