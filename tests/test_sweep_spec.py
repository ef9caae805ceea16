"""Sweep specs, plans and status without Ray: expansion, names, validation, presets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import sweep_yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from smoothadv.cli.main import main
from smoothadv.common import layout
from smoothadv.common.errors import UserError
from smoothadv.sweep.grid import trial_name
from smoothadv.sweep.spec import load_spec, parse_spec
from smoothadv.sweep.spec_blocks import EarlyStopping
from smoothadv.sweep.status import format_status

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = {"name": "tiny", "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 1},
        "grid": {"sigma": [0.25, 0.5]}}


def write_spec(tmp_path: Path, values, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values) if not isinstance(values, str) else values)
    return path


@pytest.mark.parametrize("preset,count", [("cifar10_paper", 640), ("imagenet_paper", 24),
                                          ("cifar10_fast", 640), ("imagenet_fast", 24),
                                          ("cifar10_cohen", 4), ("imagenet_cohen", 3),
                                          ("imagenet32_pretrain", 16), ("quickstart", 10)])
def test_plan_counts_the_presets(preset, count, capsys):
    assert main(["sweep", "plan", str(CONFIGS / f"{preset}.yaml"), "--summary"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"{count} trials"


PAPER_PRESETS = ("cifar10_paper", "imagenet_paper", "cifar10_finetune", "imagenet32_pretrain",
                 "cifar10_cohen", "imagenet_cohen")


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_presets_named_after_the_papers_run_their_protocol(preset, tmp_path):
    """Every trial trains in full (no early stopping), in float32 (amp off), and certifies with
    Cohen et al.'s CERTIFY (not sequential, no target radius): every row is CERTIFY's."""
    spec = load_spec(preset, ["init_from=/pre/trained.pt"] if "finetune" in preset else [])
    assert spec.schedule is None and spec.stages is None
    for trial in spec.trials():
        certify = trial.config.certify
        assert not certify.sequential and certify.target_radius is None
        assert trial.config.amp is False


@pytest.mark.parametrize("fast,paper", [("cifar10_fast", "cifar10_paper"),
                                        ("imagenet_fast", "imagenet_paper")])
def test_the_fast_presets_are_the_paper_grid_with_the_economies(fast, paper):
    economical, exact = load_spec(fast), load_spec(paper)
    assert economical.schedule is not None
    assert [t.name for t in economical.trials()] == [t.name for t in exact.trials()]
    trial = economical.trials()[0]
    assert trial.config.certify.sequential and trial.config.certify.target_radius is not None
    assert trial.config.amp is True


def finished_pretraining_sweep(tmp_path: Path, drop: str | None = None) -> Path:
    """The folder of the imagenet32_pretrain preset as if every trial (but ``drop``) finished."""
    folder = tmp_path / "imagenet32_pretrain"
    spec = load_spec(CONFIGS / "imagenet32_pretrain.yaml")
    folder.mkdir(parents=True)
    (folder / layout.SPEC).write_text(sweep_yaml(spec.to_dict()))
    for trial in spec.trials():
        tdir = layout.trial_dir(folder, trial.name)
        tdir.mkdir(parents=True)
        (tdir / "checkpoint.pt").write_bytes(b"weights")
        state = "RUNNING" if trial.name == drop else "TERMINATED"
        layout.write_json(tdir / layout.STATE, {"state": state})
    return folder


def test_finetune_preset_starts_each_trial_from_the_pretrained_model_of_its_eps_sigma(
        tmp_path, capsys):
    """Table 2's pre-training row: one pre-trained model per (ε, σ), each fine-tuned with its
    own (ε, σ), full ε from the first epoch; a missing pair is one line naming it."""
    from smoothadv.trainers.train import attack_epsilon

    spec = str(CONFIGS / "cifar10_finetune.yaml")
    assert main(["sweep", "plan", spec]) == 2
    assert "init_from_sweep" in capsys.readouterr().err
    pre = finished_pretraining_sweep(tmp_path)
    assert main(["sweep", "plan", spec, "--set", f"init_from_sweep={pre}", "--summary"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("640 trials")
    trials = load_spec(spec, [f"init_from_sweep={pre}"]).trials()
    for t in trials:
        c = t.config
        assert c.init_from == str(pre / "trials" / f"eps{c.epsilon:g}-sigma{c.sigma:g}"
                                  / "checkpoint.pt")
        assert attack_epsilon(c, 0) == c.epsilon  # no warm-up when fine-tuning
    assert len({t.config.init_from for t in trials}) == 16

    partial = finished_pretraining_sweep(tmp_path / "p", drop="eps2-sigma1")
    assert main(["sweep", "plan", spec, "--set", f"init_from_sweep={partial}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no finished pre-trained model for epsilon=2, sigma=1" in err
    assert main(["sweep", "plan", spec, "--set", f"init_from_sweep={pre}",
                 "--set", "init_from=/x.pt"]) == 2
    assert "either init_from or init_from_sweep" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_presets_train_multi_noise_wherever_m_exceeds_one(preset, tmp_path):
    """Pseudocode 1 and every reference run with m_train > 1 update on all m noisy copies."""
    overrides = ([f"init_from_sweep={finished_pretraining_sweep(tmp_path)}"]
                 if preset == "cifar10_finetune" else [])
    spec = load_spec(CONFIGS / f"{preset}.yaml", overrides)
    for trial in spec.trials():
        assert trial.config.multi_noise or trial.config.m_train == 1, trial.name
    if preset in ("cifar10_paper", "imagenet_paper", "cifar10_finetune", "imagenet32_pretrain"):
        assert spec.defaults["multi_noise"] is True


def test_paper_grid_names_and_configs():
    spec = load_spec(CONFIGS / "cifar10_paper.yaml")
    trials = {t.name: t for t in spec.trials()}
    trial = trials["pgd-T10-m4-eps0.5-sigma0.25"]
    assert trial.params == {"m_train": 4, "sigma": 0.25, "epsilon": 0.5, "attack": "pgd",
                            "steps": 10}
    assert (trial.config.arch, trial.config.epochs, trial.config.certify.n) == (
        "cifar_resnet110", 150, 100_000)
    assert len(set(trials)) == 640


def test_union_exclude_and_duplicates():
    spec = parse_spec({"name": "u", "defaults": {"dataset": "synthetic", "arch": "lenet"},
                       "grid": [{"method": ["gaussian"], "sigma": [0.25, 0.5]},
                                {"attack": ["pgd", "ddn"], "m_train": [1, 2], "sigma": [0.25]},
                                {"method": ["gaussian"], "sigma": [0.25]}],  # a duplicate
                       "exclude": [{"attack": "ddn", "m_train": [2]}]})
    names = [t.name for t in spec.trials()]
    assert names == ["gaussian-sigma0.25", "gaussian-sigma0.5", "pgd-m1-sigma0.25",
                     "pgd-m2-sigma0.25", "ddn-m1-sigma0.25"]
    config = {t.name: t.config for t in spec.trials()}["ddn-m1-sigma0.25"]
    assert (config.method, config.attack, config.m_train) == ("smoothadv", "ddn", 1)


def test_names_are_readable_and_safe():
    assert trial_name({"sigma": 1.0, "epsilon": 2.0}) == "eps2-sigma1"
    assert trial_name({"method": "vanilla_adv", "lr": 0.01}) == "vanilla_adv-lr0.01"
    assert trial_name({"init_from": "/a/b/pre trained.pt"}) == "init_frompre_trained"


def test_overrides_apply_to_defaults_and_resources():
    spec = parse_spec(TINY, ["epochs=3", "certify.n=500", "resources.workers=2"])
    assert {t.config.epochs for t in spec.trials()} == {3}
    assert spec.trials()[0].config.certify.n == 500
    assert spec.resources.workers == 2


def test_set_turns_the_optional_blocks_on_off_and_sets_their_keys():
    assert parse_spec(TINY).schedule is None
    on = parse_spec(TINY, ["schedule.margin=0.1", "stages.n=200"])
    assert on.schedule == EarlyStopping(margin=0.1) and on.stages.n == 200
    assert parse_spec(TINY, ["schedule=true"]).schedule == EarlyStopping()
    fast = load_spec(CONFIGS / "cifar10_fast.yaml")
    assert fast.schedule == EarlyStopping()  # the fast grids stop dominated trials early
    assert load_spec(CONFIGS / "cifar10_fast.yaml", ["schedule=null"]).schedule is None
    assert load_spec(CONFIGS / "cifar10_fast.yaml", ["schedule=false"]).schedule is None
    assert load_spec(CONFIGS / "cifar10_paper.yaml",
                     ["schedule.rungs=[0.5]"]).schedule.rungs == (0.5,)
    with pytest.raises(UserError, match="--set schedule: expected null or false"):
        parse_spec(TINY, ["schedule=3"])
    with pytest.raises(UserError, match=r"schedule.margn: unknown key"):
        parse_spec(TINY, ["schedule.margn=0.1"])


@pytest.mark.parametrize("values,needle", [
    ({**TINY, "grid": {"sigmaa": [0.25]}}, "grid.sigmaa: unknown key; did you mean 'sigma'?"),
    # the old name of the per-epoch test images (it never limited certification)
    ({**TINY, "defaults": {**TINY["defaults"], "test_subset": 100}},
     "test_subset: unknown key; did you mean 'epoch_test_subset'?"),
    ({**TINY, "grid": {"zzz": [1]}}, "grid.zzz: unknown key; expected one of ['amp', 'arch', "),
    ({**TINY, "grid": {"sigma": [0.25, -1.0]}}, "trial sigma-1: sigma: must be > 0"),
    ({**TINY, "grid": {}}, "grid: expected a non-empty mapping"),
    ({**TINY, "grid": []}, "grid: empty"),
    ({**TINY, "grid": {"sigma": []}}, "grid.sigma: empty list"),
    ({k: v for k, v in TINY.items() if k != "grid"}, "grid: missing"),
    ({**TINY, "grid": {"certify": [{}]}}, "grid.certify: cannot be gridded"),
    ({**TINY, "exclude": [{"sigma": [0.25, 0.5]}]}, "every trial is excluded"),
    ({**TINY, "defaults": {"epochs": "three"}}, "epochs: expected an integer"),
    ({**TINY, "resources": {"workers": 0}}, "resources.workers: must be ≥ 1"),
    ({**TINY, "resources": {"gpus_per_worker": 1.5}}, "resources.gpus_per_worker"),
    ({**TINY, "resources": {"gpu": 1}}, "resources.gpu: unknown key"),
    ({**TINY, "attack_eval": {"epsilons": [-0.5]}}, "attack_eval.epsilons"),
    ({**TINY, "attack_eval": {"epsilons": [0.5, 0.5]}}, "attack_eval.epsilons: each radius once"),
    ({**TINY, "name": "a/b"}, "name: expected a folder-safe name"),
    ({**TINY, "trials": 3}, "trials: unknown key"),
    ({**TINY, "defaults": {**TINY["defaults"], "sigmaa": 0.5}}, "sigmaa: unknown key"),
    ({**TINY, "defaults": {**TINY["defaults"], "lr": -0.1}}, "lr: must be > 0"),
    ({**TINY, "resources": {"max_concurrent": -1}}, "resources.max_concurrent: must be ≥ 0"),
    ({**TINY, "resources": {"start_timeout_s": 0}}, "resources.start_timeout_s: must be > 0"),
    ({**TINY, "defaults": {**TINY["defaults"], "dataset": "cifar10",
                           "data_root": "/nonexistent/cifar"}},
     "trial sigma0.25: data_root: dataset 'cifar10' not found: looked for data_batch_1"),
    ({**TINY, "defaults": {**TINY["defaults"], "init_from": "/nonexistent/pretrained.pt"}},
     "trial sigma0.25: init_from: /nonexistent/pretrained.pt does not exist"),
    ("- just\n- a list\n", "spec: expected a mapping"),
])
def test_bad_specs_are_one_line_naming_the_key(tmp_path, capsys, values, needle):
    spec = write_spec(tmp_path, values)
    storage = tmp_path / "sweeps"
    assert main(["sweep", "run", str(spec), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"smoothadv: error: {spec}: ")
    assert needle in err
    assert not storage.exists()  # nothing started, nothing written


@pytest.mark.parametrize("block,needle", [
    ({"attack_eval": {"epsilons": [0.5, 0.25, 0.5]}}, "attack_eval.epsilons: each radius once"),
    ({"attack_eval": {"epsilons": [0.25, -0.5]}}, "attack_eval.epsilons: "),
    ({"attack_eval": {"m_test": 0}}, "attack_eval.m_test: must be ≥ 1"),
    ({"attack_eval": {"alpha": 0.5}}, "attack_eval.alpha: must lie in (0, 0.5)"),
    ({"defaults": {**TINY["defaults"], "certify": {"n0": 0}}}, "certify.n0: must be ≥ 1"),
    ({"defaults": {**TINY["defaults"], "certify": {"alpha": 0}}}, "certify.alpha: must lie in"),
])
def test_plan_refuses_a_bad_settings_block_in_one_line_naming_the_key(tmp_path, capsys, block,
                                                                       needle):
    spec = write_spec(tmp_path, {**TINY, **block})
    assert main(["sweep", "plan", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"smoothadv: error: {spec}: {needle}")
    assert list(tmp_path.iterdir()) == [spec]  # nothing written


@pytest.mark.parametrize("block,message", [
    ({"resources": {"workers": "2"}}, "resources.workers: expected an integer, got '2'"),
    ({"resources": {"workers": True}}, "resources.workers: expected an integer, got True"),
    ({"resources": {"workers": 2.0}}, "resources.workers: expected an integer, got 2.0"),
    ({"resources": {"gpus_per_worker": True}},
     "resources.gpus_per_worker: expected a number, got True"),
    ({"resources": {"start_timeout_s": float("inf")}},
     "resources.start_timeout_s: expected a finite number, got inf"),
    ({"resources": {"cpu_per_worker": 2}},
     "resources.cpu_per_worker: unknown key; did you mean 'cpus_per_worker'?"),
    ({"resources": 5}, "resources: expected a mapping"),
    ({"attack_eval": {"epsilons": 0.5}},
     "attack_eval.epsilons: expected a list of numbers, got 0.5"),
    ({"attack_eval": {"epsilons": [0.25, True]}},
     "attack_eval.epsilons: expected a number, got True"),
    ({"attack_eval": {"epsilon": [0.5]}},
     "attack_eval.epsilon: unknown key; did you mean 'epsilons'?"),
    ({"attack_eval": {"steps": None}}, "attack_eval.steps: must be set (got null)"),
    ({"stages": {"radii": ["x"]}}, "stages.radii: expected a number, got 'x'"),
    ({"stages": {"final_skp": 2}}, "stages.final_skp: unknown key; did you mean 'final_skip'?"),
    ({"schedule": {"images": 1.5}}, "schedule.images: expected an integer, got 1.5"),
    ({"schedule": 3}, "schedule: expected a mapping"),
])
def test_spec_blocks_are_typed_strictly_in_one_line_naming_the_key(block, message):
    """No coercion (a string, a bool or a whole float is no integer), one line, the dotted key."""
    with pytest.raises(UserError) as info:
        parse_spec({**TINY, **block})
    assert str(info.value) == message


def test_spec_blocks_read_integers_as_numbers_and_lists_as_tuples():
    spec = parse_spec({**TINY, "resources": {"cpus_per_worker": 2, "start_timeout_s": 60},
                       "attack_eval": {"epsilons": [1, 0.5]}, "stages": {"radii": [1]},
                       "schedule": {"rungs": [0.5], "radii": [0, 1]}})
    assert (spec.resources.cpus_per_worker, spec.resources.start_timeout_s) == (2.0, 60.0)
    assert spec.attack_eval.epsilons == (1.0, 0.5) and spec.stages.radii == (1.0,)
    assert spec.schedule == EarlyStopping(rungs=(0.5,), radii=(0.0, 1.0))
    numbers = (spec.resources.cpus_per_worker, spec.resources.start_timeout_s,
               *spec.attack_eval.epsilons, *spec.stages.radii, *spec.schedule.radii)
    assert all(type(x) is float for x in numbers)
    assert len({spec.stages, spec.schedule, spec.attack_eval}) == 3  # frozen, hashable


def test_malformed_yaml_and_missing_file(tmp_path, capsys):
    assert main(["sweep", "plan", str(write_spec(tmp_path, "grid: [1, 2\n"))]) == 2
    assert "malformed YAML at line" in capsys.readouterr().err
    assert main(["sweep", "plan", str(tmp_path / "nope.yaml")]) == 2
    assert "spec file does not exist" in capsys.readouterr().err


def test_a_gridded_key_cannot_be_set(tmp_path, capsys):
    assert main(["sweep", "plan", str(write_spec(tmp_path, TINY)), "--set", "sigma=1"]) == 2
    assert "--set sigma: the key is gridded" in capsys.readouterr().err


FUZZ_BASE = {
    "name": "fuzz",
    "defaults": {"dataset": "synthetic", "arch": "lenet", "epochs": 2, "sigma": 0.25,
                 "epsilon": 0.5, "steps": 2, "lr": 0.05, "batch_size": 32, "warmup_epochs": 1,
                 "certify": {"n0": 10, "n": 100, "alpha": 0.001, "skip": 4}},
    "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "grid": {"m_train": [1, 2], "attack": ["pgd", "ddn"]},
    "attack_eval": {"epsilons": [0.25, 0.5], "steps": 2, "m_test": 4, "n": 100},
}
# Where a mutated key is named in the error: defaults and grid keys by their own name,
# the blocks with their prefix.
_PREFIX = {"defaults": "", "grid": "", "resources": "resources.", "attack_eval": "attack_eval.",
           "certify": "certify."}
_LEAVES = ([("name",)] + [("defaults", k) for k in FUZZ_BASE["defaults"] if k != "certify"]
           + [("defaults", "certify", k) for k in FUZZ_BASE["defaults"]["certify"]]
           + [(block, k) for block in ("resources", "grid", "attack_eval")
              for k in FUZZ_BASE[block]])
_VALUES = st.one_of(st.integers(-2, 300), st.floats(-1.5, 3, allow_nan=False),
                    st.sampled_from([None, True, "pgd", "ddn", "x", "lenet", [], [0.5, 0.5],
                                     [1, 2], {"a": 1}, 0, 1, 0.25, 1e-3]))


def _mutated(path: tuple[str, ...], value) -> dict:
    spec = json.loads(json.dumps(FUZZ_BASE))
    *parents, key = path
    node = spec
    for p in parents:
        node = node[p]
    node[key] = value
    return spec


def _named(path: tuple[str, ...]) -> str:
    """How an error names the key at ``path``: the key with its block's prefix."""
    if len(path) == 1:
        return path[0]
    return _PREFIX[path[-2]] + path[-1]


def test_the_fuzz_base_spec_parses():
    assert len(parse_spec(FUZZ_BASE).trials()) == 4


@settings(max_examples=400, deadline=None, database=None)
@given(st.sampled_from(_LEAVES), _VALUES)
def test_a_spec_with_one_field_mutated_parses_or_names_that_field(path, value):
    """Every mutation of one field of a valid spec either parses or fails with one line naming
    the mutated key (with its block's prefix)."""
    try:
        spec = parse_spec(_mutated(path, value))
    except UserError as e:
        message = str(e)
        assert "\n" not in message
        named = _named(path)
        assert re.search(rf"(^|[ .:]){re.escape(named)}\b", message), (path, value, message)
    else:
        assert spec.trials()


def test_the_mutation_fuzzer_reaches_both_outcomes():
    """The fuzzer is worth its name: a fixed sample of mutations both parses (valid
    alternatives) and fails (each failure checked as above) in sizeable shares."""
    import random

    rng = random.Random(0)
    pool = [None, True, "pgd", "ddn", "x", [], [0.5, 0.5], [1, 2], 0, 1, 2, 0.25, 0.5, 1e-3,
            -1, 8, 1.5]
    outcomes = []
    for _ in range(300):
        path, value = rng.choice(_LEAVES), rng.choice(pool)
        try:
            parse_spec(_mutated(path, value))
            outcomes.append(True)
        except UserError as e:
            assert re.search(rf"(^|[ .:]){re.escape(_named(path))}\b", str(e)), (path, value, e)
            outcomes.append(False)
    share = sum(outcomes) / len(outcomes)
    assert 0.1 < share < 0.9, share


def test_status_of_a_partial_sweep(tmp_path, capsys):
    sweep_dir = tmp_path / "tiny"
    sweep_dir.mkdir()
    (sweep_dir / layout.SPEC).write_text(sweep_yaml(TINY))
    done = layout.trial_dir(sweep_dir, "sigma0.25")
    done.mkdir(parents=True)
    layout.write_json(done / layout.STATE, {"state": "ERROR", "error": "ValueError: boom"})
    layout.write_json(done / layout.CERTIFY_PLAN, {"planned": 4})
    (done / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")
    (done / layout.CERTIFY).write_text("idx\tlabel\n0\t1\n4\t2\n8\t")  # a torn last line
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 trials: 1 error, 1 pending"
    row = next(line for line in lines if line.lstrip().startswith("sigma0.25"))
    assert row.split()[:4] == ["sigma0.25", "ERROR", "1/1", "2/4"]
    assert row.endswith("ValueError: boom")
    assert "0/1" in format_status(sweep_dir).splitlines()[2]


def test_status_refuses_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["sweep", "status", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_relative_input_paths_become_absolute_against_the_working_directory(tmp_path,
                                                                            monkeypatch):
    from smoothadv.sweep.inputs import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    spec = with_absolute_paths(parse_spec({
        **TINY, "defaults": {**TINY["defaults"], "data_root": "data", "init_from": "~/p.pt"},
        "grid": {"extra_data": ["extra.pkl", "/abs/extra.pkl"]},
        "exclude": [{"extra_data": "extra.pkl"}]}))
    assert spec.defaults["data_root"] == str(tmp_path / "data")
    assert spec.defaults["init_from"] == str(Path.home() / "p.pt")
    assert spec.grid == [{"extra_data": [str(tmp_path / "extra.pkl"), "/abs/extra.pkl"]}]
    assert [t.params for t in spec.trials()] == [{"extra_data": "/abs/extra.pkl"}]


def test_plan_says_how_many_trials_run_at_once(tmp_path, capsys):
    import os

    assert main(["sweep", "plan", str(write_spec(tmp_path, TINY)), "--summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cpus = os.cpu_count()
    assert lines[-2].startswith(f"at most {cpus} trials at once on this machine's local Ray "
                                f"({cpus} CPUs")
    capped = {**TINY, "resources": {"max_concurrent": 3, "start_timeout_s": 600}}
    assert main(["sweep", "plan", str(write_spec(tmp_path, capped)), "--summary"]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == (
        "at most 3 trials at once (resources.max_concurrent)")
    gpu = {**TINY, "resources": {"gpus_per_worker": 1}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        assert main(["sweep", "plan", str(write_spec(tmp_path, gpu)), "--summary"]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("no trial fits on this machine")


def test_presets_work_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert main(["sweep", "plan", "cifar10_paper", "--summary"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("640 trials")
    assert main(["sweep", "presets"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
              if line and not line[0].isspace()}  # a preset's line, not its description's
    assert set(listed) == {p.stem for p in CONFIGS.glob("*.yaml")}
    assert "640 trials" in listed["cifar10_paper"] and "10 trials" in listed["quickstart"]
    assert "needs --set init_from_sweep=DIR" in listed["cifar10_finetune"]
    assert main(["sweep", "plan", "cifar10_papr"]) == 2
    assert "presets: cifar10_cohen" in capsys.readouterr().err


def test_tunes_param_space_is_plain_data_one_record_per_trial():
    """Tune expands sweep.param_space into one variant per trial: its record holds the
    trial's name, its gridded values (absent where its union part does not grid the key) and
    its full config; nothing in it is a placeholder Tune could not restore (plain values only:
    Ray 2.60 replaces anything else by ("__fn_ph", hash) in the trials a restore creates)."""
    from ray.tune.impl.placeholder import create_resolvers_map, inject_placeholders
    from ray.tune.search.variant_generator import generate_variants
    from smoothadv.sweep.param_space import param_space

    trials = parse_spec({"name": "cols", "defaults": {"dataset": "synthetic", "arch": "lenet"},
                         "grid": [{"method": ["gaussian"], "sigma": [0.25, 0.5]},
                                  {"epsilon": [0.5], "sigma": [0.25]}]}).trials()
    space = param_space(trials, stage=2)
    resolvers = create_resolvers_map()
    inject_placeholders(space, resolvers)
    assert not resolvers  # Tune found nothing to replace by a placeholder
    variants = [v for _, v in generate_variants(space)]
    by_name = {t.name: t for t in trials}
    assert sorted(v["trial"]["name"] for v in variants) == sorted(by_name)
    for v in variants:
        trial = by_name[v["trial"]["name"]]
        assert v["stage"] == 2 and v["trial"]["config"] == trial.config.to_dict()
        assert {k: v["trial"].get(k) for k in ("method", "epsilon", "sigma")} == \
            {k: trial.params.get(k) for k in ("method", "epsilon", "sigma")}


BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi",
                                                                          strict=True)])


def test_a_yaml_bomb_is_refused_in_one_line_at_once(tmp_path, capsys):
    """386 bytes of nested anchors stand for 9^9 values: refused before anything walks them
    (common.yaml_input), in a spec, a trial config and a --set value."""
    import time

    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB)
    assert len(BOMB) < 400
    started = time.monotonic()
    assert main(["sweep", "plan", str(spec)]) == 2
    assert main(["train", str(spec), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(f"{spec}: expands to more than 100,000 values" in line
                                 for line in err), err
    assert not (tmp_path / "t").exists()
    assert main(["sweep", "plan", "quickstart", "--set", f"lr={{{BOMB.replace(chr(10), ', ')}}}"]
                ) == 2
    assert "--set lr: expands to more than" in capsys.readouterr().err
    assert time.monotonic() - started < 10


def test_a_grid_beyond_max_trials_is_refused_before_it_is_expanded(tmp_path, capsys):
    """A million-trial grid (6 keys × 10 values) is one line at once, not a minute and
    gigabytes; --max-trials sets the bound both ways."""
    import time

    spec = tmp_path / "huge.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "huge", "defaults": {"dataset": "synthetic", "arch": "lenet"},
        "grid": {k: [round(0.1 * i + 0.1, 1) for i in range(10)]
                 for k in ("sigma", "epsilon", "lr", "momentum", "weight_decay", "lr_gamma")}}))
    started = time.monotonic()
    assert main(["sweep", "plan", str(spec)]) == 2
    assert time.monotonic() - started < 5
    line = capsys.readouterr().err.strip()
    assert line == (f"smoothadv: error: {spec}: grid: 1,000,000 trials, more than max_trials "
                    "= 10,000; raise it with --max-trials N (or the spec's max_trials) if you "
                    "mean it")
    assert main(["sweep", "plan", "quickstart", "--max-trials", "9"]) == 2
    assert "grid: 10 trials, more than max_trials = 9" in capsys.readouterr().err
    assert main(["sweep", "plan", "quickstart", "--max-trials", "10"]) == 0
    assert parse_spec({**load_spec("quickstart").to_dict(), "max_trials": 10}).max_trials == 10


def test_storage_that_is_a_file_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    from smoothadv.sweep import lifecycle as sweep_run

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(sweep_run, "init_ray", no_ray)
    (tmp_path / "afile").write_text("")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "defaults": {"dataset": "synthetic",
                                                             "arch": "lenet"},
                                    "grid": {"sigma": [0.25]}}))
    for storage in ("afile", "afile/below"):
        assert main(["sweep", "run", str(spec), "--storage", str(tmp_path / storage)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"smoothadv: error: --storage {tmp_path / storage}: {tmp_path / 'afile'} is a "
            "file, not a folder")
