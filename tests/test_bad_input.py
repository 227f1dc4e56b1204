"""Bad input: one clear line naming the option and the allowed values, before any work starts."""
import pytest
import torch
from torch import nn

import trajshift as ts
from trajshift.commands.cli import main


@pytest.mark.parametrize("changes,needle", [
    ({"method": "maml"}, "method: unknown method 'maml'; allowed values: cts, cts-accurate"),
    ({"inner_optimizer": {"name": "sgdd", "lr": 0.1}}, "inner_optimizer.name: unknown optimizer 'sgdd'; allowed"),
    ({"meta_optimizer": {"name": "lbfgs"}}, "meta_optimizer.name: unknown optimizer 'lbfgs'"),
    ({"inner_steps": 0}, "inner_steps: expected an integer >= 1, got 0"),
    ({"trajectories": 0}, "trajectories: expected an integer >= 1, got 0"),
    ({"meta_lr": -0.1}, "meta_lr: expected a finite number >= 0, got -0.1"),
    ({"meta_lr": float("inf")}, "meta_lr: expected a finite number >= 0, got inf"),
    ({"inner_optimizer": {"name": "sgd", "lr": float("nan")}}, "inner_optimizer.lr: expected a finite number >= 0"),
    ({"inner_steps": 2.5}, "inner_steps: expected an integer >= 1, got 2.5"),
    ({"options": {"shift": "sideways"}}, "options[cts].shift: unknown value 'sideways'; allowed values: cts, none, random"),
    ({"options": {"meta_every": 0}}, "options[cts].meta_every: expected an integer >= 1"),
    ({"options": {"lam": 1.0}}, "options[cts].lam: unknown key; allowed keys: meta_every, shift, metagrad"),
    ({"inner_optimizer": {"name": "sgd", "lr": 0.1, "betas": (0.9, 0.9)}}, "inner_optimizer.betas: not an option of SGD"),
    ({"dtype": "float16"}, "dtype: unknown value 'float16'; did you mean 'float64'? allowed values: float32, float64"),
])
def test_config_errors_name_the_option(changes, needle):
    with pytest.raises(ts.ConfigError) as err:
        ts.MetaConfig(**changes).validate()
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_config_key():
    with pytest.raises(ts.ConfigError, match="inner_step: unknown key; did you mean 'inner_steps'\\? allowed keys: .*inner_steps"):
        ts.MetaConfig.from_dict({"inner_step": 10})


def test_name_filter_matching_nothing_lists_the_parameters():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    with pytest.raises(ts.ConfigError, match=r"meta_params: include=\['conv\.\*'\].*matches no parameter; "
                                             r"the model's parameters are: 0.weight, 0.bias"):
        ts.ModuleLearners(model, lambda t, s, sp: None, num_tasks=2, include=["conv.*"])


def test_errors_come_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    for argv in (["--methods", "cts,foo"], ["--K", "0"], ["--beta", "-1"], ["--M", "0"], ["--optimizer", "nope"],
                 ["--grid", "0"], ["--task-seeds", "a,b"]):
        assert main(["synthetic", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("trajshift: error: ") and "\n" not in err
    assert not out.exists()


def test_divergence_names_task_and_step():
    fn = lambda theta, step, split: (theta ** 4).sum(1) * torch.tensor([1.0, 1e6])   # task 1 explodes
    learners = ts.FunctionLearners(fn, torch.tensor([3.0]), 2)
    cfg = ts.MetaConfig(method="cts", inner_steps=50, trajectories=1, meta_lr=0.0,
                        inner_optimizer={"name": "sgd", "lr": 0.1})
    with pytest.raises(ts.DivergenceError, match="task 1: inner loss is (inf|nan)"):
        ts.MetaTrainer(learners, cfg).run()


def test_set_overrides_follow_the_same_rules_as_the_file(tmp_path, capsys):
    """One schema: a value given with --set is checked like the same value in the YAML file, with the key path and a
    'did you mean' for a misspelt key; nothing is written."""
    from pathlib import Path

    import yaml
    shipped = str(Path(__file__).resolve().parent.parent / "configs" / "offline-digits.yaml")
    data = yaml.safe_load(Path(shipped).read_text())
    bad = dict(data, meta={**data["meta"], "inner_steps": 0})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = tmp_path / "never"
    assert main(["meta-train", str(tmp_path / "bad.yaml"), "--out", str(out)]) == 2
    from_file = capsys.readouterr().err.strip()
    assert main(["meta-train", shipped, "--out", str(out), "--set", "meta.inner_steps=0"]) == 2
    from_flag = capsys.readouterr().err.strip()
    assert from_file == from_flag == "trajshift: error: meta.inner_steps: expected an integer >= 1, got 0"
    assert main(["meta-train", shipped, "--out", str(out), "--set", "meta.inner_step=5"]) == 2
    assert "meta.inner_step: unknown key; did you mean 'inner_steps'?" in capsys.readouterr().err
    assert main(["meta-train", shipped, "--out", str(out), "--set", "meta.meta_lr=1e-3",
                 "--set", "execution.backend=lop"]) == 2
    assert "execution.backend: unknown value 'lop'; did you mean 'loop'?" in capsys.readouterr().err
    assert not out.exists()


def test_command_line_flags_are_derived_from_the_config_dataclasses(capsys):
    """One declaration per option (trajshift/commands/cli_options.py): no flag given gives the dataclass defaults; each flag
    sets its field; a bad value is named by its flag, by the schema's own rule."""
    from trajshift.analysis.approx_error import ApproxErrorConfig
    from trajshift.analysis.synthetic_study import SyntheticStudyConfig
    from trajshift.commands.cli import build_parser
    from trajshift.commands.cli_options import config_from_args
    from trajshift.commands.cli_parser import APPROX_ERROR_FLAGS, SYNTHETIC_FLAGS
    parser = build_parser()
    args = parser.parse_args(["synthetic", "--out", "x"])
    assert config_from_args(SyntheticStudyConfig, args, SYNTHETIC_FLAGS) == SyntheticStudyConfig()
    args = parser.parse_args(["synthetic", "--out", "x", "--K", "7", "--carry-optimizer-state", "--horizon-ks",
                              "1,2", "--beta", "0.5"])
    cfg = config_from_args(SyntheticStudyConfig, args, SYNTHETIC_FLAGS)
    assert (cfg.inner_steps, cfg.reset_optimizer_state, cfg.horizon_ks, cfg.beta) == (7, False, [1, 2], 0.5)
    assert cfg.trajectories == SyntheticStudyConfig().trajectories
    with pytest.raises(ts.ConfigError, match=r"^--K: expected an integer >= 1, got 0$"):
        config_from_args(SyntheticStudyConfig, parser.parse_args(["synthetic", "--out", "x", "--K", "0"]),
                         SYNTHETIC_FLAGS)
    args = parser.parse_args(["approx-error", "--out", "x", "--ks", "1,3"])
    assert config_from_args(ApproxErrorConfig, args, APPROX_ERROR_FLAGS).ks == [1, 3]
    assert "(default: 100)" in parser._subparsers._group_actions[0].choices["synthetic"].format_help()
