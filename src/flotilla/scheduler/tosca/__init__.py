"""TOSCA ingest: parse templates offline and derive what each node needs from a site.

Use ``TemplateParser`` from async code::

    async with TemplateParser() as parser:
        requirements = await parser.requirements(text, {"num_cpus": 4})

Imports resolve only from the type library shipped in ``types/``; nothing is fetched.
"""

from flotilla.scheduler.tosca.error import TemplateError, TemplateProblem
from flotilla.scheduler.tosca.extraction import derive, kind_of
from flotilla.scheduler.tosca.library import TypeLibrary
from flotilla.scheduler.tosca.parser import (
    ParserClosedError,
    ParserState,
    ParserStats,
    ParserUnavailableError,
    TemplateParser,
)
from flotilla.scheduler.tosca.requirement import (
    NodeRequirements,
    OsImage,
    Placement,
    PortRange,
    TemplateRequirements,
    VolumeAttachment,
)
from flotilla.scheduler.tosca.topology import Topology

__all__ = [
    "NodeRequirements",
    "OsImage",
    "ParserClosedError",
    "ParserState",
    "ParserStats",
    "ParserUnavailableError",
    "Placement",
    "PortRange",
    "TemplateError",
    "TemplateParser",
    "TemplateProblem",
    "TemplateRequirements",
    "Topology",
    "TypeLibrary",
    "VolumeAttachment",
    "derive",
    "kind_of",
]
