"""Continual-learning strategies: one file each, a config dataclass plus a class of hooks plus `@register`.

Every module of this package is imported (and so registered) when the package is: a new strategy is one new
file here plus one YAML in conf/strategy/, with no edit to any other file. A strategy living outside this package
is loaded by naming its module in the YAML (`module: my_pkg.my_strategy`); see docs/adding_a_strategy.md.
"""
import importlib
import pkgutil

from strategies.base import Hooks, LoraSettings, OptionError, Strategy, build, register, registered  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
