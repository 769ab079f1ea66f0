// `mamba-serve sessions ls|show|versions|fork|export|import|rm`: the native session API from
// a terminal. Human-readable by default; --json prints the API's own JSON for scripts.
import { readFile, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { SessionCreated, SessionDeleted, SessionInfo, SessionList, StateImported, VersionList, type VersionInfo } from '../shared/api-schemas.ts';
import type { ApiClient } from './api-client.ts';
import { UsageError, type Out } from './cli-io.ts';

const seg = encodeURIComponent;

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n');
}

const kb = (bytes: number) => (bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} KB`);
const when = (iso: string) => iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');

async function allPages<T extends { has_more: boolean }>(first: T, next: (page: T) => Promise<T>): Promise<T[]> {
  const pages = [first];
  while (pages.at(-1)!.has_more) pages.push(await next(pages.at(-1)!));
  return pages;
}

/** Versions as a tree: each version under its parent, forks visible as siblings. */
function versionTree(versions: VersionInfo[], head: number): string[] {
  const children = new Map<number | null, VersionInfo[]>();
  const known = new Set(versions.map((v) => v.version));
  for (const v of versions) {
    const parent = v.parent !== null && known.has(v.parent) ? v.parent : null;
    children.set(parent, [...(children.get(parent) ?? []), v]);
  }
  const lines: string[] = [];
  const walk = (parent: number | null, depth: number) => {
    for (const v of children.get(parent) ?? []) {
      const mark = v.version === head ? ' (head)' : '';
      lines.push(`${'  '.repeat(depth)}v${v.version}${mark}  ${v.origin}  ${v.tokens_absorbed.toLocaleString('en-US')} tokens  ${kb(v.state_bytes)}  ${when(v.created_at)}`);
      walk(v.version, depth + 1);
    }
  };
  walk(null, 0);
  return lines;
}

export async function sessionsCommand(api: ApiClient, args: { positionals: string[]; values: Record<string, unknown> }, out: Out): Promise<void> {
  const [sub, ...rest] = args.positionals;
  const json = args.values.json === true;
  const need = (what: string) => {
    const v = rest[0];
    if (!v) throw new UsageError(`sessions ${sub} needs ${what}`);
    return v;
  };
  const optionalNumber = (name: string) => {
    const raw = args.values[name];
    if (raw === undefined) return undefined;
    if (typeof raw !== 'string' || !/^\d+$/.test(raw)) throw new UsageError(`--${name} must be a whole number, got "${String(raw)}"`);
    return Number(raw);
  };
  switch (sub) {
    case 'ls': {
      const limit = optionalNumber('limit') ?? 20;
      const first = await api.json('GET', `/v1/sessions?limit=${Math.min(limit, 100)}`, SessionList);
      const pages = args.values.all === true ? await allPages(first, (p) => api.json('GET', `/v1/sessions?limit=100&after=${seg(p.last_id!)}`, SessionList)) : [first];
      const sessions = pages.flatMap((p) => p.data);
      const whole = { object: 'list', data: sessions, first_id: sessions[0]?.id ?? null, last_id: sessions.at(-1)?.id ?? null, has_more: false };
      if (json) return out.line(JSON.stringify(args.values.all === true ? whole : first, null, 2));
      if (sessions.length === 0) return out.line('no sessions');
      out.line(
        table([
          ['ID', 'MODEL', 'VERSION', 'TOKENS', 'UPDATED', 'METADATA'],
          ...sessions.map((s) => [s.id, s.model, String(s.version), s.tokens_absorbed.toLocaleString('en-US'), when(s.updated_at), JSON.stringify(s.metadata)]),
        ]),
      );
      if (!args.values.all && first.has_more) out.line(`… more: --all, or --limit`);
      return;
    }
    case 'show': {
      const s = await api.json('GET', `/v1/sessions/${seg(need('a session id'))}`, SessionInfo);
      if (json) return out.line(JSON.stringify(s, null, 2));
      out.line(
        table([
          ['id', s.id],
          ['model', s.model],
          ['head version', String(s.version)],
          ['versions', String(s.versions)],
          ['tokens absorbed', s.tokens_absorbed.toLocaleString('en-US')],
          ['state', kb(s.state_bytes)],
          ['created', when(s.created_at)],
          ['updated', when(s.updated_at)],
          ['metadata', JSON.stringify(s.metadata)],
          ...(s.cartridge ? [['cartridge', s.cartridge]] : []),
        ]),
      );
      return;
    }
    case 'versions': {
      const id = need('a session id');
      const first = await api.json('GET', `/v1/sessions/${seg(id)}/versions?limit=1000`, VersionList);
      const pages = await allPages(first, (p) => api.json('GET', `/v1/sessions/${seg(id)}/versions?limit=1000&after=${p.data.at(-1)!.version}`, VersionList));
      const versions = pages.flatMap((p) => p.data);
      if (json) return out.line(JSON.stringify({ session_id: id, head: first.head, data: versions }, null, 2));
      for (const line of versionTree(versions, first.head)) out.line(line);
      return;
    }
    case 'fork': {
      const id = need('a session id');
      const version = optionalNumber('version');
      const to = args.values.to;
      const made = await api.json('POST', `/v1/sessions/${seg(id)}/fork`, SessionCreated, {
        ...(version !== undefined ? { version } : {}),
        ...(typeof to === 'string' ? { id: to } : {}),
      });
      if (json) return out.line(JSON.stringify(made, null, 2));
      out.line(`forked ${id}${version !== undefined ? ` at v${version}` : ''} into ${made.id} (v${made.version}, ${made.tokens_absorbed.toLocaleString('en-US')} tokens)`);
      return;
    }
    case 'export': {
      const id = need('a session id');
      const version = optionalNumber('version');
      const { data, headers } = await api.bytes(`/v1/sessions/${seg(id)}/state${version !== undefined ? `?version=${version}` : ''}`);
      const v = headers.get('x-session-version') ?? String(version ?? 'head');
      const file = typeof args.values.output === 'string' ? args.values.output : `${id}-v${v}.mstate`;
      if (file === '-') return out.bytes(data);
      await writeFile(file, data);
      if (json) return out.line(JSON.stringify({ id, version: Number(v), file, bytes: data.length }));
      out.line(`wrote ${file} (${kb(data.length)}, ${id} v${v})`);
      return;
    }
    case 'import': {
      const file = need('a .mstate file');
      const data = new Uint8Array(await readFile(file));
      const requested = typeof args.values.id === 'string' ? args.values.id : undefined;
      const model = typeof args.values.model === 'string' ? args.values.model : undefined;
      const created = await api.json('POST', '/v1/sessions', SessionCreated, {
        ...(requested ? { id: requested } : {}),
        ...(model ? { model } : {}),
        metadata: { imported_from: basename(file).slice(0, 500) },
      });
      const imported = await api.putBytes(`/v1/sessions/${seg(created.id)}/state`, data, StateImported);
      if (json) return out.line(JSON.stringify(imported, null, 2));
      out.line(`imported ${file} into ${imported.id} (v${imported.version}, ${imported.tokens_absorbed.toLocaleString('en-US')} tokens)`);
      return;
    }
    case 'rm': {
      if (rest.length === 0) throw new UsageError('sessions rm needs at least one session id');
      for (const id of rest) {
        const gone = await api.json('DELETE', `/v1/sessions/${seg(id)}`, SessionDeleted);
        if (json) out.line(JSON.stringify(gone));
        else out.line(`deleted ${gone.id} (${gone.versions_removed} versions)`);
      }
      return;
    }
    default:
      throw new UsageError(sub ? `unknown sessions command "${sub}"` : 'sessions needs a command: ls, show, versions, fork, export, import or rm');
  }
}
