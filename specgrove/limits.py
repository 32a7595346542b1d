"""Request and transport limits of a serving process, in one frozen value with safe defaults.

Each limit is enforced in exactly one place (named below) and refused with a precise status
naming the field and the limit. The CLI's serving commands read flags / ``SPECGROVE_*``
variables once and pass a ``Limits`` down; nothing reads the environment here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 16 * 1024 * 1024  # every gRPC server and channel, both ways: RESOURCE_EXHAUSTED
    max_prompt_tokens: int = 8192  # prompt ids (codec.call_from_pb; text: the context check): OUT_OF_RANGE
    max_stop_strings: int = 16  # SamplingParams.check_limits: OUT_OF_RANGE
    max_stop_string_chars: int = 256  # each stop string, SamplingParams.check_limits: OUT_OF_RANGE
    max_streams_per_client: int = 32  # open Generate streams per bearer token (else peer host): RESOURCE_EXHAUSTED

    ENV: ClassVar[dict[str, str]] = {"max_message_bytes": "SPECGROVE_MAX_MESSAGE_BYTES", "max_prompt_tokens": "SPECGROVE_MAX_PROMPT_TOKENS",
           "max_stop_strings": "SPECGROVE_MAX_STOP_STRINGS", "max_stop_string_chars": "SPECGROVE_MAX_STOP_STRING_CHARS",
           "max_streams_per_client": "SPECGROVE_MAX_STREAMS_PER_CLIENT"}  # the CLI's variables, one per field

    def grpc_options(self) -> list[tuple[str, int]]:
        """The message-size options for a gRPC server or channel."""
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes)]

    @classmethod
    def from_values(cls, flags: Mapping[str, int | None], environ: Mapping[str, str]) -> "Limits":
        """A flag wins over its variable (``ENV``), which wins over the default; each must be >= 1."""
        values = {}
        for name, variable in cls.ENV.items():
            value = flags.get(name)
            if value is None and environ.get(variable):
                value = int(environ[variable])
            if value is not None:
                if value < 1:
                    raise ValueError(f"{name} ({variable}) must be >= 1, got {value}")
                values[name] = value
        return cls(**values)


DEFAULT_LIMITS = Limits()
