// The name a worker goes by in session leases and the model registry, when WORKER_ID is unset.
// It must differ between any two live workers: the registry counts a model's live workers by
// name (two workers under one name count once, and the first to stop unregisters both), and
// the lease owner names who holds a session. Host name and pid alone do not ensure that: every
// container has its own pid namespace, so node gets the same small pid in every ECS task, and
// a host name derived from a task's address can come back with a later task while the old
// one's registry entry is still fresh. So a random part is always added.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

export function defaultWorkerId(host: string = hostname(), pid: number = process.pid): string {
  const unique = randomBytes(4).toString('hex');
  // WORKER_ID's own pattern ([A-Za-z0-9._-]{1,64}): the host part is cut, never the unique part.
  const head = `${host}-${pid}`.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64 - unique.length - 1);
  return `${head}-${unique}`;
}
