"""``twistd txvoice``: command-line options and the service they make."""

from __future__ import annotations

import os
from dataclasses import fields

from twisted.application.service import IService
from twisted.python import usage

from txvoice.config import VoiceConfig, config_table, parse_value, set_current_config
from txvoice.service.processes import worker_index
from txvoice.service.voice import makeVoiceService

_FIELDS = {f.name: f for f in fields(VoiceConfig)}


class Options(usage.Options):
    """Every VoiceConfig field as an option; ``TXVOICE_*`` variables fill what is not given."""

    synopsis = "[options]"
    longdesc = "Run a txvoice real-time voice WebSocket server. Settings: --option, TXVOICE_OPTION, or the default."

    optParameters = [
        [f.name.replace("_", "-"), f.metadata.get("short"), None, f"{f.metadata['help']} [default: {f.default}]"]
        for f in fields(VoiceConfig)
        if not isinstance(f.default, bool)
    ]
    optFlags = [
        flag
        for f in fields(VoiceConfig)
        if isinstance(f.default, bool)
        for flag in (
            [f.name.replace("_", "-"), None, f.metadata["help"]],
            ["no-" + f.name.replace("_", "-"), None, f"Turn off --{f.name.replace('_', '-')}."],
        )
    ]

    optParameters.append(["config", "c", None, "TOML file of settings (also TXVOICE_CONFIG); options and TXVOICE_* variables override it."])

    def opt_settings_table(self) -> None:
        """Print the table of every setting (Markdown) and exit."""
        print(config_table(), end="")
        raise SystemExit(0)

    def postOptions(self) -> None:
        changes = {}
        for name, f in _FIELDS.items():
            key = name.replace("_", "-")
            if isinstance(f.default, bool):
                if self.get(key):
                    changes[name] = True
                elif self.get("no-" + key):
                    changes[name] = False
            elif self.get(key) is not None:
                try:
                    changes[name] = parse_value(f, self[key])
                except ValueError as e:
                    raise usage.UsageError(str(e)) from None
        try:
            path = self.get("config") or os.environ.get("TXVOICE_CONFIG")
            base = VoiceConfig.from_file(path) if path else None
            self.config = VoiceConfig.from_env(base=base).updated(**changes)
        except (ValueError, OSError) as e:
            raise usage.UsageError(str(e)) from None
        if self.config.log_format not in ("text", "json"):
            raise usage.UsageError("--log-format must be 'text' or 'json'")
        set_current_config(self.config)


def makeService(options: Options) -> IService:
    try:
        return makeVoiceService(options.config, worker=worker_index())
    except (usage.UsageError, ValueError) as e:
        # twistd builds the service after parsing: report a bad setting (an unknown engine name,
        # auth without keys) as a usage error, not a traceback.
        raise SystemExit(f"txvoice: {e}") from None
