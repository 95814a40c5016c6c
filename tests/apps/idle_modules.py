"""Run a manager as ``aeterna start`` does, and report what an idle one has imported.

    python idle_modules.py UNITS_DIR CONTROL_PATH OUT_FILE

Once every unit is up and the loop has gone idle, the names in sys.modules go
to OUT_FILE, one a line, and the manager stops itself.
"""

from __future__ import annotations

import asyncio
import os
import sys

sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # as aeterna.cli does

from aeterna.api.surfaces import Surfaces  # noqa: E402
from aeterna.loader import load_paths  # noqa: E402
from aeterna.log import Log  # noqa: E402
from aeterna.manager.manager import Manager  # noqa: E402


async def main(units: str, control: str, out: str) -> int:
    manager = Manager([units], load_paths([units]), Log(), runtime_dir=os.path.dirname(control))
    manager.surfaces = Surfaces(manager, control)

    async def report() -> None:
        for _ in range(200):  # bounded: 10 s
            if manager.units and all(u.state.value == "active" for u in manager.units.values()):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        with open(out, "w") as f:
            f.write("\n".join(sorted(sys.modules)) + "\n")
        manager.shutdown()

    task = asyncio.ensure_future(report())
    code = await manager.run()
    await task
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
