// Child process of packed-weights.ts: writes a graph build's packed-weights model.
//
//   node pack-weights.mjs <build model.onnx> <output dir>
//
// A session over the build packs every constant matmul weight (what any load does) and, with
// ORT's save options, writes the optimized model and its external data, packed weights
// included, into <output dir> as model.onnx + weights.bin. The repeated subgraph initializers
// ORT's serializer writes are dropped (packed-model-fix.mjs), and the result is loaded once
// more, so a file ORT cannot read never reaches the cache. A process of its own: the packing
// holds the build's weights and their packed copy at once, and that peak ends with it.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { dropRepeatedSubgraphInitializers } from './packed-model-fix.mjs';

const [source, outDir] = process.argv.slice(2);
if (!source || !outDir) {
  process.stderr.write('usage: pack-weights.mjs <model.onnx> <output dir>\n');
  process.exit(2);
}
const base = { executionProviders: ['cpu'], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', logSeverityLevel: 3 };
const target = join(outDir, 'model.onnx');

const saving = await ort.InferenceSession.create(source, {
  ...base,
  optimizedModelFilePath: target,
  extra: {
    session: {
      optimized_model_external_initializers_file_name: 'weights.bin',
      // Every tensor bigger than a few floats goes to the data file, where ORT maps it.
      optimized_model_external_initializers_min_size_in_bytes: '1024',
      save_external_prepacked_constant_initializers: '1',
    },
  },
});
await saving.release();

const fixed = dropRepeatedSubgraphInitializers(await readFile(target));
if (fixed.dropped) await writeFile(target, fixed.bytes);

const check = await ort.InferenceSession.create(target, base);
await check.release();
process.stdout.write(JSON.stringify({ dropped: fixed.dropped }) + '\n');
