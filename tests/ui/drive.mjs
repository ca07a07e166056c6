// Drives the gateway's live mesh page in headless Chromium over the DevTools
// protocol, with Node's own WebSocket (no npm package, no browser download).
//
//   node --experimental-websocket drive.mjs BROWSER_WS PAGE_URL REPLICA SCREENSHOT
//
// 1. loads PAGE_URL and waits for live numbers (two snapshots, a route row,
//    the counter, REPLICA shown healthy), then prints LIVE;
// 2. waits (the test kills REPLICA when it reads LIVE) until the page,
//    never reloaded, shows REPLICA unhealthy, and prints UNHEALTHY;
// 3. saves a PNG screenshot to SCREENSHOT and checks that the page asked
//    for nothing but its own origin; prints DONE.
// Every wait has a deadline; any failure exits 1 with the reason.
import { writeFileSync } from "node:fs";

const [wsUrl, pageUrl, replica, shot] = process.argv.slice(2);
const origin = new URL(pageUrl).origin;
const fail = (why) => { console.error(`FAILED: ${why}`); process.exit(1); };
setTimeout(() => fail("the whole run took longer than 120 s"), 120_000).unref();

const ws = new WebSocket(wsUrl);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("cannot reach the browser")); });
let nextId = 1;
const pending = new Map();
const requests = [];
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(`${JSON.stringify(msg.error)}`)) : resolve(msg.result);
  } else if (msg.method === "Network.requestWillBeSent") {
    requests.push(msg.params.request.url);
  }
};
const send = (method, params = {}, sessionId = undefined) => {
  const id = nextId++;
  ws.send(JSON.stringify({ id, method, params, sessionId }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
};

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const page = (method, params) => send(method, params, sessionId);
await page("Network.enable");
await page("Page.enable");
await page("Emulation.setDeviceMetricsOverride", { width: 1280, height: 1000, deviceScaleFactor: 1, mobile: false });
await page("Page.navigate", { url: pageUrl });

const evaluate = async (expression) => {
  const { result, exceptionDetails } = await page("Runtime.evaluate", { expression, returnByValue: true });
  if (exceptionDetails) throw new Error(exceptionDetails.text);
  return result.value;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, expression, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    try { last = await evaluate(expression); if (last === true) return; } catch (e) { last = e.message; }
    await sleep(200);
  }
  const state = await evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''").catch(() => "");
  fail(`${what}: not within ${seconds} s (last: ${JSON.stringify(last)})\n${state}`);
}

const row = `document.querySelector('[data-replica=${JSON.stringify(replica)}]')`;
await until("live numbers", `Number(document.body.dataset.updates) >= 2
  && document.querySelectorAll('#routes tbody tr').length > 0
  && /^[0-9]+$/.test(document.getElementById('counter').textContent)
  && ${row} !== null && ${row}.dataset.state === 'healthy'`, 30);
// A mark that a reload would wipe out.
await evaluate("window.__stillTheSamePage = true; true");
const updates = await evaluate("Number(document.body.dataset.updates)");
console.log("LIVE");

await until("the killed replica shown unhealthy", `${row} !== null && ${row}.dataset.state === 'unhealthy'`, 30);
if (await evaluate("window.__stillTheSamePage === true") !== true) fail("the page was reloaded");
const later = await evaluate("Number(document.body.dataset.updates)");
if (!(later > updates)) fail(`no update arrived over the stream (${updates} then ${later})`);
console.log("UNHEALTHY");

const { data } = await page("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
writeFileSync(shot, Buffer.from(data, "base64"));
const outside = requests.filter((u) => !u.startsWith(origin + "/"));
if (outside.length) fail(`the page asked for outside URLs: ${outside.join(", ")}`);
if (!requests.some((u) => u.startsWith(origin + "/ui/events"))) fail(`no event stream among ${requests.join(", ")}`);
console.log("DONE");
ws.close();
process.exit(0);
