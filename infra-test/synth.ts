// Synthesizes the app the way `npx cdk synth` does (cdk.json's feature flags, cdk-nag's
// AwsSolutions pack as a validation plugin) into a temporary directory. Synthesis bundles
// both Lambdas with esbuild and stages the worker's Docker context, so each test file does
// it once, in beforeAll.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Template } from 'aws-cdk-lib/assertions';
import type { App } from 'aws-cdk-lib';
import { buildApp, cdkJsonContext, REPO_ROOT } from '../cdk/lib/build-app.ts';
import type { StackConfig, StackConfigInput } from '../cdk/lib/config.ts';
import type { MambaServeStack } from '../cdk/lib/mamba-serve-stack.ts';

/** The real edge entry; until its author lands it, a stand-in so the stack can be bundled. */
export const REAL_EDGE_ENTRY = path.join(REPO_ROOT, 'edge', 'lambda.ts');
export const FIXTURE_EDGE_ENTRY = path.join(REPO_ROOT, 'infra-test', 'fixtures', 'edge-lambda.ts');
export const EDGE_ENTRY_USED = existsSync(REAL_EDGE_ENTRY) ? REAL_EDGE_ENTRY : FIXTURE_EDGE_ENTRY;

export interface Synthesized {
  readonly app: App;
  readonly stack: MambaServeStack;
  readonly config: StackConfig;
  readonly template: Template;
  /** The raw template JSON, as CloudFormation receives it. */
  readonly json: { Resources: Record<string, { Type: string; Properties?: Record<string, unknown>; DeletionPolicy?: string }> };
  cleanup(): void;
}

export function synthesize(context: Partial<StackConfigInput> = {}): Synthesized {
  const outdir = mkdtempSync(path.join(tmpdir(), 'mamba-serve-cdk-'));
  const { app, stack, config } = buildApp({
    outdir,
    context: { ...cdkJsonContext(), ...context },
    ...(EDGE_ENTRY_USED === REAL_EDGE_ENTRY ? {} : { edgeEntry: FIXTURE_EDGE_ENTRY }),
  });
  // app.synth() runs the validation plugins (cdk-nag) and throws on any unacknowledged finding.
  const assembly = app.synth();
  const json = assembly.getStackArtifact(stack.artifactId).template as Synthesized['json'];
  return {
    app,
    stack,
    config,
    template: Template.fromJSON(json),
    json,
    cleanup: () => rmSync(outdir, { recursive: true, force: true }),
  };
}

/** Resources of one type, as [logicalId, properties]. */
export function resourcesOfType(json: Synthesized['json'], type: string): [string, Record<string, unknown>][] {
  return Object.entries(json.Resources)
    .filter(([, r]) => r.Type === type)
    .map(([id, r]) => [id, r.Properties ?? {}]);
}

/** The logical id of the single resource of `type` whose id starts with `prefix`. */
export function logicalIdOf(json: Synthesized['json'], type: string, prefix: string): string {
  const ids = resourcesOfType(json, type)
    .map(([id]) => id)
    .filter((id) => id.startsWith(prefix));
  if (ids.length !== 1) throw new Error(`expected one ${type} with id ${prefix}*, found ${JSON.stringify(ids)}`);
  return ids[0]!;
}
