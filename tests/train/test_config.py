"""The config system: YAML + base inheritance -> typed overrides -> dataclasses -> validate() -> YAML again."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.configio import apply_overrides, load_yaml_tree, parse_yaml
from core.errors import ConfigError
from data.config import DataConfig
from data.dataset_dir import data_settings_hash
from model import ModelConfig
from train.config import Config, LogConfig, OptimConfig, TrainConfig, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# A small valid run: every validate() case below starts from it and breaks exactly one rule.
BASE = {
    "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 256, "multiple_of": 16, "max_seq_len": 128},
    "train": {"batch_size": 8, "micro_batch_size": 4, "seq_len": 64, "max_steps": 100},
    "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10},
}


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    return write(tmp_path / "run.yaml", BASE)


# ---- loading and inheritance --------------------------------------------------------------------------------


def test_load_yaml_file(tmp_path):
    path = write(
        tmp_path / "exp.yaml",
        "model:\n  dim: 128\n  n_heads: 4\n  norm_eps: 1e-6\n  rope_theta: 10000\n"
        "optim:\n  lr: 3e-4\ndata:\n  sources: [a.txt, 'hf:wikitext']\n",
    )
    cfg = load_config(path)
    assert cfg.model.dim == 128 and cfg.model.n_heads == 4
    assert cfg.model.n_layers == ModelConfig().n_layers  # untouched keys keep their declared defaults
    assert cfg.model.norm_eps == 1e-6 and isinstance(cfg.model.norm_eps, float)  # `1e-6` is a float, not a str
    assert cfg.model.rope_theta == 10000.0 and isinstance(cfg.model.rope_theta, float)  # int into float field
    assert cfg.optim.lr == 3e-4
    assert cfg.data.sources == ["a.txt", "hf:wikitext"]
    # Paths derived from the file name.
    assert cfg.train.out_dir == str(Path("out") / "exp")
    assert cfg.data.dataset_dir == str(Path("out") / "datasets" / f"exp-{data_settings_hash(**data_settings(cfg))}")


def data_settings(cfg: Config) -> dict:
    d = cfg.data
    return {"sources": d.sources, "vocab_size": cfg.model.vocab_size, "tokenizer_dir": d.tokenizer_dir,
            "text_field": d.text_field, "val_fraction": d.val_fraction, "tokenizer_sample_mb": d.tokenizer_sample_mb}


def test_default_dataset_dir_follows_the_data_settings(tmp_path):
    path = write(tmp_path / "exp.yaml", "data:\n  sources: [a.txt]\n")
    base = load_config(path).data.dataset_dir
    assert re.fullmatch(r"out/datasets/exp-[0-9a-f]{8}", Path(base).as_posix())
    assert load_config(path).data.dataset_dir == base  # stable
    assert load_config(path, ["data.workers=3", "train.max_steps=500"]).data.dataset_dir == base  # same dataset
    others = [load_config(path, [o]).data.dataset_dir for o in (
        "data.sources=[b.txt]", "data.sources=[a.txt,b.txt]", "model.vocab_size=512", "data.tokenizer_dir=tok",
        "data.text_field=body", "data.val_fraction=0.1", "data.tokenizer_sample_mb=8")]
    assert len({base, *others}) == 1 + len(others)  # each setting that changes the dataset changes the name
    assert load_config(path, ["data.dataset_dir=mine"]).data.dataset_dir == "mine"  # explicit: used as given


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "empty.yaml", ""))
    assert cfg.model == ModelConfig() and cfg.optim == OptimConfig() and cfg.log == LogConfig()


def test_base_inheritance_deep_merges_relative_path(tmp_path):
    write(tmp_path / "common" / "base.yaml", {**BASE, "log": {"wandb": True, "wandb_project": "p"}})
    child = write(
        tmp_path / "exp" / "child.yaml",
        {"base": "../common/base.yaml", "model": {"dim": 128}, "log": {"wandb_project": "q"}},
    )
    cfg = load_config(child)
    assert cfg.model.dim == 128  # overridden by the child
    assert cfg.model.n_layers == 2 and cfg.model.vocab_size == 256  # siblings inherited, not replaced
    assert cfg.log.wandb is True and cfg.log.wandb_project == "q"
    assert cfg.train.max_steps == 100
    assert cfg.train.out_dir == str(Path("out") / "child")  # named after the file loaded, not its base
    assert "base" not in load_yaml_tree(child)


def test_chained_and_listed_bases(tmp_path):
    write(tmp_path / "a.yaml", {**BASE, "train": {**BASE["train"], "seed": 1, "eval_interval": 7}})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "train": {"seed": 2}})
    write(tmp_path / "extra.yaml", {"train": {"eval_batches": 3, "seed": 3}})
    c = write(tmp_path / "c.yaml", {"base": ["b.yaml", "extra.yaml"], "optim": {"lr": 2e-3}})
    cfg = load_config(c)
    assert cfg.train.eval_interval == 7  # from a, through b
    assert cfg.train.eval_batches == 3  # from the second base
    assert cfg.train.seed == 3  # later bases win over earlier ones
    assert cfg.optim.lr == 2e-3 and cfg.optim.min_lr == 1e-4
    assert cfg.model.dim == 64


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "sub/../a.yaml"})  # same file spelled differently
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_shared_base_is_not_a_cycle(tmp_path):
    write(tmp_path / "root.yaml", BASE)
    write(tmp_path / "left.yaml", {"base": "root.yaml"})
    write(tmp_path / "right.yaml", {"base": "root.yaml"})
    cfg = load_config(write(tmp_path / "top.yaml", {"base": ["left.yaml", "right.yaml"]}))
    assert cfg.model.dim == 64


def test_missing_base_names_the_path(tmp_path):
    path = write(tmp_path / "a.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        load_config(path)


@pytest.mark.parametrize("base", [5, {"a": 1}, [1]], ids=["int", "mapping", "list-of-int"])
def test_base_of_wrong_type(tmp_path, base):
    path = write(tmp_path / "a.yaml", {"base": base})
    with pytest.raises(ConfigError, match="base"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "text", ["model: [dim: 1\n", "model:\n  dim: 1\n dim: 2\n", "a: b: c\n"], ids=["bracket", "indent", "colon"]
)
def test_bad_yaml_names_the_file(tmp_path, text):
    path = write(tmp_path / "broken.yaml", text)
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just a string\n"], ids=["list", "int", "str"])
def test_non_mapping_file_names_the_file(tmp_path, text):
    path = write(tmp_path / "notamap.yaml", text)
    with pytest.raises(ConfigError, match=r"notamap\.yaml"):
        load_config(path)


def test_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path / "a.yaml", "train: 5\n")
    with pytest.raises(ConfigError, match="'train'"):
        load_config(path)


# ---- overrides -----------------------------------------------------------------------------------------------


def test_overrides_are_typed_by_yaml_rules(base_file):
    cfg = load_config(
        base_file,
        [
            "train.max_steps=200",
            "optim.lr=3e-4",
            "optim.min_lr=0",
            "model.n_kv_heads=null",
            "train.compile=true",
            "log.tensorboard=false",
            "optim.fused=false",
            "data.sources=[a.txt, b.txt]",
            "train.device=cuda:1",
            "train.sample_prompt=import os",
        ],
    )
    assert cfg.train.max_steps == 200 and type(cfg.train.max_steps) is int
    assert cfg.optim.lr == 3e-4 and type(cfg.optim.lr) is float
    assert cfg.optim.min_lr == 0.0 and type(cfg.optim.min_lr) is float
    assert cfg.model.n_kv_heads is None
    assert cfg.train.compile is True and cfg.log.tensorboard is False and cfg.optim.fused is False
    assert cfg.data.sources == ["a.txt", "b.txt"]
    assert cfg.train.device == "cuda:1"
    assert cfg.train.sample_prompt == "import os"


def test_override_wins_over_file_and_keeps_siblings(base_file):
    cfg = load_config(base_file, ["model.n_kv_heads=2", "model.dim=128"])
    assert cfg.model.n_kv_heads == 2 and cfg.model.dim == 128
    assert cfg.model.n_layers == 2  # sibling from the file kept
    assert load_config(base_file).model.n_kv_heads is None  # the file itself is untouched


def test_later_override_wins(base_file):
    assert load_config(base_file, ["train.seed=1", "train.seed=2"]).train.seed == 2


def test_single_source_override_becomes_a_list(base_file):
    assert load_config(base_file, ["data.sources=corpus.txt"]).data.sources == ["corpus.txt"]


def test_override_into_section_absent_or_empty_in_file(tmp_path):
    path = write(tmp_path / "a.yaml", "train:\noptim:\n  lr: 1e-3\n")  # `train:` is null in YAML
    cfg = load_config(path, ["train.max_steps=200", "log.wandb=true"])
    assert cfg.train.max_steps == 200 and cfg.log.wandb is True


def test_apply_overrides_does_not_mutate_its_input():
    raw = {"train": {"seed": 1}}
    out = apply_overrides(raw, ["train.seed=2"])
    assert raw == {"train": {"seed": 1}} and out == {"train": {"seed": 2}}


@pytest.mark.parametrize("item", ["train.max_steps", "max_steps=3", "=3", "train.seed.x=1"])
def test_malformed_override(base_file, item):
    with pytest.raises(ConfigError):
        load_config(base_file, [item])


@pytest.mark.parametrize(
    ("item", "key", "suggestion"),
    [
        ("model.n_head=8", "model.n_head", "model.n_heads"),
        ("train.lr=1e-3", "train.lr", "optim.lr"),
        ("optim.warmup=10", "optim.warmup", "optim.warmup_steps"),
        ("data.source=x.txt", "data.source", "data.sources"),
        ("trian.seed=1", "trian", "train"),
        ("model.eps=1e-6", "model.eps", "model.norm_eps"),  # same section first, not optim.eps
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(base_file, item, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(base_file, [item])
    message = str(info.value)
    assert f"'{key}'" in message
    assert f"did you mean '{suggestion}'" in message


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path / "a.yaml", {"model": {"n_layer": 2}})
    with pytest.raises(ConfigError, match=r"'model\.n_layer'.*'model\.n_layers'"):
        load_config(path)


def test_unknown_key_far_from_everything_has_no_suggestion(base_file):
    with pytest.raises(ConfigError) as info:
        load_config(base_file, ["model.qqqqqqqqqqqq=1"])
    assert "'model.qqqqqqqqqqqq'" in str(info.value) and "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("item", "fragments"),
    [
        ("train.max_steps=ten", ["train.max_steps", "'ten'", "int"]),
        ("train.max_steps=true", ["train.max_steps", "True", "int"]),  # a bool is not an int here
        ("train.max_steps=2.5", ["train.max_steps", "2.5", "int"]),
        ("optim.lr=fast", ["optim.lr", "'fast'", "float"]),
        ("optim.lr=false", ["optim.lr", "False", "float"]),
        ("train.compile=1", ["train.compile", "1", "bool"]),
        ("train.device=3", ["train.device", "3", "str"]),
        ("model.n_kv_heads=two", ["model.n_kv_heads", "'two'", "int or null"]),
        ("train.precision=fp8", ["train.precision", "'fp8'", "'bf16'"]),
        ("data.sources=5", ["data.sources", "5", "list"]),
        ("data.sources=[a, 5]", ["data.sources[1]", "5", "str"]),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(base_file, item, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(base_file, [item])
    for fragment in fragments:
        assert fragment in str(info.value)


def test_int_into_float_is_accepted_as_float(base_file):
    cfg = load_config(base_file, ["optim.lr=1", "model.rope_theta=500000"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert type(cfg.model.rope_theta) is float


def test_config_from_dict_types_every_section():
    cfg = config_from_dict({"model": None, "train": {"seed": 3}})
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.train, TrainConfig)
    assert isinstance(cfg.data, DataConfig) and cfg.train.seed == 3


# ---- validate() ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["model.dim=66"], ["model", "dim", "n_heads"]),
        (["model.n_kv_heads=3"], ["model", "n_heads", "n_kv_heads"]),
        (["model.dim=24", "model.n_heads=8"], ["model", "head_dim"]),
        (["model.dim=0"], ["model", "dim"]),
        (["model.vocab_size=-1"], ["model", "vocab_size"]),
        (["model.n_layers=0"], ["model", "n_layers"]),
        (["model.dropout=1.5"], ["model", "dropout"]),
        (["model.ffn_hidden_dim=96", "model.ffn_dim_multiplier=1.3"], ["ffn_hidden_dim", "ffn_dim_multiplier"]),
        (["train.batch_size=0"], ["train.batch_size"]),
        (["train.micro_batch_size=0"], ["train.micro_batch_size"]),
        (["train.seq_len=-1"], ["train.seq_len"]),
        (["train.max_steps=0"], ["train.max_steps"]),
        (["train.eval_interval=0"], ["train.eval_interval"]),
        (["train.eval_batches=0"], ["train.eval_batches"]),
        (["train.save_interval=0"], ["train.save_interval"]),
        (["train.keep_last=0"], ["train.keep_last"]),
        (["train.max_bad_steps=0"], ["train.max_bad_steps"]),
        (["train.log_interval=0"], ["train.log_interval"]),
        (["train.sample_tokens=-1"], ["train.sample_tokens"]),
        (["train.seq_len=256"], ["train.seq_len", "model.max_seq_len"]),
        (["train.batch_size=10"], ["train.batch_size", "train.micro_batch_size"]),
        (["train.micro_batch_size=16"], ["train.batch_size", "train.micro_batch_size"]),
        (["train.device=gpu"], ["train.device", "'gpu'"]),
        (["train.device=cuda:x"], ["train.device"]),
        (["train.device=CPU"], ["train.device"]),
        (["train.resume=''"], ["train.resume"]),
        (["optim.lr=0"], ["optim.lr"]),
        (["optim.min_lr=2e-3"], ["optim.min_lr", "optim.lr"]),
        (["optim.min_lr=-1e-5"], ["optim.min_lr"]),
        (["optim.warmup_steps=-1"], ["optim.warmup_steps"]),
        (["optim.warmup_steps=100"], ["optim.warmup_steps", "train.max_steps"]),
        (["optim.warmup_steps=150"], ["optim.warmup_steps", "train.max_steps"]),
        (["optim.schedule=wsd", "optim.warmup_steps=50", "optim.decay_fraction=0.6"],
         ["optim.warmup_steps", "optim.decay_fraction", "train.max_steps"]),
        (["optim.schedule=wsd", "optim.decay_fraction=0"], ["optim.decay_fraction"]),
        (["optim.schedule=wsd", "optim.decay_fraction=1.5"], ["optim.decay_fraction"]),
        (["optim.beta1=1.0"], ["optim.beta1"]),
        (["optim.beta2=-0.1"], ["optim.beta2"]),
        (["optim.weight_decay=-0.1"], ["optim.weight_decay"]),
        (["optim.grad_clip=-1"], ["optim.grad_clip"]),
        (["optim.eps=0"], ["optim.eps"]),
        (["data.sources=[]"], ["data.sources"]),
        (["data.val_fraction=1.0"], ["data.val_fraction"]),
        (["data.val_fraction=-0.1"], ["data.val_fraction"]),
        (["data.workers=-1"], ["data.workers"]),
        (["data.tokenizer_sample_mb=0"], ["data.tokenizer_sample_mb"]),
        (["log.peak_tflops=0"], ["log.peak_tflops"]),
    ],
)
def test_validate_rule_names_the_key(base_file, overrides, keys):
    with pytest.raises(ConfigError) as info:
        load_config(base_file, overrides)
    for key in keys:
        assert key in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["train.device=cuda:0", "train.device=cuda"],
        ["train.device=mps"],
        ["optim.warmup_steps=0", "optim.min_lr=0", "optim.grad_clip=0"],
        ["optim.min_lr=1e-3"],  # min_lr == lr: a constant tail is allowed
        ["optim.schedule=wsd", "optim.warmup_steps=50", "optim.decay_fraction=0.5"],  # exactly max_steps
        ["train.seq_len=128"],  # exactly max_seq_len
        ["model.n_kv_heads=1", "train.micro_batch_size=8"],
        ["model.ffn_hidden_dim=100"],
        ["data.val_fraction=0"],
    ],
)
def test_valid_edge_cases_pass(base_file, overrides):
    load_config(base_file, overrides)


def test_batch_divisibility_counts_world_size(base_file):
    load_config(base_file, world_size=2)  # 8 = 4 x 2
    with pytest.raises(ConfigError, match=r"train\.batch_size.*x 4 data-parallel rank"):
        load_config(base_file, world_size=4)  # 8 is not a multiple of 4 x 4
    cfg = load_config(base_file)
    assert cfg.grad_accum_steps() == 2 and cfg.grad_accum_steps(world_size=2) == 1


# ---- resolved config round trip ------------------------------------------------------------------------------


def test_saved_config_reloads_equal(tmp_path, base_file):
    cfg = load_config(base_file, ["optim.schedule=wsd", "model.n_kv_heads=2", "data.sources=[x.txt, 'y: z']"])
    cfg.save(tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_round_trips(tmp_path, preset):
    cfg = load_config(preset)
    cfg.save(tmp_path / preset.name)
    assert load_config(tmp_path / preset.name) == cfg


def test_presets_exist():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 2


# Strings a YAML dumper might leave unquoted although the loader then reads another type.
_TRICKY = ["1e5", "3e-4", "1_000e3", "+2E10", "true", "no", "null", "~", "12", "0x1F", "1:30", ".inf", "", " x "]


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.one_of(st.sampled_from(_TRICKY), st.text(max_size=20)),
    sources=st.lists(st.one_of(st.sampled_from(_TRICKY), st.text(min_size=1, max_size=10)), min_size=1, max_size=3),
    lr=st.floats(min_value=1e-8, max_value=10.0),
)
@example(prompt="1e5", sources=["2e-3"], lr=3e-4)
def test_any_string_and_float_round_trip_through_yaml(prompt, sources, lr):
    cfg = Config()
    cfg.train.sample_prompt, cfg.data.sources, cfg.optim.lr = prompt, sources, lr
    again = config_from_dict(parse_yaml(cfg.to_yaml(), "resolved"))
    assert again == cfg


def test_model_errors_name_the_dotted_key(base_file):
    with pytest.raises(ConfigError, match=r"^model\.dim \(66\) must be divisible by model\.n_heads \(4\)$"):
        load_config(base_file, ["model.dim=66", "model.n_heads=4", "model.n_kv_heads=null"])
