import sys, time, threading
import torch
torch.set_num_interop_threads(1)
import trio, anyio
import forkwait
from forkwait import fork, wait

class Tree(torch.nn.Module):
    def __init__(self, d): super().__init__(); self.d = d
    def forward(self, x):
        if self.d == 0: return 1
        async def via(c):
            await trio.sleep(0) if sys.argv[1] == "trio" else None
            return await fork(c, x)
        a = fork(via, Tree(self.d - 1))
        b = fork(Tree(self.d - 1), x)
        return 1 + wait(a) + wait(b)

async def main():
    r = [await fork(Tree(5), torch.zeros(1)) for _ in range(2)]
    r.append(await anyio.to_thread.run_sync(lambda: wait(fork(Tree(5), torch.zeros(1)))))
    async with forkwait.scope():
        fs = [fork(Tree(4), torch.zeros(1)) for _ in range(3)]
    r += [f.result() for f in fs]
    return r
t = time.time()
if sys.argv[1] == "trio":
    print(trio.run(main), f"{time.time()-t:.2f}s")
else:
    print(anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True}), f"{time.time()-t:.2f}s")
