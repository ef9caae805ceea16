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
