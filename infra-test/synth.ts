// Synthesizes the app the way `npx cdk synth` does (cdk.json's feature flags, cdk-nag's
// AwsSolutions pack as a validation plugin) into a temporary directory. Synthesis bundles
// both Lambdas with esbuild and stages the worker's Docker context, so each test file does
// it once, in beforeAll.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Template } from 'aws-cdk-lib/assertions';
import type { App } from 'aws-cdk-lib';
import { buildApp, cdkJsonContext } from '../cdk/lib/build-app.ts';
import type { StackConfig, StackConfigInput } from '../cdk/lib/config.ts';
import type { MambaServeStack } from '../cdk/lib/mamba-serve-stack.ts';

export interface Synthesized {
  readonly app: App;
  readonly stack: MambaServeStack;
  readonly config: StackConfig;
  readonly template: Template;
  /** The cloud assembly directory (bundled Lambda code, the staged Docker context). */
  readonly outdir: string;
  /** The raw template JSON, as CloudFormation receives it. */
  readonly json: { Resources: Record<string, { Type: string; Properties?: Record<string, unknown>; DeletionPolicy?: string }> };
  cleanup(): void;
}

export function synthesize(context: Partial<StackConfigInput> = {}): Synthesized {
  const outdir = mkdtempSync(path.join(tmpdir(), 'mamba-serve-cdk-'));
  const { app, stack, config } = buildApp({
    outdir,
    context: { ...cdkJsonContext(), ...context },
  });
  // app.synth() runs the validation plugins (cdk-nag) and throws on any unacknowledged finding.
  const assembly = app.synth();
  const json = assembly.getStackArtifact(stack.artifactId).template as Synthesized['json'];
  return {
    app,
    stack,
    config,
    template: Template.fromJSON(json),
    outdir,
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
