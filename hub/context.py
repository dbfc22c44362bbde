"""A hub home opened for one command or request: its paths, one database engine, and the zoo's
registry and the fleet store on that engine, closed together.

    with HubContext.open(home) as hub:
        hub.fleet.status_rows(...)
        hub.registry.variants("m")
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine

from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.zoo.db import make_engine
from edgehub.zoo.registry import Registry


class HubContext:
    def __init__(self, paths: HubPaths):
        self.paths = paths

    @classmethod
    def open(cls, home: Path | str | None = None) -> HubContext:
        return cls(HubPaths.from_home(home))

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.paths.db_url)

    @cached_property
    def registry(self) -> Registry:
        return Registry(engine=self.engine)

    @cached_property
    def fleet(self) -> FleetStore:
        return FleetStore(engine=self.engine)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> HubContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
