import { describe, expect, it } from 'vitest';
import { WorkerConfigSchema } from '../shared/config.ts';
import { defaultWorkerId } from './worker-id.ts';

describe('defaultWorkerId', () => {
  it('differs between workers on the same host under the same pid (ECS tasks)', () => {
    const ids = new Set(Array.from({ length: 100 }, () => defaultWorkerId('ip-10-0-1-23.ec2.internal', 7)));
    expect(ids.size).toBe(100);
    expect([...ids][0]).toMatch(/^ip-10-0-1-23\.ec2\.internal-7-[0-9a-f]{8}$/);
  });

  it('is always a valid WORKER_ID, whatever the host name', () => {
    for (const host of ['a'.repeat(200), 'host name/with:odd@chars', '']) {
      const id = defaultWorkerId(host, 123456);
      expect(WorkerConfigSchema.shape.WORKER_ID.safeParse(id).success, id).toBe(true);
      expect(id).toMatch(/-[0-9a-f]{8}$/);
    }
  });
});
