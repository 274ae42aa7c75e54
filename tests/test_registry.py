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
    assert sorted({spec.method.split(".")[2] for spec in specs.values()}) == folders
    assert set(registry.benchmark_cases()) >= set(specs)


def test_typed_settings_are_checked_and_become_flags(tmp_path):
    cfg = resolve_config(["--model", "rd4ad", "--mode", "train", "--loss_per_image", "yes", "--beta1", "0.8"])
    assert cfg["loss_per_image"] is True and cfg["beta1"] == 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta1: fast\n")
    with pytest.raises(UserError, match=r"--beta1: expected float, got 'fast'"):
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    bad.write_text("teacher_weights: x.pdparams\n")  # an EfficientAD option, not RD4AD's
    with pytest.raises(UserError, match=r"bad.yaml: unknown option\(s\) teacher_weights"):
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
def test_reading_a_method_spec_loads_no_paddle(package):
    code = f"import sys; import {package}.spec; print('paddle' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("yaml_text, message", [
    ("steps: thirty\n", "--steps: expected int, got 'thirty'"),
    ("lr: fast\n", "--lr: expected float, got 'fast'"),
    ("steps: 2.5\n", "--steps: expected int, got 2.5"),
    ("steps: true\n", "--steps: expected int, got True"),
    ("resume: maybe\n", "--resume: expected bool, got 'maybe'"),
    ("val_ratio: [0.1]\n", "--val_ratio: expected float, got [0.1]"),
])
def test_yaml_values_of_shared_options_are_type_checked(tmp_path, yaml_text, message):
    """A --config file's shared options get the same one-line check as the method's own."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        resolve_config(["--model", "rd4ad", "--mode", "train", "--config", str(bad)])
    assert str(err.value) == message


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
