// `cdk` CLI entry (cdk.json: "app": "npx tsx cdk/bin/app.ts"). Context comes from cdk.json and
// `-c key=value`; see cdk/lib/config.ts for the keys and docs/deploy.md for their meaning.
import { StackConfigError } from '../lib/config.ts';
import { buildApp } from '../lib/build-app.ts';

try {
  buildApp().app.synth();
} catch (error) {
  if (error instanceof StackConfigError) {
    console.error(error.message);
    process.exit(1);
  }
  throw error;
}
