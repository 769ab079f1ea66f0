// cdk-nag 3 runs as a policy-validation plugin during synth. The stack tests rely on "synth did
// not throw" meaning "AwsSolutions passed", so this proves the plugin really fails a synth
// on a finding and that an acknowledgment (with its reason) is what lets it through.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { afterAll, describe, expect, it } from 'vitest';

const outdirs: string[] = [];
afterAll(() => outdirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function appWithPlainBucket(acknowledge: boolean): App {
  const outdir = mkdtempSync(path.join(tmpdir(), 'mamba-serve-nag-'));
  outdirs.push(outdir);
  const app = new App({ outdir });
  const stack = new Stack(app, 'NagProbe');
  // No TLS-only policy and no access logs: AwsSolutions-S10 and -S1.
  const bucket = new s3.Bucket(stack, 'Plain', { blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL });
  if (acknowledge) {
    Validations.of(bucket).acknowledge(
      { id: 'AwsSolutions-S1', reason: 'probe bucket of a test' },
      { id: 'AwsSolutions-S10', reason: 'probe bucket of a test' },
    );
  }
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return app;
}

describe('cdk-nag AwsSolutions plugin', () => {
  it('fails synthesis on an unacknowledged finding', () => {
    const synth = () => appWithPlainBucket(false).synth();
    expect(synth).toThrow(/AwsSolutions-S10/);
    expect(synth).toThrow(/AwsSolutions-S1'/);
  });

  it('lets an acknowledged finding through', () => {
    expect(() => appWithPlainBucket(true).synth()).not.toThrow();
  });
});
