"""SimServer (async and threaded context managers) and ``serve``, the CLI's entry point."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

from aiohttp import web

from .app import SIM_KEY, Simulator, create_app
from .config import SimConfig
from .tenant import Tenant

__all__ = ["SimServer", "serve"]

# In-flight requests get this long to finish when the server stops.
_SHUTDOWN_TIMEOUT = 2.0


class SimServer:
    """``async with SimServer(cfg) as sim:`` serves on ``sim.url`` until the block ends."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._runner: web.AppRunner | None = None
        self._simulator: Simulator | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def simulator(self) -> Simulator:
        if self._simulator is None:
            raise RuntimeError("the simulator is not running")
        return self._simulator

    @property
    def state(self) -> Tenant:
        """The in-memory tenant, for in-process assertions."""
        return self.simulator.tenant

    async def start(self) -> None:
        app = create_app(self.config)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._runner, self._simulator = runner, app[SIM_KEY]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop serving; the application's cleanup saves the state file when configured."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, config: SimConfig | None = None) -> Iterator[SimServer]:
        """Run on a private event loop in a daemon thread; yields the started server."""
        server = cls(config)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:
                failure.append(exc)
                loop.close()
                return
            finally:
                ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(server.stop())
            except BaseException as exc:
                failure.append(exc)
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="bulkcred-sim", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        try:
            yield server
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
        if failure:
            raise failure[0]  # stopping (saving the state file) failed


async def serve(config: SimConfig, announce: Callable[[str], object]) -> None:
    """Serve until cancelled, SIGINT or SIGTERM; ``announce(url)`` once listening.

    The state file, when configured, is saved on the way out in every case.
    """
    async with SimServer(config) as sim:
        announced = announce(sim.url)
        if inspect.isawaitable(announced):
            await announced
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or a platform without signal handlers
            installed.append(signum)
        try:
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
