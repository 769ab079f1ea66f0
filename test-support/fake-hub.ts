// A local HTTP server that answers like the Hugging Face Hub for what fetching a model needs
// (these machines cannot reach the Hub): revision info (`/api/models/{repo}/revision/{rev}`),
// the file tree (`/api/models/{repo}/tree/{commit}`), and file downloads
// (`/{repo}/resolve/{commit}/{path}`, with Range requests as the Hub's CDN serves them). Files
// it marks LFS are listed with their sha256 and size, the rest with their git blob id, as the
// Hub does. Faults a real server cannot be asked for: a download cut after N bytes, a
// corrupted byte, a gated repository.
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRepo {
  /** revision name (branch or tag) → commit id (40 hex digits) */
  readonly refs: Record<string, string>;
  /** commit id → files (path → bytes) */
  readonly commits: Record<string, Record<string, Uint8Array>>;
  /** Paths served as LFS files (listed with sha256 and size). Default: *.safetensors and *.bin. */
  readonly lfs?: (path: string) => boolean;
  /** Only this bearer token may read the repository (a gated or private model). */
  readonly token?: string;
}

export interface FakeHub {
  readonly url: string;
  /** Every request, as "METHOD path", in order. */
  readonly requests: string[];
  /** Range headers of file downloads, in order ("" when none). */
  readonly ranges: string[];
  /** Cut the next download of `path` after `bytes` bytes (once). */
  cutNextDownload(path: string, bytes: number): void;
  /** Flip one byte of the next download of `path` (once). */
  corruptNextDownload(path: string): void;
  close(): Promise<void>;
}

export const gitBlobId = (data: Uint8Array) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const isLfs = (path: string) => /\.(safetensors|bin)$/.test(path);

export async function startFakeHub(repos: Record<string, FakeRepo>): Promise<FakeHub> {
  const requests: string[] = [];
  const ranges: string[] = [];
  const cuts = new Map<string, number>();
  const corrupt = new Set<string>();

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://hub');
    requests.push(`${req.method} ${url.pathname}`);
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const find = (owner: string, name: string) => {
      const repo = repos[`${owner}/${name}`];
      if (!repo) return undefined;
      if (repo.token !== undefined && req.headers.authorization !== `Bearer ${repo.token}`) {
        json(401, { error: 'Access to model is restricted. You must have access to it and be authenticated to access it.' });
        return null;
      }
      return repo;
    };

    let m = /^\/api\/models\/([^/]+)\/([^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const repo = find(m[1]!, m[2]!);
      if (repo === null) return;
      const rev = decodeURIComponent(m[3]!);
      const commit = repo?.refs[rev] ?? (repo?.commits[rev] ? rev : undefined);
      if (!repo || !commit) return json(404, { error: 'Repository not found' });
      return json(200, { _id: 'fake', id: `${m[1]}/${m[2]}`, sha: commit, private: false, gated: false, downloads: 0, likes: 0, pipeline_tag: 'text-generation', lastModified: '2026-11-01T00:00:00.000Z' });
    }
    m = /^\/api\/models\/([^/]+)\/([^/]+)\/tree\/([0-9a-f]{40})$/.exec(url.pathname);
    if (m) {
      const repo = find(m[1]!, m[2]!);
      if (repo === null) return;
      const files = repo?.commits[m[3]!];
      if (!repo || !files) return json(404, { error: 'Revision not found' });
      const lfs = repo.lfs ?? isLfs;
      return json(
        200,
        Object.entries(files).map(([path, data]) =>
          lfs(path)
            ? { type: 'file', path, size: data.length, oid: gitBlobId(new TextEncoder().encode(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(data)}\nsize ${data.length}\n`)), lfs: { oid: sha256(data), size: data.length, pointerSize: 130 } }
            : { type: 'file', path, size: data.length, oid: gitBlobId(data) },
        ),
      );
    }
    m = /^\/([^/]+)\/([^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    if (m) {
      const repo = find(m[1]!, m[2]!);
      if (repo === null) return;
      const path = decodeURIComponent(m[4]!);
      const data = repo?.commits[m[3]!]?.[path];
      if (!data) return json(404, { error: 'Entry not found' });
      const range = req.headers.range ?? '';
      ranges.push(range);
      let start = 0;
      const r = /^bytes=(\d+)-$/.exec(range);
      if (r) start = Number(r[1]);
      if (start >= data.length && range) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` });
        return res.end();
      }
      let body = Buffer.from(data.subarray(start));
      if (corrupt.delete(path) && body.length > 0) {
        body = Buffer.from(body);
        const at = Math.floor(body.length / 2);
        body[at] = body[at]! ^ 0xff;
      }
      const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream', 'content-length': body.length, 'accept-ranges': 'bytes' };
      if (range) headers['content-range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
      res.writeHead(range ? 206 : 200, headers);
      const cut = cuts.get(path);
      if (cut !== undefined) {
        cuts.delete(path);
        // The bytes, a stall long enough for the client to take them, then the connection drops.
        res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 200));
        return;
      }
      return res.end(body);
    }
    json(404, { error: `no route ${url.pathname}` });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    ranges,
    cutNextDownload: (path, bytes) => cuts.set(path, bytes),
    corruptNextDownload: (path) => corrupt.add(path),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
