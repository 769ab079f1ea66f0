// The fault suite's verdict: what the clients were told (turn-client.ts), held against what
// the store holds once every fault has passed. Read straight from the S3 server, through the
// same SessionStore the services use, so the check does not depend on the services it checks.
//   acknowledged-lost            a turn answered with a version that the session does not hold
//                                (or holds with another turn, or another reply)
//   reported-failed-but-committed a key answered turn_failed / turn_timeout whose turn is saved
//   duplicated inputs            an input the session absorbed more than once
//   corrupt states               a stored version whose state does not load as this model's
//   garbled streams              a stream (or its resumes) whose text is not the saved reply
//   unsettled                    a turn whose outcome the client never learned (given up on)
import { assertStateImportable, type StateLayout } from '../../shared/mstate.ts';
import type { ManifestVersion } from '../../shared/session-manifest.ts';
import type { SessionStore } from '../../shared/session-store.ts';
import type { ClientLedger } from './turn-client.ts';

export interface Verdict {
  readonly turns: number;
  readonly acknowledged: number;
  readonly reportedFailed: number;
  /** Reported failures by code. */
  readonly failureCodes: Readonly<Record<string, number>>;
  readonly versions: number;
  readonly acknowledgedLost: string[];
  readonly reportedFailedButCommitted: string[];
  readonly duplicatedInputs: string[];
  readonly corruptStates: string[];
  readonly garbledStreams: string[];
  readonly unsettled: string[];
}

/** Every version of a session, oldest first, with its items' inputs and reply. */
async function versionsOf(sessions: SessionStore, tenant: string, session: string): Promise<Array<{ entry: ManifestVersion; inputs: string[]; reply: string | null }>> {
  const read = await sessions.read(tenant, session);
  if (!read) return [];
  const out = [];
  let after: number | undefined;
  for (;;) {
    const page = await sessions.listVersions(tenant, session, read.manifest, { limit: 1000, order: 'asc', ...(after !== undefined ? { after } : {}) });
    for (const entry of page.data) {
      const items = entry.items ? await sessions.readItems(tenant, session, entry.version) : null;
      const inputs = (items?.input ?? []).map((i) => (i.type === 'message' ? i.content.map((p) => p.text).join('') : i.output));
      const reply = items?.output[0]?.type === 'message' ? items.output[0].content.map((p) => p.text).join('') : null;
      out.push({ entry, inputs, reply });
    }
    if (!page.hasMore) return out;
    after = page.data.at(-1)!.version;
  }
}

export async function checkLedger(
  ledger: ClientLedger,
  store: { sessions: SessionStore; tenant: string; fingerprint: string; layout: StateLayout },
): Promise<Verdict> {
  const { sessions, tenant } = store;
  const v = {
    acknowledgedLost: [] as string[],
    reportedFailedButCommitted: [] as string[],
    duplicatedInputs: [] as string[],
    corruptStates: [] as string[],
    garbledStreams: [...ledger.garbled],
    unsettled: [] as string[],
  };
  let acknowledged = 0;
  let reportedFailed = 0;
  const failureCodes: Record<string, number> = {};
  let versionCount = 0;
  const bySession = new Map<string, ClientLedger['turns']>();
  for (const t of ledger.turns) bySession.set(t.session, [...(bySession.get(t.session) ?? []), t]);
  for (const [session, turns] of bySession) {
    const versions = await versionsOf(sessions, tenant, session);
    versionCount += versions.length;
    const byTurnId = new Map(versions.filter((x) => x.entry.turn_id).map((x) => [x.entry.turn_id!, x]));
    const absorbed = new Map<string, number>();
    for (const x of versions) for (const input of x.inputs) absorbed.set(input, (absorbed.get(input) ?? 0) + 1);
    for (const turn of turns) {
      for (const sent of turn.keys) {
        const saved = byTurnId.get(sent.turnId);
        if (sent.outcome.kind === 'ok') {
          acknowledged++;
          if (!saved || saved.entry.version !== sent.outcome.version) {
            v.acknowledgedLost.push(`${session} ${sent.key}: told version ${sent.outcome.version}, the session holds ${saved ? `version ${saved.entry.version}` : 'no version'} of turn ${sent.turnId}`);
          } else if (saved.reply !== null && saved.reply !== sent.outcome.output) {
            v.acknowledgedLost.push(`${session} ${sent.key}: told ${JSON.stringify(sent.outcome.output)}, saved ${JSON.stringify(saved.reply)}`);
          }
          if (turn.mode === 'chat' && saved?.reply !== null && saved?.reply !== undefined && turn.streamedText !== undefined && turn.streamedText !== saved.reply) {
            v.garbledStreams.push(`${session} ${sent.key}: streamed ${JSON.stringify(turn.streamedText)}, saved ${JSON.stringify(saved.reply)}`);
          }
        } else if (sent.outcome.kind === 'failed') {
          reportedFailed++;
          failureCodes[sent.outcome.code] = (failureCodes[sent.outcome.code] ?? 0) + 1;
          if (saved) v.reportedFailedButCommitted.push(`${session} ${sent.key}: told ${sent.outcome.code}, saved as version ${saved.entry.version}`);
        }
      }
      if (turn.keys.every((k) => k.outcome.kind !== 'ok') && turn.keys.at(-1)?.outcome.kind === 'unsettled') v.unsettled.push(`${session} ${turn.input}`);
      const times = absorbed.get(turn.input) ?? 0;
      if (times > 1) v.duplicatedInputs.push(`${session}: ${JSON.stringify(turn.input)} absorbed ${times} times`);
    }
    for (const x of versions) {
      if (x.entry.state_bytes === 0) continue;
      const bytes = await sessions.readState(tenant, session, x.entry.version);
      try {
        if (!bytes) throw new Error('listed, but no state is stored');
        if (bytes.byteLength !== x.entry.state_bytes) throw new Error(`${bytes.byteLength} bytes, the manifest says ${x.entry.state_bytes}`);
        const header = assertStateImportable(bytes, store.fingerprint, store.layout);
        if (header.tokens_absorbed !== x.entry.tokens_absorbed) throw new Error(`absorbed ${header.tokens_absorbed} tokens, the manifest says ${x.entry.tokens_absorbed}`);
      } catch (e) {
        v.corruptStates.push(`${session} v${x.entry.version}: ${(e as Error).message}`);
      }
    }
  }
  return { turns: ledger.turns.length, acknowledged, reportedFailed, failureCodes, versions: versionCount, ...v };
}
