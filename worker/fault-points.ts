// Named points in a turn where the fault suite (test-support/faults/) has a worker die, by
// SIGKILL to itself, as a crash at that instant would: no cleanup, no final write, no lock
// released. Killing a worker from outside at random times rarely lands inside the few
// milliseconds between a commit and its acknowledgement; these points make every window of
// the commit protocol reachable on demand. Off unless FAULT_CRASH_POINTS names them.
export const CRASH_POINTS = ['after-lease', 'mid-decode', 'before-commit', 'after-commit', 'after-done'] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export class FaultPoints {
  private readonly chances: ReadonlyMap<string, number>;

  /** `spec`: FAULT_CRASH_POINTS (`point=probability,…`); unknown point names are an error, so a typo cannot silently test nothing. */
  constructor(spec: string | undefined, private readonly random: () => number = Math.random) {
    const chances = new Map<string, number>();
    for (const entry of (spec ?? '').split(',').filter(Boolean)) {
      const [name, p] = entry.split('=');
      if (!(CRASH_POINTS as readonly string[]).includes(name!)) throw new Error(`FAULT_CRASH_POINTS: unknown point "${name}" (known: ${CRASH_POINTS.join(', ')})`);
      chances.set(name!, Number(p));
    }
    this.chances = chances;
  }

  get enabled(): boolean {
    return this.chances.size > 0;
  }

  /** Die here, with the point's probability. */
  reach(point: CrashPoint): void {
    const p = this.chances.get(point);
    if (p !== undefined && this.random() < p) {
      process.stderr.write(`${JSON.stringify({ t: new Date().toISOString(), level: 'warn', component: 'worker', msg: 'fault injection: crashing', point })}\n`);
      process.kill(process.pid, 'SIGKILL');
    }
  }
}
