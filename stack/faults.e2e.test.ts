// The fault suite's short form (the long one: `npm run test:faults`): real processes on
// loopback — moto, redis-server, the edge, two workers — hurt with real signals while agents
// run turns, then every client's ledger checked against the store. Every count must be zero;
// the table is printed either way. See test-support/faults/scenario.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultStack, TENANT_KEYS, type FaultStack } from '../test-support/faults/fault-stack.ts';
import { SHORT } from '../test-support/faults/main.ts';
import { findingsOf, formatReport, runScenario } from '../test-support/faults/scenario.ts';

describe('faults', () => {
  it('every fault at least once: no acknowledged turn lost, no failure reported for a saved turn, no input applied twice, no corrupt state, no unexpected answer', async () => {
    const report = await runScenario({ ...SHORT, log: () => {} });
    const table = formatReport(report);
    process.stdout.write(`\nfault suite (short form)\n${table}\n`);
    expect(findingsOf(report), table).toBe(0);
    // Each kind of fault happened (the schedule injects every kind once first).
    for (const kind of Object.keys(SHORT.weights)) expect(report.faults[kind] ?? 0, `${kind} was not injected\n${table}`).toBeGreaterThan(0);
  }, 240_000);

  describe('crash points, placed', () => {
    let stack: FaultStack;
    const headers = { authorization: `Bearer ${TENANT_KEYS.load}`, 'content-type': 'application/json' };
    const turn = (session: string, input: string) =>
      fetch(`${stack.url}/v1/sessions/${session}/turns`, { method: 'POST', headers: { ...headers, 'idempotency-key': `${session}-${input}` }, body: JSON.stringify({ input, max_tokens: 6 }) });

    beforeAll(async () => {
      // Every worker dies right after each commit it makes; its replacement finds the commit.
      stack = await startFaultStack({ workers: 1, crashPoints: 'after-commit=1', env: { TURN_ATTEMPTS: '2' } });
      const ready = Date.now() + 60_000;
      while (!(await fetch(`${stack.url}/readyz`).then((r) => r.ok, () => false)) && Date.now() < ready) await new Promise((r) => setTimeout(r, 200));
    }, 120_000);
    afterAll(async () => {
      await stack?.stop();
    });

    it('a worker killed between its commit and its acknowledgement: the turn is reported done once, counted once', async () => {
      expect((await fetch(`${stack.url}/v1/sessions`, { method: 'POST', headers, body: JSON.stringify({ id: 'crash-ack' }) })).status).toBe(201);
      for (const [n, input] of ['first', 'second'].entries()) {
        const res = await turn('crash-ack', input);
        expect(res.status, await res.clone().text()).toBe(200);
        expect(((await res.json()) as { version: number }).version).toBe(n + 1);
      }
      expect(stack.workerDeaths).toBe(2);
      const metrics = await (await fetch(`${stack.url}/metrics`)).text();
      expect(metrics).toMatch(/^mamba_turns_total\{model="tiny",outcome="ok"\} 2$/m);
      expect(metrics).not.toMatch(/^mamba_turns_total\{model="tiny",outcome="(?!ok)/m);
      const versions = (await (await fetch(`${stack.url}/v1/sessions/crash-ack/versions`, { headers })).json()) as { data: Array<{ version: number }> };
      expect(versions.data.map((v) => v.version)).toEqual([0, 1, 2]);
    }, 60_000);

    it('a turn whose workers die every time fails after TURN_ATTEMPTS deaths, reported then (not at its deadline), and frees its session', async () => {
      await stack.replaceWorkers('after-lease=1');
      expect((await fetch(`${stack.url}/v1/sessions`, { method: 'POST', headers, body: JSON.stringify({ id: 'crash-loop' }) })).status).toBe(201);
      const t0 = Date.now();
      const res = await turn('crash-loop', 'doomed');
      const took = Date.now() - t0;
      expect(res.status, await res.clone().text()).toBe(500);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('turn_failed');
      // TURN_TIMEOUT_MS is 20 s here: the failure is heard when it is decided.
      expect(took).toBeLessThan(17_000);
      await stack.replaceWorkers(undefined);
      const next = await turn('crash-loop', 'next');
      expect(next.status, await next.clone().text()).toBe(200);
      expect(((await next.json()) as { version: number }).version).toBe(1);
    }, 90_000);
  });
});
