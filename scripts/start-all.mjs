// `npm start` for a laptop: api, relay and worker as three processes, each line prefixed with its name.
// Stops all three when one exits or on Ctrl-C / SIGTERM, with one SIGTERM each: a graceful drain.
//
// Each service runs in a process group of its own (detached), so the terminal's Ctrl-C, which goes to
// the whole foreground group, reaches only this script. Had the services received it too, the SIGTERM
// sent below would be their second signal, which means "exit now" and abandons in-flight work.
import { spawn } from 'node:child_process';
import readline from 'node:readline';

const services = ['api', 'relay', 'worker'];
const children = services.map((name) => {
  const child = spawn(process.execPath, [`services/${name}/dist/main.js`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  for (const stream of [child.stdout, child.stderr]) {
    readline.createInterface({ input: stream }).on('line', (line) => console.log(`[${name.padEnd(6)}] ${line}`));
  }
  child.on('exit', (code, signal) => {
    console.log(`[${name.padEnd(6)}] exited (${signal ?? code})`);
    stopAll();
  });
  return child;
});

let stopping = false;
function stopAll() {
  if (stopping) return;
  stopping = true;
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
}
process.on('SIGINT', stopAll);
process.on('SIGTERM', stopAll);
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL')));
