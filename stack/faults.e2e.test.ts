// The fault suite's short form (the long one: `npm run test:faults`): real processes on
// loopback — moto, redis-server, the edge, two workers — hurt with real signals while agents
// run turns, then every client's ledger checked against the store. Every count must be zero;
// the table is printed either way. See test-support/faults/scenario.ts.
import { describe, expect, it } from 'vitest';
import { startFaultStack, TENANT_KEYS } from '../test-support/faults/fault-stack.ts';
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

  it('a worker killed between its commit and its acknowledgement: the turn is reported done once, counted once', async () => {
    // Every worker dies right after each commit it makes; its replacement finds the commit.
    const stack = await startFaultStack({ workers: 1, crashPoints: 'after-commit=1' });
    try {
      const headers = { authorization: `Bearer ${TENANT_KEYS.load}`, 'content-type': 'application/json' };
      const ready = Date.now() + 60_000;
      while (!(await fetch(`${stack.url}/readyz`).then((r) => r.ok, () => false)) && Date.now() < ready) await new Promise((r) => setTimeout(r, 200));
      expect((await fetch(`${stack.url}/v1/sessions`, { method: 'POST', headers, body: JSON.stringify({ id: 'crash-ack' }) })).status).toBe(201);
      for (const [n, input] of ['first', 'second'].entries()) {
        const res = await fetch(`${stack.url}/v1/sessions/crash-ack/turns`, { method: 'POST', headers: { ...headers, 'idempotency-key': input }, body: JSON.stringify({ input, max_tokens: 6 }) });
        expect(res.status, await res.clone().text()).toBe(200);
        expect(((await res.json()) as { version: number }).version).toBe(n + 1);
      }
      expect(stack.workerDeaths).toBe(2);
      const metrics = await (await fetch(`${stack.url}/metrics`)).text();
      expect(metrics).toMatch(/^mamba_turns_total\{model="tiny",outcome="ok"\} 2$/m);
      expect(metrics).not.toMatch(/^mamba_turns_total\{model="tiny",outcome="(?!ok)/m);
      const versions = (await (await fetch(`${stack.url}/v1/sessions/crash-ack/versions`, { headers })).json()) as { data: Array<{ version: number }> };
      expect(versions.data.map((v) => v.version)).toEqual([0, 1, 2]);
    } finally {
      await stack.stop();
    }
  }, 120_000);
});
