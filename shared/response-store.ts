// Response records in the state store (layout in session-store.ts, format in response-record.ts):
// written once, create-if-absent, by the worker that committed the response's version; read by
// the edge to answer GET /v1/responses/{id} and to continue from the version with
// previous_response_id; removed by DELETE /v1/responses/{id} or with their session.
import { ResponseRecord, parseResponseId } from './response-record.ts';
import { CorruptManifestError, SessionStore } from './session-store.ts';
import { StorePreconditionError, type StateStore } from './state-store.ts';

const encoder = new TextEncoder();

export class ResponseStore {
  constructor(private readonly objects: StateStore) {}

  /** The record of `id` under `tenant`, or null (unknown, deleted, not stored, or malformed id). */
  async read(tenant: string, id: string): Promise<ResponseRecord | null> {
    const ref = parseResponseId(id);
    if (!ref) return null;
    const key = SessionStore.responseKey(tenant, ref.session, ref.nonce);
    const obj = await this.objects.get(key);
    if (!obj) return null;
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(obj.bytes));
    } catch {
      throw new CorruptManifestError(key, 'not JSON');
    }
    const parsed = ResponseRecord.safeParse(json);
    if (!parsed.success) throw new CorruptManifestError(key, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    // The key is derived from the id; a record that names another id or tenant was put there by hand.
    if (parsed.data.id !== id || parsed.data.tenant !== tenant) return null;
    return parsed.data;
  }

  /** Store a record; one already there (a retried turn's first attempt wrote it) is kept. */
  async write(record: ResponseRecord): Promise<void> {
    const ref = parseResponseId(record.id);
    if (!ref || ref.session !== record.session) throw new Error(`response id ${record.id} does not name session ${record.session}`);
    try {
      await this.objects.putIfAbsent(SessionStore.responseKey(record.tenant, ref.session, ref.nonce), encoder.encode(JSON.stringify(record)));
    } catch (e) {
      if (!(e instanceof StorePreconditionError)) throw e;
    }
  }

  async delete(tenant: string, id: string): Promise<void> {
    const ref = parseResponseId(id);
    if (!ref) return;
    await this.objects.delete([SessionStore.responseKey(tenant, ref.session, ref.nonce)]);
  }
}
