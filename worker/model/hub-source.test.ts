// Models by Hub id, against a local server that answers like the Hugging Face Hub: the files
// land in the standard Hub cache layout (reused offline and by Python's huggingface_hub), a
// broken download resumes with a Range request, a corrupt one is refused, gated models need
// HF_TOKEN, and an unreachable Hub falls back to the cache.
import { mkdtemp, mkdir, readFile, readlink, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../../stack/free-port.ts';
import { startFakeHub, type FakeHub } from '../../test-support/fake-hub.ts';
import { ReferenceEngine } from '../engine/reference/reference-engine.ts';
import { openCheckpoint } from './checkpoint.ts';
import { ModelError } from './errors.ts';
import { defaultHubCache, parseHubId, resolveHubModel } from './hub-source.ts';
import { resolveModelDir } from './model-source.ts';
import { main } from '../cli.ts';
import { Writable } from 'node:stream';
import { writeRandomCheckpoint } from './testing/random-checkpoint.ts';

const MAIN = 'a'.repeat(40);
const V1 = 'b'.repeat(40);
let root: string;
let source: string;
let hub: FakeHub;
let cache: string;
let files: Record<string, Uint8Array>;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ms-hub-'));
  source = join(root, 'source');
  await writeRandomCheckpoint(source, { hiddenSize: 16, numLayers: 2, stateSize: 4, vocabSize: 264, seed: 9 });
  await writeFile(join(source, 'tokenizer_config.json'), JSON.stringify({ byte_level: true }));
  files = {};
  for (const name of await readdir(source)) files[name] = new Uint8Array(await readFile(join(source, name)));
  const other = { ...files, 'config.json': new TextEncoder().encode(JSON.stringify({ ...JSON.parse(new TextDecoder().decode(files['config.json'])), layer_norm_epsilon: 1e-6 })) };
  hub = await startFakeHub({
    'state-spaces/tiny-hf': { refs: { main: MAIN, v1: V1 }, commits: { [MAIN]: { ...files, 'README.md': new TextEncoder().encode('# tiny'), 'flax_model.msgpack': new Uint8Array(10) }, [V1]: other } },
    'gated/tiny-hf': { refs: { main: MAIN }, commits: { [MAIN]: files }, token: 'hf_secret_token' },
  });
});
afterAll(async () => {
  await hub?.close();
  await rm(root, { recursive: true, force: true });
});
beforeEach(async () => {
  cache = await mkdtemp(join(root, 'cache-'));
  hub.requests.length = 0;
  hub.ranges.length = 0;
});

const options = (extra: Record<string, unknown> = {}) => ({ endpoint: hub.url, cacheDir: cache, ...extra });
const downloads = () => hub.requests.filter((r) => r.includes('/resolve/'));

async function failure(p: Promise<unknown>): Promise<ModelError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ModelError) return e;
    throw e;
  }
  throw new Error('resolved without error');
}

describe('parseHubId', () => {
  it.each([
    ['state-spaces/mamba-130m-hf', { repo: 'state-spaces/mamba-130m-hf', revision: 'main' }],
    ['state-spaces/mamba-2.8b-hf@refs/pr/3', { repo: 'state-spaces/mamba-2.8b-hf', revision: 'refs/pr/3' }],
    [`org/name@${MAIN}`, { repo: 'org/name', revision: MAIN }],
  ])('%s', (id, want) => expect(parseHubId(id)).toEqual(want));

  it.each(['mamba-130m', 's3://bucket/model', './models/demo', '/abs/path', 'a/b/c', 'org/..', 'org/name.git', '../x'])('%s is not a Hub id', (id) => {
    expect(parseHubId(id)).toBeUndefined();
  });

  it('finds the cache as huggingface_hub does', () => {
    expect(defaultHubCache({ HF_HUB_CACHE: '/x/hub' })).toBe('/x/hub');
    expect(defaultHubCache({ HF_HOME: '/h' })).toBe(join('/h', 'hub'));
    expect(defaultHubCache({ XDG_CACHE_HOME: '/c' })).toBe(join('/c', 'huggingface', 'hub'));
  });
});

describe('resolveHubModel', () => {
  it('fetches what a model directory needs into the Hub cache layout, and the model is the same', async () => {
    const dir = await resolveHubModel({ repo: 'state-spaces/tiny-hf', revision: 'main' }, options());
    const storage = join(cache, 'models--state-spaces--tiny-hf');
    expect(dir).toBe(join(storage, 'snapshots', MAIN));
    expect((await readFile(join(storage, 'refs', 'main'), 'utf8')).trim()).toBe(MAIN);
    expect((await readdir(dir)).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer_config.json']); // not README, not flax
    // Relative symlinks into blobs/, named by sha256 for LFS files, as huggingface_hub names them.
    const link = await readlink(join(dir, 'model.safetensors'));
    expect(link).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/);
    const a = await ReferenceEngine.load(await openCheckpoint(source));
    const b = await ReferenceEngine.load(await openCheckpoint(dir));
    const tokens = Int32Array.of(1, 2, 3, 4);
    expect(Array.from((await b.prefill(await b.newState(), tokens)).data)).toEqual(Array.from((await a.prefill(await a.newState(), tokens)).data));
    expect(await (await openCheckpoint(dir)).fingerprint()).toBe(await (await openCheckpoint(source)).fingerprint());

    // Again: nothing is downloaded twice.
    hub.requests.length = 0;
    expect(await resolveHubModel({ repo: 'state-spaces/tiny-hf', revision: 'main' }, options())).toBe(dir);
    expect(downloads()).toEqual([]);
  });

  it('a revision resolves to its own commit and ref', async () => {
    const dir = await resolveHubModel(parseHubId('state-spaces/tiny-hf@v1')!, options());
    expect(dir.endsWith(V1)).toBe(true);
    expect((await readFile(join(cache, 'models--state-spaces--tiny-hf', 'refs', 'v1'), 'utf8')).trim()).toBe(V1);
    expect(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')).layer_norm_epsilon).toBe(1e-6);
    // The weights are the same blob for both commits: stored once.
    await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options());
    expect((await readdir(join(cache, 'models--state-spaces--tiny-hf', 'blobs'))).length).toBe(4); // 2 configs, weights, tokenizer_config
  });

  it('HF_HUB_OFFLINE uses the cache and nothing else', async () => {
    const dir = await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options());
    hub.requests.length = 0;
    expect(await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options({ offline: true }))).toBe(dir);
    expect(hub.requests).toEqual([]);
    const err = await failure(resolveHubModel(parseHubId('state-spaces/other')!, options({ offline: true })));
    expect(err.code).toBe('model_not_found');
    expect(err.message).toMatch(/not in the Hub cache .* HF_HUB_OFFLINE is set/);
  });

  it('reuses a cache that huggingface_hub filled (refs, blobs, relative symlinks)', async () => {
    const storage = join(cache, 'models--py--filled');
    await mkdir(join(storage, 'blobs'), { recursive: true });
    await mkdir(join(storage, 'refs'), { recursive: true });
    await mkdir(join(storage, 'snapshots', V1), { recursive: true });
    await writeFile(join(storage, 'refs', 'main'), V1);
    for (const [name, data] of Object.entries(files)) {
      await writeFile(join(storage, 'blobs', `blob-${name}`), data);
      await symlink(join('..', '..', 'blobs', `blob-${name}`), join(storage, 'snapshots', V1, name));
    }
    const dir = await resolveHubModel(parseHubId('py/filled')!, options({ offline: true }));
    expect((await openCheckpoint(dir)).config.hiddenSize).toBe(16);
  });

  it('resumes a broken download with a Range request and verifies the whole file', async () => {
    hub.cutNextDownload('model.safetensors', 1000);
    const err = await failure(resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options()));
    expect(err.code).toBe('model_download_failed');
    // The cut shows as a broken stream or as a short one, depending on when the socket closes.
    expect(err.message).toMatch(/model\.safetensors: (the download broke off at 1000 of|got 1000 bytes, the Hub lists) \d+.*run again to resume/);
    const blobs = join(cache, 'models--state-spaces--tiny-hf', 'blobs');
    const partial = (await readdir(blobs)).find((f) => f.endsWith('.incomplete'))!;
    expect((await stat(join(blobs, partial))).size).toBe(1000);

    const dir = await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options());
    expect(hub.ranges).toContain('bytes=1000-');
    expect(new Uint8Array(await readFile(join(dir, 'model.safetensors')))).toEqual(files['model.safetensors']);
    expect((await readdir(blobs)).some((f) => f.endsWith('.incomplete'))).toBe(false);
  });

  it('refuses a corrupt download, keeps nothing of it, and succeeds on the next try', async () => {
    hub.corruptNextDownload('model.safetensors');
    const err = await failure(resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options()));
    expect(err.code).toBe('model_download_failed');
    expect(err.message).toMatch(/sha256 .* does not match the Hub's/);
    const blobs = join(cache, 'models--state-spaces--tiny-hf', 'blobs');
    expect((await readdir(blobs)).filter((f) => f.includes('incomplete'))).toEqual([]);
    const dir = await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options());
    expect(new Uint8Array(await readFile(join(dir, 'model.safetensors')))).toEqual(files['model.safetensors']);
  });

  it('a gated model needs HF_TOKEN, sent as a bearer token', async () => {
    const err = await failure(resolveHubModel(parseHubId('gated/tiny-hf')!, options()));
    expect(err.code).toBe('model_not_found');
    expect(err.message).toMatch(/refused access \(401\).*HF_TOKEN/);
    const dir = await resolveHubModel(parseHubId('gated/tiny-hf')!, options({ token: 'hf_secret_token' }));
    expect((await openCheckpoint(dir)).config.numLayers).toBe(2);
  });

  it('an unknown model or revision is model_not_found', async () => {
    expect((await failure(resolveHubModel(parseHubId('nobody/nothing')!, options()))).message).toMatch(/no such model or revision/);
    expect((await failure(resolveHubModel(parseHubId('state-spaces/tiny-hf@v9')!, options()))).code).toBe('model_not_found');
  });

  it('an unreachable Hub falls back to the cached snapshot, and says how to go offline when there is none', async () => {
    const dir = await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options());
    const nowhere = { endpoint: `http://127.0.0.1:${await freePort()}`, cacheDir: cache }; // nothing listens there
    expect(await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, nowhere)).toBe(dir);
    const err = await failure(resolveHubModel(parseHubId('state-spaces/uncached')!, nowhere));
    expect(err.code).toBe('model_download_failed');
    expect(err.message).toMatch(/cannot reach http:\/\/127\.0\.0\.1:\d+ .* HF_HUB_OFFLINE=1/);
  });

  it('reports progress per file', async () => {
    const seen: [string, number, number][] = [];
    await resolveHubModel(parseHubId('state-spaces/tiny-hf')!, options({ onProgress: (f: string, d: number, t: number) => seen.push([f, d, t]) }));
    const last = seen.filter(([f]) => f === 'model.safetensors').at(-1)!;
    expect(last[1]).toBe(last[2]);
    expect(last[2]).toBe(files['model.safetensors']!.length);
  });
});

describe('MODEL_DIR and --model take a Hub id', () => {
  it('a Hub id is fetched, a local directory of any spelling stays local', async () => {
    const hubOptions = { endpoint: hub.url, cacheDir: cache, onProgress: () => {} };
    const dir = await resolveModelDir('state-spaces/tiny-hf', join(root, 'mc'), {}, hubOptions);
    expect(dir).toBe(join(cache, 'models--state-spaces--tiny-hf', 'snapshots', MAIN));
    // "models/demo" is spelt like a Hub id, but it is a directory here: never asked of the Hub.
    hub.requests.length = 0;
    expect(await resolveModelDir('models/demo', join(root, 'mc'), {}, hubOptions)).toBe('models/demo');
    expect(hub.requests).toEqual([]);
  });

  it('the CLI: info --model org/name@revision, with HF_ENDPOINT and HF_HUB_CACHE', async () => {
    let stdout = '';
    let stderr = '';
    const sink = (append: (s: string) => void) => new Writable({ write: (chunk, _enc, cb) => (append(String(chunk)), cb()) });
    const code = await main(['info', '--model', 'state-spaces/tiny-hf@v1'], {
      stdout: sink((x) => (stdout += x)),
      stderr: sink((x) => (stderr += x)),
      env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, MODEL_CACHE_DIR: join(root, 'mc') },
    });
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const info = JSON.parse(stdout) as { model_dir: string; config: { layerNormEpsilon: number } };
    expect(info.model_dir).toBe(join(cache, 'models--state-spaces--tiny-hf', 'snapshots', V1));
    expect(info.config.layerNormEpsilon).toBe(1e-6);
    // Offline, from the cache just filled.
    stdout = '';
    hub.requests.length = 0;
    const again = await main(['info', '--model', 'state-spaces/tiny-hf@v1'], {
      stdout: sink((x) => (stdout += x)),
      stderr: sink((x) => (stderr += x)),
      env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1', MODEL_CACHE_DIR: join(root, 'mc') },
    });
    expect(again).toBe(0);
    expect(hub.requests).toEqual([]);
  });
});
