"""An ASGI service (Starlette on uvicorn) whose handler forks three kinds of call at once.

``GET /recommend?user=7`` needs three things, and forks all three before awaiting any:

- the user's profile, from a profile service over HTTP (an ``async def`` call: it runs as
  a task on uvicorn's event loop; the "remote" service is another route of this same app,
  reached over loopback, answering after 0.2 s);
- the user's purchase history, from a blocking database driver (a sync call that sleeps
  0.2 s: it runs in a worker thread, so the event loop stays free);
- a ranking of the catalogue by a small MLP (a ``torch.nn.Module`` call under
  ``torch.inference_mode()``: it runs in a worker thread too, and torch releases the GIL).

The JSON answer has the three results and, for each call, when it started and ended
(seconds since the request arrived, measured inside the call), so you can see that they
ran at the same time: the request takes about 0.2 s, not the sum of its calls.

    python examples/async_service.py              # http://127.0.0.1:8000
    python examples/async_service.py --port 0     # any free port; uvicorn logs which
    curl 'http://127.0.0.1:8000/recommend?user=7'

Stop it with Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Generic, TypedDict, TypeVar

import anyio
import httpx
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from torch import Tensor, nn

from forkwait import fork

LATENCY = 0.2  # seconds, of the profile service and of the database
ITEMS = 16384  # catalogue size: ranking it takes the MLP about 0.05-0.1 s
FEATURES = 16
TOP = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A call's value, and when the call ran: seconds since the request arrived."""

    value: T
    start: float
    end: float

    def span(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end}


def since(arrival: float) -> float:
    return round(time.perf_counter() - arrival, 4)


# The three calls the handler forks.


async def fetch_profile(
    client: httpx.AsyncClient, url: str, arrival: float
) -> Timed[dict[str, object]]:
    """Async I/O: an HTTP request to the profile service. Runs as a task on the loop."""
    start = since(arrival)
    response = await client.get(url)
    response.raise_for_status()
    user_profile: dict[str, object] = response.json()
    return Timed(user_profile, start, since(arrival))


def load_history(user: int, arrival: float) -> Timed[list[int]]:
    """A blocking call, as a sync database driver makes (psycopg, sqlite3, a file read).
    Runs in a worker thread."""
    start = since(arrival)
    time.sleep(LATENCY)  # the query's round trip
    purchases = [user * 10 + k for k in range(3)]  # a fake table: the items the user bought
    return Timed(purchases, start, since(arrival))


class Scored(TypedDict):
    item: int
    score: float


@dataclass(frozen=True)
class Recommender:
    """A small MLP that scores (item features, user features) pairs, and the catalogue."""

    model: nn.Module
    catalogue: Tensor  # ITEMS x FEATURES


def make_recommender() -> Recommender:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(2 * FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )
    return Recommender(model.eval(), torch.randn(ITEMS, FEATURES))


def rank(recommender: Recommender, user: int) -> list[Scored]:
    """The TOP items for ``user``, best first."""
    user_features = torch.randn(FEATURES, generator=torch.Generator().manual_seed(user))
    pairs = torch.cat([recommender.catalogue, user_features.expand(ITEMS, FEATURES)], dim=1)
    scores = recommender.model(pairs).squeeze(1)
    best = torch.topk(scores, TOP)
    return [
        Scored(item=int(item), score=round(float(score), 4))
        for score, item in zip(best.values, best.indices, strict=True)
    ]


def rank_items(recommender: Recommender, user: int, arrival: float) -> Timed[list[Scored]]:
    """A torch.nn.Module call. Runs in a worker thread, in the forking code's
    inference mode (as with torch.jit.fork)."""
    start = since(arrival)
    top = rank(recommender, user)
    return Timed(top, start, since(arrival))


# The app.


async def recommend(request: Request) -> JSONResponse:
    text = request.query_params.get("user", "")
    if not (text.isascii() and text.isdigit() and len(text) < 10):
        return JSONResponse({"error": "pass a user id of up to 9 digits: ?user=7"}, 400)
    user = int(text)
    client: httpx.AsyncClient = request.state.client
    recommender: Recommender = request.state.recommender
    arrival = time.perf_counter()

    with torch.inference_mode():  # forks carry it into their worker threads
        url = str(request.url_for("profile", user=user))
        profile_fut = fork(fetch_profile, client, url, arrival)
        history_fut = fork(load_history, user, arrival)
        ranking_fut = fork(rank_items, recommender, user, arrival)
    # All three are running now: awaiting them in turn takes as long as the slowest.
    profile, history, ranking = await profile_fut, await history_fut, await ranking_fut

    return JSONResponse(
        {
            "user": user,
            "profile": profile.value,
            "history": history.value,
            "top_items": ranking.value,
            "calls": {
                "profile": profile.span(),
                "history": history.span(),
                "ranking": ranking.span(),
            },
            "elapsed": since(arrival),
        }
    )


async def profile_service(request: Request) -> JSONResponse:
    """Stands for a remote profile service: it answers after LATENCY seconds."""
    user: int = request.path_params["user"]
    await anyio.sleep(LATENCY)
    return JSONResponse({"user": user, "name": f"user {user}"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncGenerator[dict[str, object]]:
    """One HTTP client and one model for the app's lifetime (as request.state.*)."""
    # Requests run models at the same time, one per core: one intra-op thread each.
    torch.set_num_threads(1)
    # trust_env=False: the profile service is on loopback; never go through a proxy.
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield {"client": client, "recommender": make_recommender()}


app = Starlette(
    routes=[
        Route("/recommend", recommend),
        Route("/profiles/{user:int}", profile_service, name="profile"),
    ],
    lifespan=lifespan,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the example app with uvicorn.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    # uvicorn runs the app on uvloop where it is installed; forkwait forks onto that loop.
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
