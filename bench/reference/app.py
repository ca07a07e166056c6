"""The seed article's FastAPI design, rebuilt as one small app for the benchmark.

Every route is the article's own code, made runnable and configurable:

- ``GET /test``: the load-balancing hello world (the article runs several
  instances of this app behind nginx; see ``nginx.conf.template``).
- ``GET /items/{item_id}``: async SQL with the ``databases`` package over
  aiosqlite, the article's exact query.
- ``GET /cached-data?key=K``: async Redis. The article uses ``aioredis``, which
  was merged into redis-py as ``redis.asyncio``; the call is the same.
- ``GET /increment``: a module-level ``asyncio.Lock`` guarding a global counter.
  The lock only orders coroutines of one process, so every uvicorn instance
  keeps its own ``shared_resource`` and two instances disagree.
- ``GET /run-blocking-task?ms=N``: a blocking ``time.sleep`` moved to a
  ``ThreadPoolExecutor(max_workers=10)`` with ``run_in_executor``. The article
  sleeps 5 s; ``ms`` (default 5000) makes that adjustable.

Left out: the article's Celery ``/start-task`` (no broker is run for the
benchmark) and ``/call-another-service`` (it calls an external host).

The article's ``@app.on_event("startup"/"shutdown")`` hooks are written as a
``lifespan`` handler, their current (non-deprecated) form; they do the same.

Configuration (environment):
  REF_DB_PATH       SQLite file with the ``items`` table (see seed_db.py); default ./test.db
  REF_REDIS_URL     default redis://127.0.0.1:6379/0
  REF_REDIS_PREFIX  prefix added to every key read by /cached-data; default "ref:"
"""

import asyncio
import concurrent.futures
import os
import time
from contextlib import asynccontextmanager

import databases
import redis.asyncio as aioredis
from fastapi import FastAPI
from starlette.responses import JSONResponse

DATABASE_URL = "sqlite+aiosqlite:///" + os.environ.get("REF_DB_PATH", "./test.db")
REDIS_URL = os.environ.get("REF_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = os.environ.get("REF_REDIS_PREFIX", "ref:")

database = databases.Database(DATABASE_URL)
redis = aioredis.from_url(REDIS_URL, encoding="utf-8", decode_responses=True)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    await database.connect()
    try:
        yield
    finally:
        await database.disconnect()
        await redis.aclose()


app = FastAPI(lifespan=lifespan)


# 1.1 Load balancing: the hello world served by every instance.
@app.get("/test")
async def test_endpoint():
    return JSONResponse(content={"message": "Hello, load balanced world!"})


# 2.1 Asynchronous database access.
@app.get("/items/{item_id}")
async def read_item(item_id: int):
    query = "SELECT * FROM items WHERE id = :item_id"
    result = await database.fetch_one(query, values={"item_id": item_id})
    return {"item": result}


# 1.2 Hot data in Redis.
@app.get("/cached-data")
async def get_cached_data(key: str):
    cached_value = await redis.get(REDIS_PREFIX + key)
    if cached_value:
        return {"data": cached_value}
    return {"error": "Data not found in cache."}


# 4.1 A shared resource behind an asyncio lock (per process).
lock = asyncio.Lock()
shared_resource = 0


@app.get("/increment")
async def increment_resource():
    global shared_resource
    async with lock:
        shared_resource += 1
    return {"shared_resource": shared_resource}


# 4.2 Blocking work on a thread pool.
executor = concurrent.futures.ThreadPoolExecutor(max_workers=10)


def blocking_io_task(ms: int) -> str:
    time.sleep(ms / 1000)
    return "Task complete!"


@app.get("/run-blocking-task")
async def run_blocking_task(ms: int = 5000):
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(executor, blocking_io_task, ms)
    return {"result": result}
