"""Malformed configs and command lines for launch_client.py, made by a generator (issue 11).

`generate()` returns the cases, the same ones on every call: everything random
comes from `random.Random(SEED)`. Each case is one mistake on top of a valid
run (config/fedml_config.yaml, synthetic, 4 centres), so that the one message
it must produce is about that mistake. Kinds of mistake, each a prefix of the
case ids: wrong types, numbers out of range, unknown and missing sections and
keys, sections that are not mappings, YAML syntax errors, binary bytes, empty
files, files over 10 MB, unsafe or broken YAML tags, odd unicode, duplicate
keys, deep nesting and alias bombs, malformed `--set`, inconsistent
`--rank/--role` (also against mpirun's rank and size), bad run ids, argparse
mistakes, paths that are not config files.

Values that pass the schema's types and break only where they are used (issue 18) are ids
`use-<kind>-...`: seeds torch cannot take, counts past what a loader or islice takes, floats beyond
float32 (the models' dtype), decays outside [0, 1), an optimizer that scales its learning rate
past float32, an output directory that is a file or cannot be made, run ids too long in bytes.
Each has its accepted neighbour, ids `ok-<kind>-...` (`accepted`): the same key at the last value
allowed, which must pass every check, and run to exit 0 (tests/test_bad_input.py runs them under
`mpiexec -n 5`, merged by `job`, one training round each).

The runner (tests/test_bad_input.py) writes `case.config` to a file and puts
its path where the argv says CF.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import random
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from flamby_mpi.config import RunConfig

SEED = 20261128
CF = "{cf}"  # in an argv: the path of the case's config file
OUT = "{out}"  # in an argv: a path the runner plants as the case's `plant` says
TEN_MB = 10_000_000
SECTIONS = typing.get_type_hints(RunConfig)  # section name -> its dataclass
BASE_FILE = Path(__file__).resolve().parents[2] / "config" / "fedml_config.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    argv: Tuple[str, ...]
    # The config file's bytes, written to CF (None for a special CF, below).
    config: Optional[bytes]
    # A fragment the one message must contain, saying what to fix ("a|b": either).
    expect: str
    # Launcher variables, as mpirun would set them for one of its processes.
    env: Tuple[Tuple[str, str], ...] = ()
    # argparse refuses it: usage lines and one "launch_client.py: error:" line.
    usage: bool = False
    # The config file is this many bytes: `config` padded with a YAML comment.
    size: int = 0
    # What the path CF is instead of a regular file: "dir", "fifo", "loop" (of links), "missing".
    special: str = ""
    # The input is valid: it passes every check (and runs to exit 0); `expect` is then empty.
    accepted: bool = False
    # Accepted cases with the same job run as one MPI job (their --set merged; no key twice).
    job: str = ""
    # What the runner puts at OUT: "file" (a regular file), "under-file" (OUT is inside a regular
    # file), "unwritable" (OUT's parent does not let the user create it), "runs-file" (the working
    # directory's `runs`, parent of the default output directories, is a regular file).
    plant: str = ""

    @property
    def in_a_process(self) -> bool:
        """Whether it can also run as a real process (argv and environment cannot hold NUL)."""
        return not any("\0" in a for a in self.argv) and not self.special == "fifo"


def base_raw() -> Dict[str, Dict[str, Any]]:
    return yaml.safe_load(BASE_FILE.read_text())


def dump(raw) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=False).encode()


def flow(value) -> str:
    """`value` as YAML text for --set (one line, quoted where YAML would read it otherwise)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**9).strip()[1:-1]


def with_value(section: str, key: str, value) -> Dict[str, Dict[str, Any]]:
    raw = base_raw()
    raw.setdefault(section, {})[key] = value
    return raw


class _Cases:
    def __init__(self):
        self.cases: List[Case] = []
        self.rng = random.Random(SEED)
        self.base = dump(base_raw())

    def add(self, id: str, expect: str, argv=(), config: Optional[bytes] = None, cf: bool = True, **kw):
        """A case: `config` (default: the valid base config) as the file CF, and `argv` after
        `--cf CF` (unless `cf` is false or argv has its own --cf)."""
        if config is None and not kw.get("special"):
            config = self.base
        full = tuple(argv) if "--cf" in argv or not cf else ("--cf", CF) + tuple(argv)
        self.cases.append(Case(id, full, config, expect, **kw))

    def value(self, group: str, section: str, key: str, value, expect: Optional[str] = None,
              via: Optional[str] = None):
        """`section.key: value`, in the file or with --set (chosen at random unless `via`)."""
        via = via or self.rng.choice(("file", "set"))
        expect = expect or f"{section}.{key}"
        id = f"{group}-{section}.{key}-{via}"
        id += f"-{sum(c.id.startswith(id) for c in self.cases) + 1}" if any(c.id == id for c in self.cases) else ""
        if via == "file":
            self.add(id, expect, config=dump(with_value(section, key, value)))
        else:
            self.add(id, expect, ["--set", f"{section}.{key}={flow(value)}"])

    def text(self, group: str, expect: str, text: str, **kw):
        self.add(group, expect, config=text.encode("utf-8"), **kw)


_WRONG = {
    int: ["many", 2.5, True, [1], {"n": 1}, "3", 1e3],
    float: ["fast", True, [0.1], {"x": 1.0}, "1,5", "0.1.2"],
    bool: [1, 0, "maybe", "True", [True], 1.0],
    str: [42, 4.5, True, ["a"], {"a": "b"}, 0],
    typing.List[int]: ["many", 3, [1.5], ["a"], [True], {"a": 1}, [[0]]],
}


def _fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) is typing.Union:
                tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            yield section, f, tp


def _wrong_types(c: _Cases):
    for section, f, tp in _fields():
        choices = [v for v in _WRONG[tp]
                   if not (f.metadata.get("normalize") and isinstance(v, bool))]  # pooled_test: true/false
        c.value("type", section, f.name, c.rng.choice(choices), expect=f"{section}.{f.name}: expected")


def _out_of_range(c: _Cases):
    for section, f, tp in _fields():
        minimum = f.metadata.get("minimum")
        if minimum is None:
            continue
        below = minimum - c.rng.choice((1, 1, 7, 10**6) if tp in (int, typing.List[int]) else (0.5, 1e-9, 1e9))
        if typing.get_origin(tp) is list:  # a list's bounds hold for each item
            c.value("range", section, f.name, [minimum, below], expect=f"{section}.{f.name}: each item must be in ")
            continue
        c.value("range", section, f.name, below, expect=f"{section}.{f.name}: must be in ")
    # Floats that FedAvg on synthetic uses (a strategy's own hyperparameter would be refused by the
    # plan as unused, whatever its value).
    floats = [("train_args", "learning_rate"), ("train_args", "weight_decay"), ("comm_args", "round_timeout_s"),
              ("comm_args", "join_timeout_s")]

    def expect(section, key, spelling):
        if spelling.strip("9") == "":  # YAML reads it as an int: no float is that big
            return f"{section}.{key}: expected a number"  # ", got an integer of 400 digits"
        return f"{section}.{key}: must be a finite number"

    for spelling in (".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1e400", "1.0e400", "-1.0e999", "nan", "inf",
                     "9" * 400):
        section, key = c.rng.choice(floats)
        # via --set, as typed: YAML reads .nan/.inf as floats, 1e400 as a string, 9...9 as an int
        c.add(f"range-{section}.{key}={spelling[:12]}-set", expect(section, key, spelling),
              ["--set", f"{section}.{key}={spelling}"])
    for spelling in (".nan", "-.inf", "1.0e400", "9" * 400):
        section, key = c.rng.choice(floats)
        c.text(f"range-{section}.{key}={spelling[:12]}-file", expect(section, key, spelling),
               f"{section}:\n  {key}: {spelling}\n")
    # Numbers that pass the minimum but that no run can use: one process per centre, memory
    # for the samples, threads and worker processes, timers.
    huge = [("data_args", "synthetic_num_centers", 10**9), ("data_args", "synthetic_num_centers", 10**30),
            ("data_args", "synthetic_samples_per_center", 10**30),
            ("data_args", "synthetic_samples_per_center", 10**12), ("data_args", "num_workers", 10**9),
            ("device_args", "cpu_threads", 2**31), ("device_args", "cpu_threads", 10**40),
            ("comm_args", "join_timeout_s", 1e300), ("comm_args", "round_timeout_s", 10**400),
            ("comm_args", "join_timeout_s", 10**12)]
    for section, key, value in huge:
        tag = f"{value:.0e}" if isinstance(value, float) else f"1e{len(str(value)) - 1}"
        # comm_round: null makes the plan ask the dataset for its rounds, over every centre.
        c.add(f"range-huge-{section}.{key}={tag}", f"{section}.{key}: "
              + ("expected a number" if value == 10**400 else "must be in "),
              ["--set", f"{section}.{key}={value}", "--set", "train_args.comm_round=null"])
    choices = [("common_args", "training_type", "simulation"), ("common_args", "using_mlops", True),
               ("model_args", "model", "lr"), ("train_args", "federated_optimizer", "fedavg"),
               ("train_args", "federated_optimizer", "FedNova"), ("comm_args", "backend", "mpi"),
               ("tracking_args", "log_level", "LOUD"), ("tracking_args", "enable_wandb", True),
               ("validation_args", "pooled_test", "yes")]
    for section, key, value in choices:
        c.value("choice", section, key, value, expect=f"{section}.{key}: {value!r} is not supported; "
                                                      "valid choices")


_NOT_A_MAPPING = [[1, 2], 5, "text", True, 0.5, [{"comm_round": 3}], "comm_round: 3"]


def _sections(c: _Cases):
    for section in SECTIONS:
        raw = base_raw()
        raw[section] = c.rng.choice(_NOT_A_MAPPING)
        c.add(f"section-not-mapping-{section}", f"section '{section}' must be a mapping", config=dump(raw))
    for name, section in {"fedml": "fedml_args", "capital": "Train_args", "dashes": "train-args",
                          "trailing-space": "train_args ", "fullwidth": "\uff54rain_args",
                          "zero-width": "train_args\u200b", "empty": "", "null": None, "int": 42}.items():
        raw = base_raw()
        raw[section] = {"comm_round": 3}
        c.add(f"section-unknown-{name}", "unknown section", config=dump(raw))
    for section, cls in SECTIONS.items():
        key = c.rng.choice([f.name for f in dataclasses.fields(cls)])
        kind, wrong = c.rng.choice([(kind, wrong) for kind, wrong in (
            ("upper", key.upper()), ("plural", key + "s"), ("dashes", key.replace("_", "-")),
            ("dotless-i", key[:-1] + "\u0131"), ("zero-width", key + "\u200b"), ("cyrillic", "\u0441" + key[1:]))
            if wrong != key])  # "model" has no underscore to turn into a dash
        expect = f"unknown key {section}."
        if c.rng.random() < 0.5:
            c.add(f"key-unknown-{section}-{kind}-file", expect, config=dump(with_value(section, wrong, 1)))
        else:
            c.add(f"key-unknown-{section}-{kind}-set", expect, ["--set", f"{section}.{wrong}=1"])
    for name, key in {"int": 1, "null": None, "bool": True, "float": 2.5,
                      "date": datetime.date(2026, 11, 28)}.items():
        c.add(f"key-not-a-string-{name}", "unknown key train_args.", config=dump(with_value("train_args", key, 3)))
    # Missing sections: keys written at the top level, or a value the run needs left out.
    c.text("missing-section-flat-keys", "unknown section 'comm_round': it is a key of train_args",
           "comm_round: 3\nnum_updates: 5\ndataset: synthetic\n")
    c.text("missing-section-list-of-sections", "top level must be a mapping",
           "- train_args:\n    comm_round: 3\n- data_args:\n    dataset: synthetic\n")
    c.add("missing-value-fedprox-mu", "train_args.mu", ["--set", "train_args.federated_optimizer=FedProx"])
    c.add("missing-value-finetuning-steps", "train_args.num_fine_tuning_steps",
          ["--set", "train_args.federated_optimizer=FedAvgFineTuning"])
    c.add("missing-value-dp-partial", "go together", ["--set", "train_args.dp_target_epsilon=1.0"])
    c.add("missing-file", "not found", special="missing")
    c.add("missing-cf-flag", "--cf", ["--run_id", "r"], cf=False, usage=True)


_SYNTAX = {
    "unclosed-flow": "train_args: {comm_round: [1, 2\n",
    "tab-indent": "train_args:\n\tcomm_round: 3\n",
    "bad-indent": "train_args:\n  comm_round: 3\n num_updates: 5\n",
    "unclosed-quote": "train_args:\n  comm_round: \"3\n",
    "undefined-alias": "train_args:\n  comm_round: *rounds\n",
    "list-then-key": "train_args:\n  - 3\n  comm_round: 3\n",
    "colon-in-plain": "train_args: comm_round: 3\n",
    "only-braces": "{{{\n",
    "two-documents": "train_args:\n  comm_round: 3\n---\ntrain_args:\n  comm_round: 4\n",
    "yaml-2-directive": "%YAML 2.0\n---\ntrain_args: {}\n",
    "reserved-indicator": "train_args:\n  comm_round: @3\n",
    "backquote": "train_args:\n  comm_round: `3`\n",
    "unhashable-key": "train_args:\n  ? [comm_round]\n  : 3\n",
    "control-character": "train_args:\n  comm_round: 3\x07\n",
    "escape-sequence": "common_args:\n  run_id: \"\\q\"\n",
    "crlf-unclosed": "train_args:\r\n  comm_round: [3\r\n",
}

_TAGS = {
    "python-apply": "train_args:\n  comm_round: !!python/object/apply:os.system ['touch pwned']\n",
    "python-new": "train_args:\n  comm_round: !!python/object/new:os.system ['touch pwned']\n",
    "python-name": "train_args:\n  comm_round: !!python/name:os.system\n",
    "python-module": "train_args:\n  comm_round: !!python/module:os\n",
    "python-tuple": "train_args:\n  comm_round: !!python/tuple [1, 2]\n",
    "python-section": "train_args: !!python/object:flamby_mpi.config.TrainArgs {comm_round: 3}\n",
    "local-tag": "train_args:\n  comm_round: !custom 3\n",
    "verbatim-tag": "train_args:\n  comm_round: !<tag:evil.example,2026:x> 3\n",
    "tag-directive": "%TAG !e! tag:evil.example,2026:\n---\ntrain_args:\n  comm_round: !e!x 3\n",
    "int-not-a-number": "train_args:\n  comm_round: !!int three\n",
    "int-hex-empty": "train_args:\n  comm_round: !!int 0x\n",
    "float-not-a-number": "train_args:\n  learning_rate: !!float fast\n",
    "bool-not-a-bool": "device_args:\n  using_gpu: !!bool maybe\n",
    "timestamp-not-a-date": "common_args:\n  run_id: !!timestamp 2026-13-45\n",
    "binary-not-base64": "common_args:\n  run_id: !!binary '!!!'\n",
    "set-of-a-sequence": "train_args: !!set [comm_round]\n",
    "omap-of-a-mapping": "train_args: !!omap {comm_round: 3}\n",
    "binary-value": "common_args:\n  run_id: !!binary aGVsbG8=\n",
    "timestamp-value": "common_args:\n  run_id: 2026-11-28\n",
}


def _yaml(c: _Cases):
    for name, text in _SYNTAX.items():
        c.text(f"yaml-{name}", "not valid YAML", text)
    for name, text in _TAGS.items():
        expect = "common_args.run_id" if name.endswith(("-value", "not-base64")) else "not valid YAML"
        c.text(f"tag-{name}", expect, text)
    c.add("tag-python-apply-set", "not valid YAML",
          ["--set", "train_args.comm_round=!!python/object/apply:os.system [touch pwned]"])
    c.add("tag-int-not-a-number-set", "not valid YAML", ["--set", "train_args.comm_round=!!int three"])
    for name, text in {"key-in-section": "train_args:\n  comm_round: 3\n  num_updates: 5\n  comm_round: 4\n",
                       "section": "train_args:\n  comm_round: 3\ndata_args: {}\ntrain_args:\n  num_updates: 5\n",
                       "flow": "train_args: {comm_round: 3, comm_round: 3}\n",
                       "set-value": None}.items():
        if text is None:
            c.add("duplicate-set-value", "given twice", ["--set", "train_args.comm_round={a: 1, a: 2}"])
        else:
            c.text(f"duplicate-{name}", "given twice", text)
    c.text("nesting-deep-file", "nested", "train_args:\n  comm_round: " + "[" * 5000 + "]" * 5000 + "\n")
    c.text("nesting-deep-block", "nested", "train_args:\n" + "".join(" " * i + "- \n" for i in range(1, 3000)))
    c.add("nesting-deep-set", "nested", ["--set", "train_args.comm_round=" + "{a: " * 3000 + "1" + "}" * 3000])
    anchors = ["data_args:\n  data_cache_dir: &a0 [x, x, x, x, x, x, x, x, x, x]\n"]
    names = ["partition_method", "partition_alpha", "preprocessed", "log_file_dir", "is_mobile",
             "client_id_list", "wandb_a", "wandb_b"]
    for i, name in enumerate(names, 1):
        anchors.append(f"  {name}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n")
    c.text("alias-bomb", "train_args.comm_round",
           "".join(anchors) + "train_args:\n  comm_round: [" + ", ".join([f"*a{len(names)}"] * 10) + "]\n")
    c.text("alias-recursive", "train_args.comm_round", "train_args:\n  comm_round: &r [*r]\n")
    c.text("problems-many", "train_args.",
           "train_args:\n" + "".join(f"  unknown_{i}: {i}\n" for i in range(5000)))
    c.text("value-huge-string", "train_args.comm_round", "train_args:\n  comm_round: " + "x" * 1_000_000 + "\n")
    c.text("key-huge", "unknown key train_args.", "train_args:\n  ? " + "k" * 1_000_000 + "\n  : 1\n")
    c.text("value-int-5000-digits-file", "5000 digits", "train_args:\n  comm_round: " + "9" * 5000 + "\n")
    c.add("value-int-5000-digits-set", "5000 digits", ["--set", "common_args.random_seed=-" + "9" * 5000])


def _bytes(c: _Cases):
    for n in (1, 64, 4096, 100_000):
        # Random bytes of their own stream, so that adding a config field (more draws above) does not
        # change them; the first byte is not ASCII, so even the 1-byte file is never valid YAML text.
        rng = random.Random(f"{SEED}-binary-{n}")
        c.add(f"binary-random-{n}", "is not UTF-8 text|is a binary file|is UTF-16",
              config=bytes([rng.randrange(0x80, 0x100)] + [rng.getrandbits(8) for _ in range(n - 1)]))
    samples = {
        "nul-in-text": c.base[:40] + b"\0" + c.base[40:],
        "png-header": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64),
        "gzip": b"\x1f\x8b\x08\0\0\0\0\0\0\x03" + bytes(range(200)),
        "elf": b"\x7fELF\x02\x01\x01" + bytes(100),
        "utf16-le-bom": "train_args:\n  comm_round: 3\n".encode("utf-16"),
        "utf16-be": "train_args:\n  comm_round: 3\n".encode("utf-16-be"),
        "utf32": "train_args:\n  comm_round: 3\n".encode("utf-32"),
        "latin1": "common_args:\n  run_id: caf\xe9\n".encode("latin-1"),
        "encoded-surrogate": b"common_args:\n  run_id: a\xed\xa0\x80b\n",
        "overlong-utf8": b"common_args:\n  run_id: a\xc0\xafb\n",
        "truncated-utf8": c.base + "\u00e9".encode()[:1],
    }
    for name, data in samples.items():
        expect = {"utf16-le-bom": "is UTF-16 or UTF-32", "utf32": "is UTF-16 or UTF-32"}.get(
            name, "is a binary file" if b"\0" in data else "is not UTF-8 text")
        c.add(f"binary-{name}", expect, config=data)
    for name, text in {"zero-bytes": "", "space": " ", "newlines": "\n\n\n", "tabs": "\t\n\t\n",
                       "bom-only": "\ufeff", "comment-only": "# train_args:\n#   comm_round: 3\n",
                       "document-marker": "---\n", "document-end": "---\n...\n", "null": "null\n",
                       "tilde": "~\n"}.items():
        c.text(f"empty-{name}", "config/fedml_config.yaml", text)
    c.add("large-10MB+1", "10 MB", size=TEN_MB + 1)
    c.add("large-1GB-sparse", "10 MB", size=2**30)


_ODD_RUN_IDS = {
    "slash": "a/b", "dotdot": "..", "dotdot-slash": "../escape", "leading-dot": ".hidden",
    "dot": ".", "backslash": "a\\b", "absolute": "/tmp/x", "empty": "", "too-long": "r" * 201,
    "very-long": "r" * 100_000, "nul": "run\0id", "newline": "run\nid", "tab": "run\tid",
    "ansi-escape": "\x1b[31mred", "rtl-override": "run\u202eid", "rtl-mark": "run\u200fid",
    "zero-width-space": "run\u200bid", "line-separator": "run\u2028id", "surrogate": "run\udc80id",
    "bom": "\ufeffrun", "bell": "run\x07", "del": "run\x7f", "c1-control": "run\x85id",
}


def _odd_text(c: _Cases):
    for name, run_id in _ODD_RUN_IDS.items():
        via = c.rng.choice(("flag", "flag", "set", "file"))
        if via == "flag":
            c.add(f"runid-{name}-flag", "cannot name files", ["--run_id", run_id])
        elif via == "set" and "\0" not in run_id:
            c.add(f"runid-{name}-set", "cannot name files", ["--set", f"common_args.run_id={flow(run_id)}"])
        else:
            raw = with_value("common_args", "run_id", run_id)
            c.add(f"runid-{name}-file", "cannot name files",
                  config=yaml.safe_dump(raw, sort_keys=False).encode("utf-8", "surrogatepass"))
    for name, dataset in {"zero-width": "synthetic\u200b", "cyrillic": "\u0455ynthetic",
                          "newline": "synthetic\nflamby-mpi: error: injected", "rtl": "\u202esynthetic",
                          "nul": "synth\0etic", "dots": "..", "space": " ", "long": "d" * 100_000,
                          "dotted-long": "d" * 300 + ".x", "surrogate": "syn\udc80thetic"}.items():
        raw = with_value("data_args", "dataset", dataset)
        c.add(f"unicode-dataset-{name}", "unknown dataset|cannot import dataset module",
              config=yaml.safe_dump(raw).encode("utf-8", "surrogatepass"))
    for name, key in {"newline": "comm_round\nflamby-mpi: error: injected", "ansi": "\x1b[2Jcomm_round",
                      "nul": "comm\0round", "fullwidth": "\uff43omm_round", "combining": "c\u0301omm_round"}.items():
        raw = with_value("train_args", key, 3)
        c.add(f"unicode-key-{name}", "unknown key train_args.", config=dump(raw))
    for key in ("output_dir", "data_path", "rendezvous_dir", "secret_file", "gpu_mapping_file"):
        section = next(s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)})
        c.value("unicode-path-nul", section, key, "runs/a\0b",
                expect=f"{section}.{key}: a path cannot contain a NUL character")


def _command_lines(c: _Cases):
    syntax = "expected section.key=value"
    not_yaml = "the value is not valid YAML"
    sets = {
        "no-equals": ("train_args.comm_round", syntax), "no-section": ("comm_round=3", syntax),
        "empty-section": (".comm_round=3", syntax), "empty-key": ("train_args.=3", syntax),
        "only-value": ("=3", syntax), "empty": ("", syntax), "only-equals": ("=", syntax),
        "colon": ("train_args.comm_round: 3", syntax), "unclosed-list": ("train_args.comm_round=[1", not_yaml),
        "unclosed-map": ("train_args.comm_round={", not_yaml), "unclosed-quote": ("train_args.comm_round='3", not_yaml),
        "alias": ("train_args.comm_round=*x", not_yaml),
        "mapping-in-value": ("train_args.comm_round=a: b: c", not_yaml),
        "reserved": ("train_args.comm_round=@x", not_yaml),
        "two-documents": ("train_args.comm_round=3\n---\n4", not_yaml),
        "nul": ("train_args.comm_round=\0", not_yaml), "surrogate": ("train_args.comm_round=\udc80", not_yaml),
        "key-newline": ("train_args.comm\nround=3", "unknown key train_args.'comm\\nround'"),
        "three-parts": ("a.b.c=1", "unknown section 'a'"),
        "double-dot": ("train_args..comm_round=1", "unknown key train_args..comm_round"),
        "upper-section": ("TRAIN_ARGS.comm_round=1", "unknown section 'TRAIN_ARGS'"),
        "double-equals": ("train_args.comm_round==3", "train_args.comm_round: expected an integer or null, got '=3'"),
        "list-value": ("train_args.comm_round=- 1\n- 2", "train_args.comm_round: expected an integer or null"),
    }
    for name, (text, expect) in sets.items():
        c.add(f"set-{name}", expect, ["--set", text])
    ranks = {
        "rank-without-role": (["--rank", "1", "--run_id", "r"], "--role"),
        "role-without-rank-client": (["--role", "client", "--run_id", "r"], "--rank"),
        "role-without-rank-server": (["--role", "server"], "--rank"),
        "rank0-client": (["--rank", "0", "--role", "client", "--run_id", "r"], "--role server"),
        "rank2-server": (["--rank", "2", "--role", "server", "--run_id", "r"], "--role client"),
        "rank-out-of-range": (["--rank", "5", "--role", "client", "--run_id", "r"], "--rank 0..4"),
        "rank-huge": (["--rank", "9" * 40, "--role", "client", "--run_id", "r"], "out of range"),
        "no-run-id": (["--rank", "1", "--role", "client"], "--run_id"),
        "inprocess-with-rank": (["--rank", "0", "--role", "server", "--run_id", "r",
                                 "--set", "comm_args.backend=inprocess"], "inprocess"),
        "bad-run-id-with-rank": (["--rank", "1", "--role", "client", "--run_id", "../r"], "cannot name files"),
    }
    for name, (argv, expect) in ranks.items():
        c.add(f"rank-{name}", expect, argv)
    mpirun = {
        "mismatch": ([("PMI_RANK", "2"), ("PMI_SIZE", "5")], ["--rank", "1", "--role", "client"],
                     "disagrees with the MPI rank 2"),
        "wrong-np": ([("PMI_RANK", "0"), ("PMI_SIZE", "3")], [], "mpirun -np 5"),
        "wrong-np-centres": ([("PMI_RANK", "0"), ("PMI_SIZE", "5")],
                             ["--set", "data_args.synthetic_num_centers=2"], "mpirun -np 3"),
        "role-without-rank": ([("PMI_RANK", "0"), ("PMI_SIZE", "5")], ["--role", "server"], "--rank"),
    }
    for name, (env, argv, expect) in mpirun.items():
        c.add(f"rank-mpirun-{name}", expect, argv, env=tuple(env))
    usage = {
        "unknown-flag": ["--bogus"], "unknown-flag-value": ["--epochs", "3"], "extra-positional": ["extra"],
        "cf-without-value": ["--cf"], "run-id-without-value": ["--run_id"], "set-without-value": ["--set"],
        "rank-without-value": ["--rank"], "rank-not-int": ["--rank", "one", "--role", "client"],
        "rank-float": ["--rank", "1.0", "--role", "client"], "rank-empty": ["--rank", "", "--role", "client"],
        "rank-negative": ["--rank", "-1", "--role", "client", "--run_id", "r"],
        "role-unknown": ["--rank", "1", "--role", "worker"], "role-capital": ["--rank", "1", "--role", "Client"],
        "quiet-with-value": ["--quiet=yes"], "mpirun-flag": ["-np", "5"], "upper-cf": ["--CF", "x.yaml"],
        "em-dash": ["\u2014cf", "x.yaml"],
    }
    for name, argv in usage.items():
        c.add(f"usage-{name}", "error:", argv, usage=True)
    c.add("usage-no-arguments", "--cf", [], cf=False, usage=True)


def _paths(c: _Cases):
    c.add("path-directory", "directory", special="dir")
    c.add("path-fifo", "regular file", special="fifo")
    c.add("path-symlink-loop", "cannot open config file", special="loop")
    c.add("path-dev-null", "regular file", ["--cf", "/dev/null"], cf=False)
    c.add("path-empty", "config file not found: ''", ["--cf", ""], cf=False)
    c.add("path-nul", "cannot open config file", ["--cf", "a\0b.yaml"], cf=False)
    c.add("path-newline", "not found", ["--cf", "no\nflamby-mpi: error: injected.yaml"], cf=False)
    c.add("path-surrogate", "not found", ["--cf", "no-\udc80.yaml"], cf=False)
    c.add("path-too-long", "cannot open config file", ["--cf", "x" * 5000 + ".yaml"], cf=False)


# ---- values that pass the schema and break where they are used (issue 18) -------------------

OUT_PARENT = "{out_parent}"  # in an expect: the directory that holds OUT
FLOAT32_MAX_TEXT = "3.4028234663852886e38"
# What a strategy hyperparameter needs around it to be used at all (another strategy refuses it).
_CONTEXT = {
    "mu": {"federated_optimizer": "FedProx"},
    "server_learning_rate": {"federated_optimizer": "FedAdam"},
    "beta1": {"federated_optimizer": "FedAdam"}, "beta2": {"federated_optimizer": "FedAdam"},
    "tau": {"federated_optimizer": "FedAdam"},
    "num_fine_tuning_steps": {"federated_optimizer": "FedAvgFineTuning"},
    "dp_target_epsilon": {"dp_target_delta": 1e-3, "dp_max_grad_norm": 1.0},
    "dp_target_delta": {"dp_target_epsilon": 5.0, "dp_max_grad_norm": 1.0},
    "dp_max_grad_norm": {"dp_target_epsilon": 5.0, "dp_target_delta": 1e-3},
}
# Keys whose largest allowed value still makes a run of one round that ends (a billion local steps
# or rounds would not end, 1024 DataLoader workers fork 1024 processes, the client counts must be
# the dataset's, differential privacy needs opacus): those get an accepted case that runs.
_RUNS_AT_ITS_LIMIT = {"random_seed", "checkpoint_every", "keep_checkpoints", "preemption_grace_s", "batch_size",
                      "learning_rate", "weight_decay", "mu", "server_learning_rate", "beta1", "beta2", "tau",
                      "test_batch_size", "frequency_of_the_test", "round_timeout_s", "join_timeout_s"}
# Keys whose smallest allowed value runs too (a round timeout of 1 s would end a slow run).
_RUNS_AT_ITS_MINIMUM = {"server_learning_rate", "tau", "preemption_grace_s"}


def _kind(key: str, f: dataclasses.Field, tp) -> str:
    from flamby_mpi.config import FLOAT32_MAX

    special = {"random_seed": "seed", "beta1": "decay", "beta2": "decay", "tau": "tau",
               "dp_target_delta": "probability"}
    if key in special:
        return special[key]
    if tp is int:
        return "count"
    return "float32" if f.metadata.get("maximum") == FLOAT32_MAX else "limit"


def _pack_jobs(c: _Cases, accepted: List[Tuple[int, Optional[str], set]]):
    """Accepted cases -> as few MPI jobs as can hold them: a case joins the first job of its
    strategy (any, if it needs none) that sets none of its keys."""
    jobs: List[Tuple[Optional[str], set]] = []  # (strategy, keys set)
    for index, strategy, keys in sorted(accepted, key=lambda a: a[1] is None):  # strategies first
        n = next((n for n, (job_strategy, job_keys) in enumerate(jobs)
                  if strategy in (None, job_strategy) and not keys & job_keys), None)
        if n is None:
            n = len(jobs)
            jobs.append((strategy, set(keys)))
        else:
            jobs[n][1].update(keys)
        c.cases[index] = dataclasses.replace(c.cases[index], job=f"{jobs[n][0] or 'FedAvg'}-{n + 1}")


def _boundaries(c: _Cases):
    """For every bounded key: just past each bound and far past it (refused, naming the key and
    the range), and the last value allowed (accepted), in the file or with --set; then the values
    the issue names, combinations, output directories and run ids in bytes."""
    from flamby_mpi.config import bounds_text

    accepted: List[Tuple[int, Optional[str], set]] = []  # (case index, strategy, keys it sets)

    def accept(strategy: Optional[str], keys):
        c.cases[-1] = dataclasses.replace(c.cases[-1], accepted=True)
        accepted.append((len(c.cases) - 1, strategy, set(keys)))

    fields = {f.name: (section, f, tp) for section, f, tp in _fields()}

    made = set()

    def case(prefix: str, key: str, value, ok: bool):
        section, f, tp = fields[key]
        value = float(value) if tp is float else value
        if (key, value) in made:
            return  # the same boundary twice (a named value that is also a generated one)
        made.add((key, value))
        via = c.rng.choice(("file", "set"))
        id = f"{prefix}-{section}.{key}={value!r}-{via}"
        context = _CONTEXT.get(key, {})
        expect = "" if ok else f"{section}.{key}: must be in {bounds_text(f.metadata)}, got "
        if via == "file":
            raw = with_value(section, key, value)
            raw.setdefault("train_args", {}).update(context)
            c.add(id, expect, config=dump(raw))
        else:
            sets = [f"train_args.{k}={flow(v)}" for k, v in context.items()] + [f"{section}.{key}={flow(value)}"]
            c.add(id, expect, [a for one in sets for a in ("--set", one)])
        if ok:
            accept(context.get("federated_optimizer"), [key, *(k for k in context if k != "federated_optimizer")])

    for key, (_section, f, tp) in fields.items():
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if low is None and high is None or typing.get_origin(tp) is list:  # a list's items: _out_of_range
            continue
        kind = _kind(key, f, tp)
        refused, allowed = [], []
        if high is not None:
            if tp is int:
                refused += [high + 1, high + c.rng.randint(2, 10**c.rng.randint(1, 25))]
                allowed.append(high)
            else:
                past = high if f.metadata.get("below") else math.nextafter(high, math.inf)
                refused += [past, high * 10 ** c.rng.uniform(0.01, 300 - math.log10(high))]
                allowed.append(math.nextafter(high, 0.0) if f.metadata.get("below") else high)
        if low is not None and f.metadata.get("above"):  # the minimum itself is refused
            refused.append(low)
            allowed.append(math.nextafter(low, math.inf))
        elif low is not None and tp is float and low > 0:  # tau: below the smallest float32 is 0 there
            refused.append(c.rng.uniform(0.0, low))
            allowed.append(low)
        for value in refused:
            case(f"use-{kind}", key, value, ok=False)
        for value in allowed:
            if key in (_RUNS_AT_ITS_LIMIT if value == allowed[0] and high is not None else _RUNS_AT_ITS_MINIMUM):
                case(f"ok-{kind}", key, value, ok=True)

    # The values the issue names, and boundaries a user would type.
    for key, value, ok in (("random_seed", 2**64, False), ("random_seed", 2**63, False),
                           ("random_seed", 2**63 - 1, True), ("batch_size", 10**19, False),
                           ("learning_rate", 1e39, False), ("learning_rate", 3.5e38, False),
                           ("learning_rate", 3.4e38, True), ("weight_decay", 1e300, False), ("mu", 1e300, False),
                           ("server_learning_rate", 1e300, False), ("beta1", 5, False), ("beta1", 1.0, False),
                           ("beta1", 0.999999, True), ("beta2", 0.0, True), ("tau", 0.0, False),
                           ("server_learning_rate", 0.0, False)):
        section, f, tp = fields[key]
        case(f"{'ok' if ok else 'use'}-{_kind(key, f, tp)}", key, value, ok)

    # Allowed alone, refused where they are used together: Adam divides its learning rate by
    # 1 - beta1 in its first step; Scaffold divides by server_learning_rate * learning_rate * steps.
    for optimizer in ("adam", "adamw", "torch.optim.Adamax"):
        c.add(f"use-optimizer-{optimizer}-learning_rate=3.4e38", "train_args.learning_rate: 3.4e+38 overflows float32",
              ["--set", f"train_args.client_optimizer={optimizer}", "--set", "train_args.learning_rate=3.4e38"])
    scaffold = ["--set", "train_args.federated_optimizer=Scaffold"]
    c.add("use-scaffold-learning_rate=0", "train_args.learning_rate: Scaffold divides",
          scaffold + ["--set", "train_args.learning_rate=0"])
    c.add("use-scaffold-product-underflows", "train_args.learning_rate: Scaffold divides",
          scaffold + ["--set", "train_args.learning_rate=1e-30", "--set", "train_args.server_learning_rate=1e-30"])
    c.add("ok-scaffold-float32-max", "", scaffold + ["--set", f"train_args.learning_rate={FLOAT32_MAX_TEXT}",
                                                     "--set", f"train_args.server_learning_rate={FLOAT32_MAX_TEXT}"])
    accept("Scaffold", ["learning_rate", "server_learning_rate"])

    # The output directory: a file, inside a file, where this user cannot create it; and `~`.
    key = "common_args.output_dir"
    for plant, expect in (("file", f"{key}: {OUT} is a file, not a directory"),
                          ("under-file", f"{key}: {OUT} cannot be made: {OUT_PARENT} is a file, not a directory"),
                          ("unwritable", f"{key}: {OUT} cannot be made: {OUT_PARENT} is not writable by you")):
        c.add(f"use-outdir-{plant}", expect, ["--set", f"{key}={OUT}"], plant=plant)
    c.add("use-outdir-runs-file", f"{key} (default runs/<run_id>): runs/r1 cannot be made: ", ["--run_id", "r1"],
          plant="runs-file")
    c.add("use-outdir-runs-file-no-run-id", f"{key} (default runs/<run_id>): runs is a file, not a directory",
          plant="runs-file")
    c.add("ok-outdir-tilde", "", ["--set", f"{key}=~/flamby-run"])
    accept(None, ["output_dir"])

    # Run ids counted in bytes: 'é' is 2 bytes in UTF-8; 216 bytes is the most (config.max_run_id_bytes).
    for n, ok in ((130, False), (109, False), (108, True)):
        run_id = "\u00e9" * n
        via = c.rng.choice(("flag", "set", "file"))
        id, expect = f"{'ok' if ok else 'use'}-runid-bytes-{n}e-{via}", "" if ok else f"it is {2 * n} bytes"
        if via == "flag":
            c.add(id, expect, ["--run_id", run_id])
        elif via == "set":
            c.add(id, expect, ["--set", f"common_args.run_id={run_id}"])
        else:
            c.add(id, expect, config=yaml.safe_dump(with_value("common_args", "run_id", run_id),
                                                    allow_unicode=True).encode())
        if ok:
            accept(None, ["run_id", "output_dir"])  # not with output_dir: runs/<run_id> is what it names
    _pack_jobs(c, accepted)


def generate() -> List[Case]:
    c = _Cases()
    for part in (_wrong_types, _out_of_range, _sections, _yaml, _bytes, _odd_text, _command_lines, _paths,
                 _boundaries):
        part(c)
    ids = [case.id for case in c.cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, duplicates
    return c.cases
