"""lsmooth.cli: one flag per Config field, parsed back into a Config, one-line errors."""

import dataclasses

import pytest
from conftest import one_line

from lsmooth.cli import USER_ERRORS, Parser, add_config_flags, config_from_args, error_line, given_flags
from lsmooth.train import Config, ConfigError, resolve


def parser(**kw) -> Parser:
    ap = Parser(prog="prog")
    add_config_flags(ap, **kw)
    return ap


def test_every_config_field_is_a_flag_and_no_flag_is_missing():
    flags = {a.dest for a in parser()._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(Config)}


def test_no_flags_give_the_default_config():
    assert config_from_args(parser().parse_args([])) == Config()


def test_flags_parse_into_the_config():
    argv = ["--dataset", "digits", "--eps", "0", "--noise-kind", "uniform", "--no-pretrained", "--flip",
            "--item-size", "40", "--min-scale", "0.5", "--valid-pct", "0.25", "--split-seed", "7", "--threads", "1"]
    cfg = config_from_args(parser().parse_args(argv), name="x")
    assert cfg == Config(dataset="digits", eps=0.0, noise_kind="uniform", pretrained=False, flip=True, item_size=40,
                         min_scale=0.5, valid_pct=0.25, split_seed=7, threads=1, name="x")


def test_skip_leaves_fields_to_the_caller():
    ap = parser(skip={"eps", "noise", "seed", "name"})
    ap.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.1])
    args = ap.parse_args(["--eps", "0", "0.3", "--epochs", "3"])
    assert "seed" not in vars(args) and "--noise RATE" not in ap.format_help()
    cfg = config_from_args(args, eps=args.eps[1])
    assert (cfg.eps, cfg.epochs, cfg.seed) == (0.3, 3, Config().seed)


def test_help_shows_each_setting_and_its_preset_values():
    text = parser().format_help()
    assert "--noise-kind {symmetric,uniform}" in text and "--pretrained, --no-pretrained" in text
    assert "pets 224" in " ".join(text.split()) and "(default: None)" not in text


BAD = [
    (["--bs", "many"], "prog: error: argument --bs: invalid int value: 'many' (see --help)"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, needle", BAD, ids=[a[0] for a, _ in BAD])
def test_parser_errors_are_one_line_exit_2(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    assert needle in one_line(capsys.readouterr().err)


def test_given_flags_are_the_written_ones_only():
    ap = parser()
    ap.add_argument("--resume")
    assert given_flags(ap, ["--resume", "r", "--threads", "1", "--eps", "0.1", "--no-flip"]) == {
        "resume", "threads", "eps", "flip"}
    assert ap.parse_args([]).eps == 0.1  # the defaults are back


def test_error_line_prints_one_line(capsys):
    with pytest.raises(ConfigError) as info:
        resolve(Config(eps=7))
    assert isinstance(info.value, USER_ERRORS)
    assert error_line("prog", ValueError("two\n  lines")) == 2
    assert one_line(capsys.readouterr().err) == "prog: error: two lines"
