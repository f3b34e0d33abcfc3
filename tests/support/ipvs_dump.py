"""Print the kernel's IPVS table as JSON, read over netlink by lvscare's own IPVS layer."""

import asyncio
import json

from lvscare.ipvs import IPVS


async def main() -> None:
    async with IPVS() as ipvs:
        table = await ipvs.read_all()
    out = {}
    for key, state in table.items():
        out[str(key.endpoint)] = {
            "scheduler": state.service.scheduler,
            "dests": {str(e): {"weight": d.weight, "fwd": d.fwd_method}
                      for e, d in state.dests.items()},
        }
    print(json.dumps(out))


asyncio.run(main())
