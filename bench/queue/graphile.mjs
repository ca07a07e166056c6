// graphile-worker (0.17.3, npm) driven the way bench/run.py's queue group
// drives the tasks service: no-op jobs on the same PostgreSQL, one command
// per measurement, one JSON line of results on stdout.
//
//   node graphile.mjs migrate       --url URL --schema S
//   node graphile.mjs submit-single --url URL --schema S --seconds N --clients C
//   node graphile.mjs submit-batch  --url URL --schema S --seconds N --clients C --batch B
//   node graphile.mjs enqueue       --url URL --schema S --n N --batch B
//   node graphile.mjs drain         --url URL --schema S --n N --concurrency W [--batching]
//   node graphile.mjs latency       --url URL --schema S --n N --gap-ms G --concurrency W [--batching]
//
// Every command is bounded in count or time; the database is the only
// thing it talks to.
import { readFileSync } from "node:fs";
import { Logger, makeWorkerUtils, run } from "graphile-worker";
import pg from "pg";

const argv = process.argv.slice(2);
const command = argv[0];
const opt = (name, fallback) => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  return argv[i + 1];
};
const flag = (name) => argv.includes(`--${name}`);
const url = opt("url");
const schema = opt("schema");
const num = (name, fallback) => Number(opt(name, fallback));

// The batching options of graphile-worker's performance guide: jobs fetched
// into a local queue of 500, completions and failures batched.
const batchingPreset = {
  worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 },
};

const peakRssKib = () => {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) : 0;
};

const out = (result) => process.stdout.write(JSON.stringify(result) + "\n");

async function utils() {
  const u = await makeWorkerUtils({ connectionString: url, schema });
  await u.migrate();
  return u;
}

async function submitFor(seconds, clients, each) {
  const u = await utils();
  const end = Date.now() + seconds * 1000;
  let tasks = 0;
  let errors = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (Date.now() < end) {
        try {
          tasks += await each(u);
        } catch {
          errors += 1;
        }
      }
    }),
  );
  const took = Number(process.hrtime.bigint() - started) / 1e9;
  await u.release();
  return { tasks, errors, seconds: took, rate: tasks / took };
}

async function countJobs(client) {
  const r = await client.query(`SELECT count(*)::int AS n FROM "${schema}"._private_jobs`);
  return r.rows[0].n;
}

async function main() {
  switch (command) {
    case "migrate": {
      const u = await utils();
      await u.release();
      out({ migrated: true });
      break;
    }
    case "submit-single": {
      out(
        await submitFor(num("seconds", 5), num("clients", 64), async (u) => {
          await u.addJob("noop", { n: 1 });
          return 1;
        }),
      );
      break;
    }
    case "submit-batch": {
      const batch = num("batch", 1000);
      const specs = Array.from({ length: batch }, (_, n) => ({ identifier: "noop", payload: { n } }));
      out(
        await submitFor(num("seconds", 5), num("clients", 4), async (u) => {
          await u.addJobs(specs);
          return batch;
        }),
      );
      break;
    }
    case "enqueue": {
      const u = await utils();
      const n = num("n", 20000);
      const batch = num("batch", 1000);
      for (let done = 0; done < n; done += batch) {
        const size = Math.min(batch, n - done);
        await u.addJobs(Array.from({ length: size }, (_, i) => ({ identifier: "noop", payload: { n: done + i } })));
      }
      await u.release();
      out({ queued: n });
      break;
    }
    case "drain": {
      const n = num("n", 20000);
      const limitMs = num("limit-s", 300) * 1000;
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      let ran = 0;
      const started = process.hrtime.bigint();
      const runner = await startRunner(async () => {
        ran += 1;
      });
      let left = n;
      const deadline = Date.now() + limitMs;
      while (left > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
        left = await countJobs(client);
      }
      const took = Number(process.hrtime.bigint() - started) / 1e9;
      const peak = peakRssKib();
      const cpu = process.cpuUsage();
      await runner.stop();
      await client.end();
      out({ queued: n, ran, left, drained: left === 0, seconds: took, rate: left === 0 ? n / took : 0, peak_rss_kib: peak, worker_cpu_s: (cpu.user + cpu.system) / 1e6 });
      break;
    }
    case "latency": {
      const n = num("n", 200);
      const gap = num("gap-ms", 20);
      const waits = [];
      const starts = new Map();
      const runner = await startRunner(async (payload) => {
        const at = Date.now();
        const sent = starts.get(payload.n);
        if (sent !== undefined) waits.push(at - sent);
      });
      const u = await utils();
      for (let i = 0; i < n; i++) {
        starts.set(i, Date.now());
        await u.addJob("noop", { n: i });
        await new Promise((r) => setTimeout(r, gap));
      }
      const deadline = Date.now() + 30000;
      while (waits.length < n && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await u.release();
      await runner.stop();
      out({ submitted: n, started: waits.length, waits_ms: waits });
      break;
    }
    default:
      throw new Error(`unknown command ${command}`);
  }
}

// A worker with --concurrency workers (and --batching's options) running
// `noop` jobs with `handler`.
function startRunner(handler) {
  return run({
    connectionString: url,
    schema,
    concurrency: num("concurrency", 4),
    noHandleSignals: true,
    logger: quietLogger(),
    taskList: { noop: handler },
    preset: flag("batching") ? batchingPreset : undefined,
  });
}

function quietLogger() {
  // Errors only, on stderr (graphile-worker logs every job at info).
  return new Logger(() => (level, message) => {
    if (level === "error") process.stderr.write(`graphile-worker: ${message}\n`);
  });
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
