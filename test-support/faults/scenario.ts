// The fault suite's one scenario, at any size: agents run turns on their sessions through the
// real processes (fault-stack.ts) while faults are injected at random — workers killed with
// SIGKILL (from outside, and by their own crash points between lease, decode, commit and
// acknowledgement), Redis killed and restarted with and without its data, the S3 server frozen
// with SIGSTOP and refusing connections, the edge killed mid-stream — beside targeted checks
// (poison states, a 125k-character input, turns queued before a DELETE, a hung store), then a
// fuzz of every route. Then every fault is healed and the clients' ledger is checked against
// the store (ledger-check.ts). `npm test` runs it small (stack/faults.e2e.test.ts);
// `npm run test:faults` runs it long and prints the table (test-support/faults/main.ts).
import { randomBytes } from 'node:crypto';
import { ModelRegistry } from '../../shared/model-registry.ts';
import { RedisKeys } from '../../shared/redis-keys.ts';
import { SessionStore } from '../../shared/session-store.ts';
import { S3StateStore } from '../../shared/state-store-s3.ts';
import { Redis } from 'ioredis';
import { poisonStates } from './crafted-states.ts';
import { BUCKET, PREFIX, startFaultStack, TENANT_KEYS, TENANTS, type FaultStack } from './fault-stack.ts';
import { checkLedger, type Verdict } from './ledger-check.ts';
import { fuzzRoutes } from './route-fuzz.ts';
import { newLedger, TurnClient, type TurnMode } from './turn-client.ts';

export interface ScenarioOptions {
  readonly sessions: number;
  readonly turnsPerSession: number;
  readonly workers: number;
  /** Pause between two injected faults, ms (uniform in [min, max]). */
  readonly faultGapMs: readonly [number, number];
  /** Relative weights of the fault kinds. */
  readonly weights: Readonly<Record<FaultKind, number>>;
  /**
   * Faults injected at most; the rest of the load then runs calm. Faults slow the agents and a
   * slower run would otherwise get more faults: on a busy machine the run would snowball.
   */
  readonly maxFaults: number;
  /** How long the S3 server stays frozen, ms; at least one freeze outlasts TURN_TIMEOUT_MS when the longest is above it. */
  readonly s3FreezeMs: readonly [number, number];
  readonly crashPoints: string;
  readonly deleteRaces: number;
  readonly fuzzRequests: number;
  readonly env: Record<string, string>;
  readonly maxTokens: number;
  readonly log: (line: string) => void;
}

export type FaultKind = 'worker-kill' | 'redis-restart-with-data' | 'redis-restart-without-data' | 's3-freeze' | 's3-refuse' | 'edge-kill';

export interface ScenarioReport {
  readonly verdict: Verdict;
  readonly faults: Readonly<Record<string, number>>;
  readonly totalFaults: number;
  readonly unexpectedCodes: string[];
  readonly blockedSessions: string[];
  readonly deleteRaceLeaks: string[];
  readonly poisonAccepted: string[];
  readonly hungStoreSlow: string[];
  readonly fuzz: { requests: number; operations: number };
  readonly seconds: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const between = ([min, max]: readonly [number, number]) => min + Math.random() * (max - min);

const WORDS = ['the', 'garden', 'letter', 'morning', 'captain', 'river', 'quiet', 'stair', 'window', 'promise', 'seven', 'blue'];
const sentence = () => Array.from({ length: 3 + Math.floor(Math.random() * 6) }, () => WORDS[Math.floor(Math.random() * WORDS.length)]).join(' ');

async function api(stack: FaultStack, path: string, init: RequestInit & { key?: string } = {}): Promise<Response> {
  const headers = { authorization: `Bearer ${init.key ?? TENANT_KEYS.load}`, 'content-type': 'application/json', ...(init.headers as Record<string, string> | undefined) };
  return fetch(`${stack.url}${path}`, { ...init, headers, signal: init.signal ?? AbortSignal.timeout(60_000) });
}

/** Call until the answer is not an outage (the stack is healing), up to `ms`. */
async function until(stack: FaultStack, path: string, init: RequestInit & { key?: string }, ms = 60_000): Promise<Response> {
  const end = Date.now() + ms;
  for (;;) {
    const res = await api(stack, path, init).catch(() => undefined);
    if (res && res.status !== 503 && res.status !== 429) return res;
    if (Date.now() > end) throw new Error(`${path}: still unavailable after ${ms} ms`);
    await sleep(250);
  }
}

async function waitReady(stack: FaultStack): Promise<void> {
  const end = Date.now() + 120_000;
  while (Date.now() < end) {
    const ok = await fetch(`${stack.url}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    await sleep(200);
  }
  throw new Error('the stack did not become ready');
}

export async function runScenario(options: ScenarioOptions): Promise<ScenarioReport> {
  const started = Date.now();
  const { log } = options;
  const run = randomBytes(3).toString('hex');
  const stack = await startFaultStack({ workers: options.workers, crashPoints: options.crashPoints, env: options.env });
  const faults: Record<string, number> = {};
  const count = (kind: string, n = 1) => (faults[kind] = (faults[kind] ?? 0) + n);
  const ledger = newLedger();
  const blockedSessions: string[] = [];
  const deleteRaceLeaks: string[] = [];
  const poisonAccepted: string[] = [];
  const hungStoreSlow: string[] = [];
  try {
    await waitReady(stack);
    const client = new TurnClient(stack.url, TENANT_KEYS.load, TENANTS.load, ledger, { keysPerTurn: 4, settleWithinMs: 180_000, maxTokens: options.maxTokens });

    // Targeted, before the chaos: poison states and an over-long input get their 400s.
    await targetedChecks(stack, client, run, { poisonAccepted, unexpected: ledger.unexpected }, count);
    log(`targeted checks done (${Math.round((Date.now() - started) / 1000)} s)`);

    // The agents, and the chaos beside them.
    const sessions = Array.from({ length: options.sessions }, (_, i) => `fs-${run}-${i}`);
    for (const s of sessions) {
      const res = await until(stack, '/v1/sessions', { method: 'POST', body: JSON.stringify({ id: s }) });
      if (res.status !== 201) throw new Error(`creating ${s}: ${res.status} ${await res.text()}`);
    }
    const modes: TurnMode[] = ['json', 'stream', 'chat'];
    let finished = false;
    const agents = Promise.all(
      sessions.map(async (s, i) => {
        for (let n = 0; n < options.turnsPerSession; n++) await client.run(s, `${run}:${i}:${n} ${sentence()}`, modes[(i + n) % modes.length]!);
      }),
    ).finally(() => (finished = true));
    const races = (async () => {
      for (let r = 0; r < options.deleteRaces && !finished; r++) {
        await deleteRace(stack, `race-${run}-${r}`, deleteRaceLeaks, ledger.unexpected).catch((e: unknown) => log(`delete race ${r}: ${(e as Error).message}`));
        count('delete/recreate race');
      }
    })();
    const chaos = (async () => {
      const kinds = Object.entries(options.weights).filter(([, w]) => w > 0) as Array<[FaultKind, number]>;
      const total = kinds.reduce((a, [, w]) => a + w, 0);
      let longFreezeDone = false;
      // Every kind once first (in random order), so even a short run sees each; then by weight.
      const firsts = kinds.map(([k]) => k).sort(() => Math.random() - 0.5);
      for (let injected = 0; !finished && injected < options.maxFaults; injected++) {
        await sleep(between(options.faultGapMs));
        if (finished) break;
        let pick = Math.random() * total;
        const kind = firsts.shift() ?? kinds.find(([, w]) => (pick -= w) < 0)?.[0] ?? kinds[0]![0];
        log(`fault: ${kind}`);
        await inject(stack, kind, options, !longFreezeDone);
        if (kind === 's3-freeze') longFreezeDone = true;
        count(kind);
      }
    })();
    await agents;
    await Promise.all([chaos, races]);
    log(`load done: ${ledger.turns.length} turns (${Math.round((Date.now() - started) / 1000)} s)`);

    // Heal everything; no more crash points.
    stack.moto.thaw();
    await stack.proxy.accept();
    await stack.replaceWorkers(undefined);
    await waitReady(stack);

    // Nothing runs now: every session takes a turn at once (no 409 session_busy left behind).
    for (const s of sessions) {
      const end = Date.now() + 15_000;
      for (;;) {
        const res = await until(stack, `/v1/sessions/${s}/turns`, { method: 'POST', body: JSON.stringify({ input: `${run}:after the faults`, max_tokens: 4 }) });
        if (res.status === 200) break;
        const code = ((await res.json().catch(() => null)) as { error?: { code?: string } } | null)?.error?.code;
        if (code !== 'session_busy' || Date.now() > end) {
          blockedSessions.push(`${s}: ${res.status} ${code}`);
          break;
        }
        await sleep(500);
      }
    }

    // A hung store: a session read answers 503 within its deadline, not when the store wakes.
    const deadline = Number(stack.env['STORE_TIMEOUT_MS']);
    stack.moto.freeze();
    count('s3-freeze (session read)');
    try {
      const t0 = Date.now();
      const res = await api(stack, `/v1/sessions/${sessions[0]}`).catch(() => undefined);
      const took = Date.now() - t0;
      if (res?.status !== 503 || took > deadline * 2 + 1_000) hungStoreSlow.push(`GET /v1/sessions/{id} with the store frozen: ${res?.status ?? 'no answer'} after ${took} ms (deadline ${deadline} ms)`);
    } finally {
      stack.moto.thaw();
    }

    const fuzz = await fuzzRoutes(stack.url, TENANT_KEYS.fuzz, { requests: options.fuzzRequests, seed: parseInt(run, 16), known: { session: sessions[0]! } });
    ledger.unexpected.push(...fuzz.findings);
    log(`fuzz: ${fuzz.requests} requests over ${fuzz.operations} operations, ${fuzz.findings.length} findings`);

    const verdict = await verify(stack, ledger);
    count('worker crash point', stack.workerDeaths - (faults['worker-kill'] ?? 0));
    const totalFaults = Object.values(faults).reduce((a, b) => a + b, 0);
    return {
      verdict,
      faults,
      totalFaults,
      unexpectedCodes: ledger.unexpected,
      blockedSessions,
      deleteRaceLeaks,
      poisonAccepted,
      hungStoreSlow,
      fuzz: { requests: fuzz.requests, operations: fuzz.operations },
      seconds: (Date.now() - started) / 1000,
    };
  } catch (e) {
    log(`scenario failed: ${(e as Error).stack}\n--- process output ---\n${stack.output().slice(-6000)}`);
    throw e;
  } finally {
    await stack.stop();
  }
}

async function inject(stack: FaultStack, kind: FaultKind, options: ScenarioOptions, allowLongFreeze: boolean): Promise<void> {
  switch (kind) {
    case 'worker-kill':
      await stack.killWorker();
      return;
    case 'redis-restart-with-data':
    case 'redis-restart-without-data':
      await stack.redis.kill();
      await sleep(300 + Math.random() * 1500);
      await stack.redis.start({ withData: kind === 'redis-restart-with-data' });
      return;
    case 's3-freeze': {
      // The first freeze is the longest asked for (past the turn deadline when it is longer).
      const ms = allowLongFreeze ? options.s3FreezeMs[1] : between(options.s3FreezeMs);
      stack.moto.freeze();
      await sleep(ms);
      stack.moto.thaw();
      return;
    }
    case 's3-refuse':
      await stack.proxy.refuse();
      await sleep(500 + Math.random() * 2500);
      await stack.proxy.accept();
      return;
    case 'edge-kill':
      await stack.killEdge();
      await sleep(200 + Math.random() * 800);
      await stack.startEdge();
      return;
  }
}

/** Poison states are refused without moving the head; an input of ~125k characters is 400 input_too_long. */
async function targetedChecks(
  stack: FaultStack,
  client: TurnClient,
  run: string,
  findings: { poisonAccepted: string[]; unexpected: string[] },
  count: (kind: string, n?: number) => void,
): Promise<void> {
  const s = `crafted-${run}`;
  await until(stack, '/v1/sessions', { method: 'POST', body: JSON.stringify({ id: s }) });
  const first = await client.run(s, `${run}:export a state to export`, 'json');
  const exported = await until(stack, `/v1/sessions/${s}/state`, {});
  if (exported.status !== 200) throw new Error(`exporting ${s}: ${exported.status} ${await exported.text()} (its turn: ${JSON.stringify(first.keys)})`);
  const good = new Uint8Array(await exported.arrayBuffer());
  for (const poison of poisonStates(good)) {
    count('poison state uploaded');
    const res = await until(stack, `/v1/sessions/${s}/state`, { method: 'PUT', body: poison.bytes, headers: { 'content-type': 'application/vnd.mamba-serve.mstate' } });
    const code = ((await res.json().catch(() => null)) as { error?: { code?: string } } | null)?.error?.code;
    if (res.status !== 400 || code !== 'state_invalid') findings.poisonAccepted.push(`${poison.name}: ${res.status} ${code ?? ''}`);
  }
  const head = (await (await until(stack, `/v1/sessions/${s}`, {})).json()) as { version: number };
  if (head.version !== 1) findings.poisonAccepted.push(`the head moved to ${head.version} while poison states were uploaded`);
  await client.run(s, `${run}:after-poison a turn after the poison`, 'json');

  const long = await until(stack, `/v1/sessions/${s}/turns`, { method: 'POST', body: JSON.stringify({ input: 'z'.repeat(125_000), max_tokens: 4 }) });
  const code = ((await long.json().catch(() => null)) as { error?: { code?: string } } | null)?.error?.code;
  if (long.status !== 400 || code !== 'input_too_long') findings.unexpected.push(`a 125,000-character input: ${long.status} ${code ?? ''} (want 400 input_too_long)`);
}

/**
 * A turn queued behind a running one, the session deleted the moment the running one ends and
 * created again under the same id: the queued turn must never run in the new session.
 */
async function deleteRace(stack: FaultStack, id: string, leaks: string[], unexpected: string[]): Promise<void> {
  await until(stack, '/v1/sessions', { method: 'POST', body: JSON.stringify({ id }) });
  const first = api(stack, `/v1/sessions/${id}/turns`, { method: 'POST', body: JSON.stringify({ input: 'a long first turn', max_tokens: 48, on_busy: 'queue' }) }).catch(() => undefined);
  await sleep(30);
  const queued = api(stack, `/v1/sessions/${id}/turns`, {
    method: 'POST',
    body: JSON.stringify({ input: 'queued before the delete', max_tokens: 4, on_busy: 'queue' }),
    headers: { 'idempotency-key': `${id}-queued` },
  }).catch(() => undefined);
  await first;
  const end = Date.now() + 20_000;
  for (;;) {
    const del = await api(stack, `/v1/sessions/${id}`, { method: 'DELETE' }).catch(() => undefined);
    if (del?.status === 200) break;
    if (Date.now() > end) return; // the queued turn took the session first: no race this time
    await sleep(20);
  }
  await until(stack, '/v1/sessions', { method: 'POST', body: JSON.stringify({ id }) });
  const answer = await queued;
  const code = answer ? (((await answer.json().catch(() => null)) as { error?: { code?: string } } | null)?.error?.code ?? String(answer.status)) : 'no answer';
  // no_worker: the schedule had every worker down when the turn arrived, so it was refused at
  // admission and never queued (the versions check below still holds it to that).
  if (!['200', 'session_not_found', 'unavailable', 'no_worker', 'no answer', 'turn_timeout', 'turn_failed'].includes(code)) unexpected.push(`delete race ${id}: the queued turn answered ${code}`);
  const versions = (await (await until(stack, `/v1/sessions/${id}/versions`, {})).json()) as { data: Array<{ version: number }> };
  if (versions.data.length !== 1) leaks.push(`${id}: the session created again has versions ${versions.data.map((v) => v.version).join(', ')}`);
}

async function verify(stack: FaultStack, ledger: ReturnType<typeof newLedger>): Promise<Verdict> {
  const objects = new S3StateStore({ bucket: BUCKET, prefix: PREFIX, endpoint: stack.moto.endpoint, forcePathStyle: true, credentials: stack.moto.credentials, timeoutMs: 30_000 });
  const redis = new Redis(stack.redis.url);
  try {
    const model = await new ModelRegistry(redis, new RedisKeys('ms'), 60_000).get('tiny');
    if (!model) throw new Error('no worker has registered the model');
    return await checkLedger(ledger, { sessions: new SessionStore(objects), tenant: TENANTS.load, fingerprint: model.fingerprint, layout: model.layout });
  } finally {
    redis.disconnect();
    await objects.close();
  }
}

/** The table README shows: one row, the counts that must all be zero beside the counts of what was done. */
export function formatReport(r: ScenarioReport): string {
  const v = r.verdict;
  const cells: Array<[string, number | string]> = [
    ['turns', v.turns],
    ['faults', r.totalFaults],
    ['acknowledged-lost', v.acknowledgedLost.length],
    ['reported-failed-but-committed', v.reportedFailedButCommitted.length],
    ['duplicated inputs', v.duplicatedInputs.length],
    ['corrupt states', v.corruptStates.length + r.poisonAccepted.length],
    ['unexpected codes', r.unexpectedCodes.length],
    ['garbled streams', v.garbledStreams.length],
    ['blocked sessions', r.blockedSessions.length],
    ['delete races leaked', r.deleteRaceLeaks.length],
    ['unsettled', v.unsettled.length],
    ['slow 503 on a hung store', r.hungStoreSlow.length],
  ];
  const lines = [
    `| ${cells.map(([k]) => k).join(' | ')} |`,
    `| ${cells.map(() => '---').join(' | ')} |`,
    `| ${cells.map(([, n]) => String(n)).join(' | ')} |`,
    '',
    `faults: ${Object.entries(r.faults).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `turns acknowledged ${v.acknowledged}, reported failed ${v.reportedFailed} (${Object.entries(v.failureCodes).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}; each sent again under a new key), versions checked ${v.versions}; fuzz: ${r.fuzz.requests} requests over ${r.fuzz.operations} operations; ${Math.round(r.seconds)} s`,
  ];
  const details = [
    ...v.acknowledgedLost,
    ...v.reportedFailedButCommitted,
    ...v.duplicatedInputs,
    ...v.corruptStates,
    ...r.poisonAccepted,
    ...r.unexpectedCodes,
    ...v.garbledStreams,
    ...r.blockedSessions,
    ...r.deleteRaceLeaks,
    ...v.unsettled,
    ...r.hungStoreSlow,
  ];
  if (details.length > 0) lines.push('', 'findings:', ...details.slice(0, 50).map((d) => `  - ${d}`));
  return lines.join('\n');
}

/** Every count that must be zero. */
export function findingsOf(r: ScenarioReport): number {
  const v = r.verdict;
  return (
    v.acknowledgedLost.length +
    v.reportedFailedButCommitted.length +
    v.duplicatedInputs.length +
    v.corruptStates.length +
    r.poisonAccepted.length +
    r.unexpectedCodes.length +
    v.garbledStreams.length +
    r.blockedSessions.length +
    r.deleteRaceLeaks.length +
    v.unsettled.length +
    r.hungStoreSlow.length
  );
}
