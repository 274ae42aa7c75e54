"""The method registry: every method is declared once and everything else reads it."""
import os
import re
import subprocess
import sys

import pytest

from adkit.options.config import build_parser, resolve_config
from adkit.core.errors import UserError
from adkit.options import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("model", registry.model_names())
def test_every_method_has_its_yaml_and_tipc_config_and_they_parse(model):
    cfg = resolve_config(["--model", model, "--mode", "train"])
    for name in registry.setting_fields(model):
        assert name in cfg
    tipc = os.path.join(ROOT, "test_tipc", "configs", model, "train_infer_python.txt")
    assert f"model_name:{model}\n" in open(tipc, encoding="utf-8").read()


def test_the_registry_lists_the_method_folders():
    specs = registry.all_specs()
    folders = sorted(f for f in os.listdir(os.path.join(ROOT, "models"))
                     if os.path.isfile(os.path.join(ROOT, "models", f, "spec.py")))
    # spec.method: "adkit.models.<folder>.method:Class"
    assert sorted({spec.method.split(".")[2] for spec in specs.values()}) == folders
    assert set(registry.benchmark_cases()) >= set(specs)


def test_typed_settings_are_checked_and_become_flags(tmp_path):
    cfg = resolve_config(["--model", "rd4ad", "--mode", "train", "--loss_per_image", "yes", "--beta1", "0.8"])
    assert cfg["loss_per_image"] is True and cfg["beta1"] == 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta1: fast\n")
    with pytest.raises(UserError, match=r"bad.yaml, line 1: beta1: expected float, got 'fast'"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    bad.write_text("teacher_weights: x.pdparams\n")  # an EfficientAD option, not RD4AD's
    with pytest.raises(UserError, match=r"bad.yaml, line 1: teacher_weights: unknown option$"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    with pytest.raises(UserError, match="unrecognized arguments: --teacher_weights"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--teacher_weights", "x"])


def test_extra_modes_belong_to_their_method():
    offering = registry.extra_modes()["distill"]
    assert offering == ["efficientad_s", "efficientad_m"]
    with pytest.raises(UserError, match="--mode distill: offered by efficientad_s, efficientad_m, not by --model rd4ad"):
        resolve_config(["--model", "rd4ad", "--mode", "distill"])
    # the mode reads its own <mode>_<option> defaults from the method's YAML
    cfg = resolve_config(["--model", "efficientad_s", "--mode", "distill", "--data_dir", "x"])
    train = resolve_config(["--model", "efficientad_s", "--mode", "train"])
    assert (cfg["steps"], cfg["batch_size"]) == (60000, 16) and (train["steps"], train["batch_size"]) == (70000, 1)
    assert not any(key.startswith("distill_") for key in cfg)


@pytest.mark.slow
def test_help_per_method_shows_its_own_options():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--model", "rd4ad", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "rd4ad options:" in text
    assert re.search(r"--beta1 BETA1 Adam beta1 \(paper 0.5\) \(default: 0.5\)", text)
    assert "--teacher_weights" not in text


@pytest.mark.parametrize("package", sorted({spec.method.split(":")[0].rsplit(".", 1)[0]
                                            for spec in registry.all_specs().values()}))
def test_method_packages_load_their_spec_without_paddle(package):
    """The command line reads every spec before Paddle loads: neither the package's
    __init__.py (a docstring only) nor its spec.py may import it."""
    code = f"import sys; import {package}.spec; print('paddle' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("yaml_text, message", [
    ("steps: thirty\n", "line 1: steps: expected int, got 'thirty'"),
    ("lr: fast\n", "line 1: lr: expected float, got 'fast'"),
    ("steps: 2.5\n", "line 1: steps: expected int, got 2.5"),
    ("steps: true\n", "line 1: steps: expected int, got True"),
    ("resume: maybe\n", "line 1: resume: expected bool, got 'maybe'"),
    ("batch_size: 4\nval_ratio: [0.1]\n", "line 2: val_ratio: expected float, got [0.1]"),
    ("batch_size: 4\n\nimage_size: 5l2\n", "line 3: image_size: expected N or HxW, got '5l2'"),
    ("device: tpu\n", "line 1: device must be cpu or gpu, got 'tpu'"),
    ("steps: 0\n", "line 1: steps must be >= 1, got 0"),
    ("image_size: 100\n", "line 1: image_size sides must be multiples of 32, got 100"),
    ("threshold_policy: best\n", "line 1: threshold_policy best: unknown policy"),
])
def test_a_bad_yaml_value_names_the_file_line_and_key(tmp_path, yaml_text, message):
    """A --config file's values get the same one-line check as the command line's, naming
    the file, line and key the user wrote (not a flag they never typed)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    assert str(err.value).startswith(f"{bad}, {message}")


def test_a_bad_command_line_value_names_the_flag_even_over_a_yaml_value(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("device: cpu\nsteps: 3\n")
    with pytest.raises(UserError, match="^--device must be cpu or gpu, got 'tpu'$"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(config), "--device", "tpu"])


@pytest.mark.parametrize("yaml_text, message", [
    # a key without its colon: where the key starts, and where PyYAML noticed
    ("steps: 3\nbatch_size 4\nlr: 0.1\n", "line 2, column 1: invalid YAML: could not find expected ':' "
                                          "(while scanning a simple key; noticed at line 3, column 1)"),
    ("steps: 3\nlr 0.1: 2: 3\n", "line 2, column 10: invalid YAML: mapping values are not allowed here"),
])
def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, yaml_text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    assert str(err.value) == f"{bad}, {message}"


def test_a_misspelt_option_gets_the_one_it_is_closest_to(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: 256\ncoreset_raito: 0.1\nsomething_else: 1\n")
    with pytest.raises(UserError) as err:
        resolve_config(["--model", "patchcore", "--mode", "train", "--config", str(bad)])
    assert str(err.value) == (f"{bad}, line 2: coreset_raito: unknown option (did you mean coreset_ratio?); "
                              f"{bad}, line 3: something_else: unknown option")
    bad.write_text("distill_stepz: 3\n")  # an extra mode's own option
    with pytest.raises(UserError, match=r"line 1: distill_stepz: unknown option \(did you mean distill_steps\?\)$"):
        resolve_config(["--model", "efficientad_s", "--mode", "train", "--config", str(bad)])
    with pytest.raises(UserError) as err:  # the same on the command line
        resolve_config(["--model", "patchcore", "--mode", "train", "--coreset_raito", "0.1"])
    assert str(err.value) == ("unrecognized arguments: --coreset_raito 0.1 (did you mean --coreset_ratio?) "
                              "(see --help)")


def test_yaml_numbers_written_as_text_are_converted(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string; steps: 30.0 is a whole number."""
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1e-4\nsteps: 30.0\nresume: false\ncls: 7\n")
    cfg = resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(good)])
    assert cfg["lr"] == 1e-4 and isinstance(cfg["lr"], float)
    assert cfg["steps"] == 30 and isinstance(cfg["steps"], int)
    assert cfg["resume"] is False and cfg["cls"] == "7"


def test_help_describes_each_model_name_on_its_own():
    """efficientad_s and efficientad_m share a spec but not a description."""
    text = " ".join(build_parser().format_help().split())
    assert "efficientad_s: EfficientAD-S, the small PDN" in text
    assert "efficientad_m: EfficientAD-M, the medium PDN" in text
    for name in registry.model_names():
        assert f"{name}: {registry.summary_of(name)}" in text
