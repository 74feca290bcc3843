// Drives the sluice console in headless Chromium (Debian's /usr/bin/chromium; never a
// downloaded browser): screenshots each view into $ARTIFACTS, then selects the dead
// letter $REPLAY_ID, replays it through the page's confirmation dialog and waits for
// the page to report it. tests/admin.rs starts the broker, runs this, and checks the
// result through the API. Exit 77: Chromium could not start (the test then skips).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const url = process.env.SLUICE_ADMIN_URL;
const replayId = process.env.REPLAY_ID;
const out = process.env.ARTIFACTS;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!url || !replayId || !out) {
  console.error("SLUICE_ADMIN_URL, REPLAY_ID and ARTIFACTS are required");
  process.exit(2);
}
mkdirSync(out, { recursive: true });

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
} catch (e) {
  console.error(`Chromium cannot start (${executablePath}): ${e.message}`);
  process.exit(77);
}

const step = (what) => console.log("console test:", what);
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  step("overview");
  await page.goto(url + "/#overview");
  await page.waitForSelector(".card");
  // Three stats samples make two rate points: the chart draws lines.
  await page.waitForFunction(() => state.samples.length >= 3, null, { timeout: 20_000 });
  await page.screenshot({ path: join(out, "overview.png") });

  step("clients");
  await page.click('nav button[data-view="clients"]');
  await page.waitForSelector("#clients-table tbody tr");
  await page.screenshot({ path: join(out, "clients.png") });

  step("sessions");
  await page.click('nav button[data-view="sessions"]');
  await page.waitForSelector("#sessions-table tbody tr");
  await page.screenshot({ path: join(out, "sessions.png") });

  step("dead letters");
  await page.click('nav button[data-view="dead-letters"]');
  const row = `#dl-table tr[data-id="${replayId}"]`;
  await page.waitForSelector(row);
  await page.click(`${row} td:nth-child(4)`);
  await page.waitForSelector("#dl-detail:not([hidden])");
  await page.check(`${row} input.pick`);
  await page.screenshot({ path: join(out, "dead-letters.png") });

  step("replay one dead letter");
  await page.click("#dl-replay");
  await page.waitForSelector("dialog#confirm[open]");
  await page.screenshot({ path: join(out, "dead-letters-confirm.png") });
  await page.click("#confirm-ok");
  await page.waitForSelector("#dl-result:not([hidden])");
  const result = await page.textContent("#dl-result");
  await page.waitForFunction((id) => !document.querySelector(`#dl-table tr[data-id="${id}"]`), replayId);
  await page.screenshot({ path: join(out, "dead-letters-replayed.png") });
  if (!/^Replayed 1\b/.test(result)) throw new Error(`unexpected result: ${result}`);
  if (errors.length) throw new Error("errors in the page: " + errors.join("; "));
  step("done: " + result);
} catch (e) {
  console.error("console test failed:", e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
