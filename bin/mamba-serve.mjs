#!/usr/bin/env node
// Entry point of `mamba-serve` (package.json "bin"). The sources are TypeScript run by tsx,
// registered here as a module hook so `npx mamba-serve` works after `npm ci` with no build
// step. The CLI is found relative to this file, so any working directory works.
import { register } from 'tsx/esm/api';

register();
const { main } = await import(new URL('../cli/main.ts', import.meta.url).href);
process.exitCode = await main(process.argv.slice(2));
