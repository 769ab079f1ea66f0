// Builds the CDK app: the stack from validated context, and cdk-nag's AwsSolutions pack as a
// policy-validation plugin, so `cdk synth` itself fails on an unacknowledged finding.
// cdk/bin/app.ts (the `cdk` CLI entry) and the infra tests both come through here, so the
// tests check exactly what `cdk deploy` would deploy.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { App, Validations, type AppProps } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { readStackConfig, type StackConfig } from './config.ts';
import { MambaServeStack } from './mamba-serve-stack.ts';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface BuildAppOptions extends AppProps {
  /** Run cdk-nag's AwsSolutions checks during synth (default true). */
  readonly nag?: boolean;
  readonly edgeEntry?: string;
  readonly queueMetricsEntry?: string;
}

export function buildApp(options: BuildAppOptions = {}): { app: App; stack: MambaServeStack; config: StackConfig } {
  const { nag = true, edgeEntry, queueMetricsEntry, ...appProps } = options;
  const app = new App(appProps);
  const config = readStackConfig((key) => app.node.tryGetContext(key));
  const stack = new MambaServeStack(app, config.stackName, {
    config,
    repoRoot: REPO_ROOT,
    ...(edgeEntry ? { edgeEntry } : {}),
    ...(queueMetricsEntry ? { queueMetricsEntry } : {}),
    // Region from context; the account stays unresolved until deploy, which keeps synth free
    // of lookups (availability zones come from Fn::GetAZs at deploy time).
    env: { region: config.region },
    description: 'mamba-serve: memory-persistent Mamba chat endpoint (edge Lambda, BullMQ on ElastiCache, GPU workers on ECS, states in S3)',
  });
  if (nag) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, stack, config };
}

/** The feature flags and settings of cdk.json, for tests that build the app without the CLI. */
export function cdkJsonContext(): Record<string, unknown> {
  const cdkJson = JSON.parse(readFileSync(path.join(REPO_ROOT, 'cdk.json'), 'utf8')) as { context?: Record<string, unknown> };
  return cdkJson.context ?? {};
}
