// `npm run build:edge`: bundle the two Lambda entries the way `cdk synth` does
// (cdk/lib/node-lambda.ts BUNDLING), into dist/lambda/, with a metafile per bundle, so the
// deployed code can be read, sized and run locally without synthesizing the stack.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { build, type BuildOptions } from 'esbuild';
import { REPO_ROOT } from '../lib/build-app.ts';
import { BUNDLING } from '../lib/node-lambda.ts';

const entries: Record<string, string> = {
  edge: path.join(REPO_ROOT, 'edge', 'lambda.ts'),
  'queue-metrics': path.join(REPO_ROOT, 'edge', 'queue-metrics-lambda.ts'),
};

// nodejs24.x, as in node-lambda.ts; esbuild needs the target spelled out.
const common: BuildOptions = {
  bundle: true,
  platform: 'node',
  target: 'node24',
  format: 'esm',
  mainFields: BUNDLING.mainFields!,
  banner: { js: BUNDLING.banner! },
  minify: BUNDLING.minify!,
  sourcemap: BUNDLING.sourceMap!,
  external: BUNDLING.externalModules!,
  tsconfig: path.join(REPO_ROOT, 'tsconfig.json'),
  metafile: true,
  logLevel: 'info',
};

const only = process.argv.slice(2);
for (const [name, entry] of Object.entries(entries)) {
  if (only.length > 0 && !only.includes(name)) continue;
  const outdir = path.join(REPO_ROOT, 'dist', 'lambda', name);
  mkdirSync(outdir, { recursive: true });
  const result = await build({ ...common, entryPoints: [entry], outfile: path.join(outdir, 'index.mjs') });
  writeFileSync(path.join(outdir, 'meta.json'), JSON.stringify(result.metafile));
}
