"""Which config machinery serves sigma-ray best: the same bad inputs through sigma-ray's own ``from_dict``,
pydantic (a ``TypeAdapter`` over the same frozen dataclasses) and OmegaConf (a structured config of them).

    python experiments/compare_config_libraries.py        # needs `pip install omegaconf` (pydantic comes with Ray)

Prints, for each case, the first line of each library's error ("accepted" when it lets the input through).
docs/guide/config.md holds one run and the decision drawn from it.
"""
from __future__ import annotations

import dataclasses
import typing

import pydantic

try:
    from omegaconf import OmegaConf
except ImportError:
    raise SystemExit("compare_config_libraries.py needs OmegaConf, which sigma-ray does not use: pip install omegaconf")

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict
from sigma_ray.train.config import PretrainConfig

CASES = {
    "misspelt key": {"train": {"base_lrr": 1e-3}},
    "wrong type": {"train": {"epochs": "many"}},
    "out of range": {"train": {"num_workers": 0}},
    "not a choice": {"train": {"precision": "fp8"}},
    "tuple too short": {"train": {"betas": [0.9]}},
    "misspelt nested key": {"data": {"mask": {"ratoi": 0.9}}},
    "data and model disagree": {"data": {"num_frames": 8}},
}


def sigma_ray_error(raw: dict) -> str:
    try:
        from_dict(PretrainConfig, raw)
    except ConfigError as e:
        return str(e).split("; allowed:")[0]
    return "accepted"


def forbid_extra_keys(cls: type) -> None:
    """Give ``cls`` and every dataclass inside it pydantic's ``extra="forbid"`` (what adopting it would mean: one
    such line per config class; pydantic ignores unknown keys of a stdlib dataclass otherwise)."""
    cls.__pydantic_config__ = pydantic.ConfigDict(extra="forbid")
    for f in dataclasses.fields(cls):
        for inner in (f.type, *typing.get_args(f.type)):
            if dataclasses.is_dataclass(inner):
                forbid_extra_keys(inner)


def pydantic_error(raw: dict) -> str:
    forbid_extra_keys(PretrainConfig)
    adapter = pydantic.TypeAdapter(PretrainConfig)
    try:
        adapter.validate_python(raw)
    except pydantic.ValidationError as e:
        field, message = str(e).splitlines()[1:3]
        return f"{field}: {message.strip().split(' [type=')[0]}"
    return "accepted"


def omegaconf_error(raw: dict) -> str:
    try:
        OmegaConf.merge(OmegaConf.structured(PretrainConfig), raw)
    except Exception as e:   # noqa: BLE001 - OmegaConf raises its own error classes
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return "accepted"


def main() -> None:
    print("| case | sigma-ray | pydantic | OmegaConf |\n| --- | --- | --- | --- |")
    for name, raw in CASES.items():
        cells = [f(raw).replace("|", "/") for f in (sigma_ray_error, pydantic_error, omegaconf_error)]
        print(f"| {name} `{raw}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
