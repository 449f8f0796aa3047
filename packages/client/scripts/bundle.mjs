// One ESM file with eventsource-parser inside, for pages without a bundler (examples/web loads it with
// <script type="module">); bundlers and Node use dist/index.js and resolve the dependency themselves.
import { build } from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
await build({
  entryPoints: [path.join(root, 'dist/index.js')],
  outfile: path.join(root, 'dist/browser/taskbox-client.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  sourcemap: true,
  logLevel: 'warning',
});
