"""Configuration dataclasses as command-line options: each setting is declared once, as a field.

A config marks its user-facing fields with `option(default, help)`; `add_options` derives argparse
options from them (flag `--iou-threshold` from field `iou_threshold`, type and default from the
field), and `get_options` reads them back. Checking stays in the dataclass's `__post_init__`, so a
command and a Python caller get the same error for the same bad value; a message names the field
(`max_slices`), and `get_options` shows it as the flag the user typed (`--max-slices`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .errors import InputError


def option(default: Any, help: str, *, choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None):
    """A dataclass field that is also a command-line option."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


def get_option_fields(config_class) -> List[dataclasses.Field]:
    """The fields of `config_class` declared with `option`, in declaration order."""
    return [field for field in dataclasses.fields(config_class) if "help" in field.metadata]


def get_flag(field: dataclasses.Field, prefix: str = "") -> str:
    return "--" + prefix + field.name.replace("_", "-")


def get_value_type(config_class, field: dataclasses.Field):
    """(element type, number of values) of a field: Optional[int] -> (int, None), Tuple[int, int] -> (int, 2)."""
    annotation = typing.get_type_hints(config_class)[field.name]
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        annotation = arguments[0]
        arguments = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        return arguments[0], len(arguments)
    return annotation, None


def add_options(parser: argparse.ArgumentParser, config_class, *, prefix: str = "",
                exclude: Iterable[str] = ()) -> None:
    """Add one option per `option` field of `config_class`; defaults are the dataclass's own."""
    excluded = set(exclude)
    for field in get_option_fields(config_class):
        if field.name in excluded:
            continue
        value_type, count = get_value_type(config_class, field)
        # argparse shows a flag's own default; an empty default, or one the help names, is not repeated
        shown = field.default not in (None, "") and value_type is not bool and "(default:" not in field.metadata["help"]
        help_text = field.metadata["help"] + (f" (default: {field.default})" if shown else "")
        kwargs: Dict[str, Any] = {"dest": prefix.replace("-", "_") + field.name, "default": field.default,
                                  "help": help_text}
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=value_type, nargs=count, choices=field.metadata["choices"],
                          metavar=field.metadata["metavar"])
        parser.add_argument(get_flag(field, prefix), **kwargs)


def get_options(args: argparse.Namespace, config_class, *, prefix: str = "", **overrides):
    """The `config_class` instance the parsed `args` describe (fields `add_options` did not add keep defaults)."""
    values = {}
    for field in get_option_fields(config_class):
        value = getattr(args, prefix.replace("-", "_") + field.name, field.default)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    try:
        return config_class(**values)
    except InputError as error:
        raise InputError(_name_flags(str(error), config_class, prefix)) from None


def _name_flags(message: str, config_class, prefix: str) -> str:
    """The message with each option field's Python name (those with an underscore: plain words such as
    `mode` stay words) written as its flag, `max_slices -1` -> `--max-slices -1`."""
    for field in get_option_fields(config_class):
        if "_" in field.name:
            message = re.sub(rf"(?<![\w-]){field.name}(?!\w)", get_flag(field, prefix), message)
    return message
